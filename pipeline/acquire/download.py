"""Download a manifest shard with yt-dlp through rotating proxies, resumably.

For each video: pick the next healthy proxy, fetch only the first ``seconds`` with yt-dlp's
download ranges, and on failure decide by the error's class:
  - proxy/transport failure, HTTP 403, HTTP 429, bot check -> rest that proxy, back off, try the next;
  - 404 / private / removed / unsupported -> permanent, no retry;
  - anything else -> back off and retry, up to ``max_attempts``.

Finished videos land in a scratch cache outside the DVC outputs (``<scratch>/<shard>/done``);
a killed run resumes from it without fetching them again, unless the manifest entry changed
(url, sha256) or the clip length did. The shard's output folder (videos +
``status.parquet``) is assembled under a temp name and renamed at the end, so no partial file
ever appears there. Proxy credentials never reach logs, status rows or exceptions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import yt_dlp
from tqdm import tqdm
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadError, download_range_func, parse_bytes

from pipeline import media
from pipeline.acquire.manifest import ManifestEntry, read_manifest
from pipeline.acquire.proxies import ProxyPool, read_proxy_list
from pipeline.config import DownloadParams
from pipeline.files import atomic_path, file_sha256
from pipeline.status import OK, failed_row, ok_row, STATUS_FILE, status_schema, summary, write_status

log = logging.getLogger("v2m.download")

STATUS_SCHEMA = status_schema(
    pa.field("attempts", pa.int16()),
    pa.field("proxy", pa.string()),           # the last proxy used, credentials redacted; null = direct
    pa.field("bytes", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("duration", pa.float64()),
    pa.field("fetched_at", pa.string()),      # ISO 8601, UTC
    pa.field("ytdlp_version", pa.string()),
    pa.field("file", pa.string()),            # the video's file name in the output folder
)

# Error classes. Rotating ones are the proxy's fault (or the site's reaction to it).
ROTATE = {"proxy", "forbidden", "rate_limited", "bot_check"}
PERMANENT = {"not_found", "private", "removed", "unsupported", "checksum"}
BOT_CHECK_MARKERS = ("confirm you're not a bot", "confirm you are not a bot", "captcha", "unusual traffic")
PRIVATE_MARKERS = ("private video",)
REMOVED_MARKERS = ("has been removed", "account associated with this video has been terminated",
                   "video unavailable", "no longer available", "copyright")


@dataclass
class Attempt:
    """Outcome of one try at one video."""

    ok: bool
    error_class: str | None = None
    message: str | None = None


def classify(error: BaseException) -> tuple[str, str]:
    """``(error class, one-line message)`` of a yt-dlp failure."""
    cause = error.exc_info[1] if isinstance(error, DownloadError) and error.exc_info else None
    text = str(error)
    lowered = text.lower()
    if isinstance(cause, HTTPError):
        status = cause.status
        if status in (404, 410):
            return "not_found", f"HTTP {status}"
        if status == 403:
            return "forbidden", "HTTP 403 Forbidden"
        if status == 429:
            return "rate_limited", "HTTP 429 Too Many Requests"
        return "download_error", f"HTTP {status}"
    if isinstance(cause, TransportError) or "unable to connect to proxy" in lowered or "timed out" in lowered:
        return "proxy", _one_line(text)
    if any(m in lowered for m in BOT_CHECK_MARKERS):
        return "bot_check", _one_line(text)
    if any(m in lowered for m in PRIVATE_MARKERS):
        return "private", _one_line(text)
    if any(m in lowered for m in REMOVED_MARKERS):
        return "removed", _one_line(text)
    if "unsupported url" in lowered:
        return "unsupported", _one_line(text)
    if "http error 404" in lowered or "no such file" in lowered:
        return "not_found", _one_line(text)
    return "download_error", _one_line(text)


def _one_line(text: str) -> str:
    text = text.replace("ERROR: ", "").strip()
    # yt-dlp appends the nested cause and a bug-report plea; the first clause is the story.
    text = re.split(r" \(caused by |; please report this issue", text, maxsplit=1)[0]
    return text.splitlines()[0][:500] if text else "unknown error"


def resolve_url(url: str) -> str:
    """``file:`` URLs with relative paths become absolute ``file://`` URLs (yt-dlp needs those)."""
    if url.startswith("file:") and not url.startswith("file://"):
        return Path(unquote(url[5:])).resolve().as_uri()
    return url


