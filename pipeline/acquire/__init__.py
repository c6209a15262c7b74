"""Acquisition: manifests of video ids, yt-dlp downloads through rotating proxies, exact clips, vocal removal."""