class _QuietLogger:
    """yt-dlp's log lines go to our logger, scrubbed of proxy credentials."""

    def __init__(self, pool: ProxyPool):
        self.pool = pool

    def debug(self, msg: str) -> None:
        log.debug(self.pool.scrub(msg))

    def info(self, msg: str) -> None:
        log.debug(self.pool.scrub(msg))

    def warning(self, msg: str) -> None:
        log.info(self.pool.scrub(msg))

    def error(self, msg: str) -> None:
        log.debug(self.pool.scrub(msg))


class ShardDownloader:
    """Downloads one shard's entries into ``out_dir`` through ``pool``; see the module docstring."""

    def __init__(self, params: DownloadParams, seconds: float, pool: ProxyPool, scratch: Path,
                 sleep=time.sleep):
        self.params = params
        self.window = seconds + params.margin_seconds
        self.pool = pool
        self.done_dir = scratch / "done"
        self.work_dir = scratch / "work"
        self.sleep = sleep
        self.rate_limit = parse_bytes(params.rate_limit) if params.rate_limit else None
        self._started = threading.Event()

    def ytdlp_options(self, url: str, target: Path, proxy_url: str | None) -> dict:
        options = {
            "format": self.params.format,
            "outtmpl": str(target / "%(id)s.%(ext)s"),
            "merge_output_format": "mp4",
            "noplaylist": True,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _QuietLogger(self.pool),
            "socket_timeout": self.params.socket_timeout,
            "http_headers": {"User-Agent": self.params.user_agent},
            "sleep_interval_requests": self.params.sleep_requests or None,
            "ratelimit": self.rate_limit,
            # Our loop owns retries and proxy rotation; yt-dlp's own would hammer a bad proxy.
            "retries": 0,
            "fragment_retries": 1,
            "extractor_retries": 0,
            "proxy": proxy_url or "",
            "ffmpeg_location": media.ffmpeg_exe(),
            "enable_file_urls": True,
            "cachedir": False,
            "overwrites": True,
        }
        if url.startswith(("http://", "https://")):
            # file: URLs are local copies: ffmpeg's range download does not take them.
            options["download_ranges"] = download_range_func(None, [(0, self.window)])
        return options

    def request(self, entry: ManifestEntry) -> dict:
        """What a cached download was fetched for: the entry's url and the time window."""
        return {"url": entry.url, "window": self.window}

    def finished(self, entry: ManifestEntry) -> dict | None:
        """The status row of ``entry`` fetched by an earlier (possibly killed) run, if complete and
        still what the manifest asks for: the same url and window, and the manifest's sha256 when it
        gives one (a refreshed shard may point an id at new content)."""
        record = self.done_dir / f"{entry.video_id}.json"
        if not record.is_file():
            return None
        saved = json.loads(record.read_text())
        row = saved.get("row")
        if row is None or saved.get("request") != self.request(entry):
            return None
        if entry.sha256 and row["sha256"] != entry.sha256:
            return None
        return row if (self.done_dir / row["file"]).is_file() else None

    def fetch(self, entry: ManifestEntry) -> dict:
        """Try one video until it succeeds, fails permanently or runs out of attempts; a status row."""
        previous = self.finished(entry)
        if previous is not None:
            return previous
        if self._started.is_set() and self.params.sleep_max > 0:
            self.sleep(random.uniform(self.params.sleep_min, self.params.sleep_max))
        self._started.set()
        url = resolve_url(entry.url)
        last_class, last_message, proxy_label = "download_error", "not tried", None
        for attempt in range(1, self.params.max_attempts + 1):
            proxy, wait = self.pool.acquire()
            if wait > 0:
                self.sleep(wait)
            proxy_label = proxy.label if proxy else None
            work = self.work_dir / entry.video_id
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                with yt_dlp.YoutubeDL(self.ytdlp_options(url, work, proxy.url if proxy else None)) as ydl:
                    ydl.extract_info(url, download=True)
                row = self._commit(entry, work, attempt, proxy_label)
                self.pool.succeeded(proxy)
                return row
            except DownloadError as error:
                last_class, last_message = classify(error)
            except (OSError, media.MediaError) as error:
                last_class, last_message = "download_error", _one_line(str(error))
            except _ChecksumMismatch as error:
                last_class, last_message = "checksum", str(error)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            last_message = self.pool.scrub(last_message)
            log.info("%s attempt %d via %s: %s (%s)", entry.video_id, attempt, proxy_label or "direct",
                     last_class, last_message)
            if last_class in PERMANENT:
                break
            if last_class in ROTATE:
                self.pool.failed(proxy)
            if attempt < self.params.max_attempts:
                backoff = min(self.params.backoff_max, self.params.backoff_base * 2 ** (attempt - 1))
                self.sleep(backoff * random.uniform(0.5, 1.0))
        return failed_row(entry.video_id, last_class,
                          last_message if last_class in PERMANENT else f"{last_message} (gave up after {attempt} attempts)",
                          attempts=attempt, proxy=proxy_label, bytes=None, sha256=None, duration=None,
                          fetched_at=_now(), ytdlp_version=yt_dlp.version.__version__, file=None)

    def _commit(self, entry: ManifestEntry, work: Path, attempt: int, proxy_label: str | None) -> dict:
        """Move a finished download into the scratch cache; the JSON record written last marks it done."""
        files = [p for p in work.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
        if not files:
            raise media.MediaError(f"{entry.video_id}: yt-dlp reported success but wrote no file")
        produced = max(files, key=lambda p: p.stat().st_size)
        digest = file_sha256(produced)
        if entry.sha256 and digest != entry.sha256:
            raise _ChecksumMismatch(f"content sha256 {digest[:12]}... differs from the manifest's {entry.sha256[:12]}...")
        duration = media.probe(produced).duration
        self.done_dir.mkdir(parents=True, exist_ok=True)
        name = f"{entry.video_id}{produced.suffix}"
        os.replace(produced, self.done_dir / name)
        row = ok_row(entry.video_id, attempts=attempt, proxy=proxy_label, bytes=(self.done_dir / name).stat().st_size,
                     sha256=digest, duration=duration, fetched_at=_now(), ytdlp_version=yt_dlp.version.__version__,
                     file=name)
        with atomic_path(self.done_dir / f"{entry.video_id}.json") as temp:
            temp.write_text(json.dumps({"row": row, "request": self.request(entry)}))
        return row


class _ChecksumMismatch(Exception):
    pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def download_shard(manifest: Path | str, out_dir: Path | str, params: DownloadParams, seconds: float,
                   proxies: Path | str | None = None, progress: bool = True) -> list[dict]:
    """Download every entry of ``manifest`` into ``out_dir`` (videos + status.parquet).

    Args:
        seconds: the clip length; yt-dlp fetches ``seconds + params.margin_seconds``.
        proxies: proxy list file; None uses ``params.proxies`` (empty there = direct).

    Returns:
        the status rows, one per manifest entry.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    entries = read_manifest(manifest)
    proxy_file = proxies if proxies is not None else (params.proxies or None)
    pool = ProxyPool(read_proxy_list(proxy_file) if proxy_file else None, params.proxy_cooldown)
    scratch = Path(params.scratch) / manifest.stem
    downloader = ShardDownloader(params, seconds, pool, scratch)
    rows: list[dict] = []
    route = "direct" if pool.direct else f"{len(pool.proxies)} proxies"
    with ThreadPoolExecutor(max_workers=params.concurrency) as workers, \
            tqdm(total=len(entries), desc=f"download {manifest.stem} ({route})", unit="video",
                 disable=not progress) as bar:
        futures = {workers.submit(downloader.fetch, entry): entry for entry in entries}
        for future in as_completed(futures):
            rows.append(future.result())
            bar.update(1)
            bar.set_postfix_str(summary(rows))
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        for row in rows:
            if row["status"] == OK:
                _link_or_copy(downloader.done_dir / row["file"], temp / row["file"])
        write_status(temp / STATUS_FILE, rows, STATUS_SCHEMA)
    log.info("download %s: %s", manifest.stem, summary(rows))
    return rows


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space; across file systems it cannot be made, so copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
