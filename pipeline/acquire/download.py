"""Download a manifest shard with yt-dlp through rotating proxies, resumably.

For each video: refuse a local path outside ``download.file_roots`` before anything is fetched,
pick the next healthy proxy, fetch only the first ``seconds`` with yt-dlp's download ranges, and on
failure decide by the error's class:
  - proxy/transport failure, HTTP 403, HTTP 429, bot check -> rest that proxy, back off, try the next;
  - 404 / private / removed / unsupported / not media / checksum mismatch / forbidden path ->
    permanent: a retry would get the same answer, so one attempt and no backoff;
  - anything else -> back off and retry, up to ``max_attempts``.

Finished videos land in a scratch cache outside the DVC outputs (``<scratch>/<shard>/done``);
a killed run resumes from it without fetching them again, unless the manifest entry changed
(url, sha256) or the clip length did. The shard's output folder (videos +
``status.parquet``) is assembled under a temp name and renamed at the end, so no partial file
ever appears there. Proxy credentials never reach logs, status rows or exceptions.
"""

from __future__ import annotations

import dataclasses
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
from typing import Iterable, Sequence
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import yt_dlp
from tqdm import tqdm
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadError, YoutubeDLError, download_range_func, parse_bytes

from pipeline import media
from pipeline.acquire.manifest import MANIFEST_DIR, ManifestEntry, read_manifest, shard_path
from pipeline.acquire.proxies import LeasedProxyPool, ProxyPool, SharedProxyPool, read_proxy_list
from pipeline.config import ComputeParams, DownloadParams
from pipeline.engine import LOCAL_NODE, Work, in_temp_dir, open_engine
from pipeline.errors import UserError
from pipeline.files import atomic_path, file_sha256
from pipeline.status import NODE_FIELD, OK, STATUS_FILE, failed_row, ok_row, read_status, status_schema, summary, write_status

log = logging.getLogger("v2m.download")

RAW_DIR = Path("data/raw")  # the download stage's output: data/raw/<shard>/ (videos + status.parquet)

STATUS_SCHEMA = status_schema(
    pa.field("attempts", pa.int16()),
    pa.field("proxy", pa.string()),           # the last proxy used, credentials redacted; null = direct
    pa.field("bytes", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("duration", pa.float64()),
    pa.field("fetched_at", pa.string()),      # ISO 8601, UTC
    pa.field("ytdlp_version", pa.string()),
    pa.field("file", pa.string()),            # the video's file name in the output folder
    NODE_FIELD,
)

# Error classes. Rotating ones are the proxy's fault (or the site's reaction to it): another proxy may
# do. Permanent ones are facts about the row (the id is gone, the content is no video, the path is
# outside the roots): every retry would get the same answer. Any other class is retried with backoff.
ROTATE = {"proxy", "forbidden", "rate_limited", "bot_check"}
PERMANENT = {"not_found", "private", "removed", "unsupported", "checksum", "not_media", "forbidden_path"}
NETWORK_SCHEMES = ("http", "https")
BOT_CHECK_MARKERS = ("confirm you're not a bot", "confirm you are not a bot", "captcha", "unusual traffic")
PRIVATE_MARKERS = ("private video",)
REMOVED_MARKERS = ("has been removed", "account associated with this video has been terminated",
                   "video unavailable", "no longer available", "copyright")


def classify(error: BaseException) -> tuple[str, str]:
    """``(error class, one-line message)`` of a yt-dlp failure.

    Mostly a ``DownloadError`` wrapping the cause; a request an extractor makes while reading a page
    can also raise its ``RequestError`` unwrapped.
    """
    cause = (error.exc_info[1] if error.exc_info else None) if isinstance(error, DownloadError) else error
    text = str(error)
    lowered = text.lower()
    if "file:// urls are disabled" in lowered:
        # A web page (or redirect) that leads to a local file: only the manifest's own file: URLs may.
        return "forbidden_path", "the URL leads to a local file (file://); only the manifest's file: URLs " \
                                 "under download.file_roots may"
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
    if "unsupported url" in lowered or "cannot be partially downloaded" in lowered:
        return "unsupported", _one_line(text)
    if "ffmpeg exited with code 183" in lowered:
        # 183 = AVERROR_INVALIDDATA & 0xff: ffmpeg read the bytes and they are no media it knows.
        return "not_media", "not a media file (ffmpeg: invalid data found when processing input)"
    if "http error 404" in lowered or "no such file" in lowered:
        return "not_found", _one_line(text)
    return "download_error", _one_line(text)


def _one_line(text: str) -> str:
    text = text.replace("ERROR: ", "").strip()
    # yt-dlp appends the nested cause and a bug-report plea; the first clause is the story.
    text = re.split(r" \(caused by |; please report this issue", text, maxsplit=1)[0]
    return text.splitlines()[0][:500] if text else "unknown error"


class _Refused(Exception):
    """A row refused before any fetch, with its error class."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


def resolved_roots(roots: Iterable[str]) -> tuple[Path, ...]:
    """``download.file_roots`` as real folders: relative to the working directory, symlinks followed."""
    return tuple(Path(root).resolve() for root in roots)


def source_url(url: str, roots: Sequence[Path]) -> str:
    """The URL yt-dlp is given for a manifest ``url``.

    http(s) URLs go as they are. Anything else names a local file (a ``file:`` URL, a relative one
    resolved against the working directory, or a bare path): it goes as the ``file://`` URL of its
    real path (symlinks followed) and only when that lies under one of ``roots`` (see
    :func:`resolved_roots`), so yt-dlp reads exactly the file that was checked.

    Raises:
        _Refused: ``forbidden_path`` outside the roots (or on another host); ``not_found`` or
            ``not_media`` for a missing or non-regular file inside them; ``unsupported`` for another
            scheme.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return url
    if scheme == "file":
        if parts.netloc.lower() not in ("", "localhost"):
            raise _Refused("forbidden_path", f"{url!r} names host {parts.netloc!r}: file: URLs must be local")
        path = unquote(parts.path)
    elif scheme == "":
        path = url
    else:
        raise _Refused("unsupported", f"{url!r}: the scheme {parts.scheme}: is not http, https or file")
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL byte
        raise _Refused("forbidden_path", f"{url!r} cannot be resolved ({error})") from None
    if not any(target.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none: download.file_roots is empty"
        raise _Refused("forbidden_path", f"{url!r} is {target}, outside download.file_roots ({allowed})")
    if not target.exists():
        raise _Refused("not_found", f"{url!r}: no such file {target}")
    if not target.is_file():
        # A folder, FIFO or device: yt-dlp would fail on it or block reading it.
        raise _Refused("not_media", f"{url!r}: {target} is not a regular file")
    return target.as_uri()


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
                 sleep=time.sleep, started: threading.Event | None = None):
        self.params = params
        self.window = seconds + params.margin_seconds
        self.pool = pool
        self.done_dir = scratch / "done"
        self.work_dir = scratch / "work"
        self.sleep = sleep
        self.rate_limit = parse_bytes(params.rate_limit) if params.rate_limit else None
        self.file_roots = resolved_roots(params.file_roots)
        # Set after the first fetch: the sleep_min..max pause goes between downloads (a Ray worker
        # passes one event for all its tasks, so the pacing holds per worker).
        self._started = started or threading.Event()

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
            # Only a file: row (already confined by source_url) may read a local file; for a web URL,
            # yt-dlp would otherwise follow a page's or a redirect's file:// link anywhere on the disk.
            "enable_file_urls": url.startswith("file:"),
            "cachedir": False,
            "overwrites": True,
        }
        if urlsplit(url).scheme.lower() in NETWORK_SCHEMES:
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
        try:
            # Before the cache too: a file an earlier run took from outside today's roots stays out.
            url = source_url(entry.url, self.file_roots)
        except _Refused as refused:
            log.info("%s refused: %s (%s)", entry.video_id, refused.error_class, refused)
            return self._failed(entry, refused.error_class, str(refused), attempts=0, proxy_label=None)
        previous = self.finished(entry)
        if previous is not None:
            return previous
        if self._started.is_set() and self.params.sleep_max > 0:
            self.sleep(random.uniform(self.params.sleep_min, self.params.sleep_max))
        self._started.set()
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
            except YoutubeDLError as error:
                last_class, last_message = classify(error)
            except (OSError, media.MediaError) as error:
                last_class, last_message = "download_error", _one_line(str(error))
            except _ChecksumMismatch as error:
                last_class, last_message = "checksum", str(error)
            except _NotMedia as error:
                last_class, last_message = "not_media", str(error)
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
        return self._failed(entry, last_class, last_message, attempt, proxy_label)

    @staticmethod
    def _failed(entry: ManifestEntry, error_class: str, message: str, attempts: int,
                proxy_label: str | None) -> dict:
        """The status row of a video that failed: ``attempts`` fetches were tried (0 = refused before any)."""
        if error_class not in PERMANENT:
            message = f"{message} (gave up after {attempts} attempts)"
        return failed_row(entry.video_id, error_class, message, attempts=attempts, proxy=proxy_label, bytes=None,
                          sha256=None, duration=None, fetched_at=_now(), ytdlp_version=yt_dlp.version.__version__,
                          file=None)

    def _commit(self, entry: ManifestEntry, work: Path, attempt: int, proxy_label: str | None) -> dict:
        """Move a finished download into the scratch cache; the JSON record written last marks it done."""
        files = [p for p in work.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
        if not files:
            raise media.MediaError(f"{entry.video_id}: yt-dlp reported success but wrote no file")
        produced = max(files, key=lambda p: p.stat().st_size)
        digest = file_sha256(produced)
        if entry.sha256 and digest != entry.sha256:
            raise _ChecksumMismatch(f"content sha256 {digest[:12]}... differs from the manifest's {entry.sha256[:12]}...")
        try:
            duration = media.probe(produced).duration
        except media.MediaError as error:
            raise _NotMedia(f"not a media file ({str(error).replace(f'{produced}: ', '')})") from None
        self.done_dir.mkdir(parents=True, exist_ok=True)
        name = f"{entry.video_id}{produced.suffix}"
        os.replace(produced, self.done_dir / name)
        row = ok_row(entry.video_id, attempts=attempt, proxy=proxy_label, bytes=(self.done_dir / name).stat().st_size,
                     sha256=digest, duration=duration, fetched_at=_now(), ytdlp_version=yt_dlp.version.__version__,
                     file=name)
        self.record(entry, row)
        return row

    def record(self, entry: ManifestEntry, row: dict) -> None:
        """Mark ``entry`` done with ``row`` (its file already in ``done_dir``): the JSON record, written last."""
        with atomic_path(self.done_dir / f"{entry.video_id}.json") as temp:
            temp.write_text(json.dumps({"row": row, "request": self.request(entry)}))


class _ChecksumMismatch(Exception):
    pass


class _NotMedia(Exception):
    pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def download_shard(manifest: Path | str, out_dir: Path | str, params: DownloadParams, seconds: float,
                   proxies: Path | str | None = None, progress: bool = True,
                   compute: ComputeParams | None = None) -> list[dict]:
    """Download every entry of ``manifest`` into ``out_dir`` (videos + status.parquet).

    Args:
        seconds: the clip length; yt-dlp fetches ``seconds + params.margin_seconds``.
        proxies: proxy list file; None uses ``params.proxies`` (empty there = direct).
        compute: ``engine: ray`` fetches on Ray tasks (:func:`_fetch_on_ray`); None or local, in threads here.

    Returns:
        the status rows, one per manifest entry.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    entries = read_manifest(manifest)
    proxy_file = proxies if proxies is not None else (params.proxies or None)
    urls = read_proxy_list(proxy_file) if proxy_file else None
    pool = ProxyPool(urls, params.proxy_cooldown)
    scratch = Path(params.scratch) / manifest.stem
    downloader = ShardDownloader(params, seconds, pool, scratch)
    route = "direct" if pool.direct else f"{len(pool.proxies)} proxies"
    engine = open_engine(compute)
    if engine is not None:
        rows = _fetch_on_ray(engine, downloader, entries, seconds, proxy_file if urls else None,
                             desc=f"download {manifest.stem} ({route}, ray)", progress=progress)
    else:
        rows = []
        with ThreadPoolExecutor(max_workers=params.concurrency) as workers, \
                tqdm(total=len(entries), desc=f"download {manifest.stem} ({route})", unit="video",
                     disable=not progress) as bar:
            futures = {workers.submit(downloader.fetch, entry): entry for entry in entries}
            for future in as_completed(futures):
                rows.append({"node": LOCAL_NODE, **future.result()})
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


def _fetch_on_ray(engine, downloader: ShardDownloader, entries: list[ManifestEntry], seconds: float,
                  proxy_file: Path | str | None, desc: str, progress: bool) -> list[dict]:
    """Fetch the entries on Ray tasks; the driver keeps the resumable cache (``downloader.done_dir``).

    One named actor, on the driver's node, reads the proxy list and owns the pool, so rotation and
    cooldowns hold across every worker; a task leases a proxy from it and reports the outcome. The
    proxy URLs (with their credentials) are only ever the actor's replies, never a task argument.
    """
    finished = {e.video_id: downloader.finished(e) for e in entries}
    pool = None
    if proxy_file is not None:
        pool = engine.service(SharedProxyPool, str(Path(proxy_file).resolve()), downloader.params.proxy_cooldown,
                              name=f"v2m-proxies-{downloader.done_dir.parent.name}")
    by_id = {e.video_id: e for e in entries}
    # Relative local paths (URLs and download.file_roots) mean the driver's working directory, which a
    # worker does not share: send them absolute; the worker still checks them against the roots.
    params = dataclasses.replace(downloader.params,
                                 file_roots=tuple(str(Path(root).absolute()) for root in downloader.params.file_roots))
    work = [Work(e.video_id, "", lambda e=e: (dataclasses.replace(e, url=_absolute_local(e.url)), params, seconds, pool))
            for e in entries if finished[e.video_id] is None]
    journal = _DoneCache(downloader, by_id)
    try:
        lost = engine.tasks(fetch_on_worker, work, journal, cpus=engine.params.download_cpus, desc=desc,
                            progress=progress)
    finally:
        if pool is not None:
            engine.ray.kill(pool)
    rows = []
    for entry in entries:
        if entry.video_id in lost:
            rows.append(failed_row(entry.video_id, "worker_lost", f"{entry.video_id}: {lost[entry.video_id].cause}",
                                   attempts=None, proxy=None, bytes=None, sha256=None, duration=None, fetched_at=_now(),
                                   ytdlp_version=yt_dlp.version.__version__, file=None, node=None))
        else:
            rows.append({"node": LOCAL_NODE, **(finished[entry.video_id] or journal.rows[entry.video_id])})
    return rows


def _absolute_local(url: str) -> str:
    """A local manifest URL (``file:`` or a bare path) with a relative path as an absolute ``file://`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("file", "") or parts.netloc:
        return url
    path = Path(unquote(parts.path) if parts.scheme else url)
    return url if path.is_absolute() else path.absolute().as_uri()


class _DoneCache:
    """The engine's journal for downloads: the downloader's own resumable cache (file, then JSON record)."""

    def __init__(self, downloader: ShardDownloader, entries: dict[str, ManifestEntry]):
        self.downloader, self.entries, self.rows = downloader, entries, {}

    def get(self, key: str, request: str):
        return None

    def put(self, key: str, request: str, node: str, value: tuple[dict, bytes | None]) -> None:
        row, data = value
        row = {**row, "node": node}
        if row["status"] == OK:
            self.downloader.done_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.downloader.done_dir / row["file"]) as temp:
                temp.write_bytes(data)
            self.downloader.record(self.entries[key], row)
        self.rows[key] = row


_WORKER_STARTED: dict[str, threading.Event] = {}   # per worker process: pacing across its download tasks


def fetch_on_worker(entry: ManifestEntry, params: DownloadParams, seconds: float, pool) -> tuple[dict, bytes | None]:
    """A Ray task: fetch one entry into a scratch folder of this worker; ``(status row, file bytes)``.

    ``pool`` is the handle of the shard's :class:`SharedProxyPool` actor, or None for direct downloads.
    """
    proxies = LeasedProxyPool(pool) if pool is not None else ProxyPool(None, params.proxy_cooldown)
    started = _WORKER_STARTED.setdefault(repr(params), threading.Event())

    def fetch(scratch: Path) -> tuple[dict, bytes | None]:
        row = ShardDownloader(params, seconds, proxies, scratch, started=started).fetch(entry)
        data = (scratch / "done" / row["file"]).read_bytes() if row["status"] == OK else None
        return row, data

    return in_temp_dir(fetch)


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space; across file systems it cannot be made, so copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class StatusTableError(UserError, ValueError):
    """A download status table that cannot be read; the message names the file."""


@dataclass(frozen=True)
class ShardSummary:
    """What the download status table says about a shard's ids (see :func:`shard_summary`).

    ``resolves`` is the share of ids that still give their video among those whose fate is settled:
    downloaded / (downloaded + permanent failures). Transient failures (proxy, 403, 429, bot check,
    other download errors) and ids not yet tried say nothing about the id, only about the route, so
    they are left out; ``resolves_low`` counts them all as dead and ``resolves_high`` all as alive.
    """

    shard: str
    ids: int
    downloaded: int
    failed_by_class: dict[str, int]

    @property
    def failed(self) -> int:
        return sum(self.failed_by_class.values())

    @property
    def not_tried(self) -> int:
        return self.ids - self.downloaded - self.failed

    @property
    def permanent(self) -> int:
        return sum(n for name, n in self.failed_by_class.items() if name in PERMANENT)

    @property
    def transient(self) -> int:
        return self.failed - self.permanent

    @property
    def resolves(self) -> float | None:
        settled = self.downloaded + self.permanent
        return self.downloaded / settled if settled else None

    @property
    def resolves_low(self) -> float | None:
        return self.downloaded / self.ids if self.ids else None

    @property
    def resolves_high(self) -> float | None:
        return (self.ids - self.permanent) / self.ids if self.ids else None

    @classmethod
    def total(cls, summaries: Sequence["ShardSummary"]) -> "ShardSummary":
        failed: dict[str, int] = {}
        for item in summaries:
            for name, n in item.failed_by_class.items():
                failed[name] = failed.get(name, 0) + n
        return cls("total", sum(s.ids for s in summaries), sum(s.downloaded for s in summaries),
                   dict(sorted(failed.items())))

    def as_json(self) -> dict:
        """The ``v2m manifest status --json`` record (shares rounded to 4 decimals; null without ids)."""
        def share(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {"shard": self.shard, "ids": self.ids, "downloaded": self.downloaded, "failed": self.failed,
                "failed_by_class": dict(self.failed_by_class), "permanent": self.permanent,
                "transient": self.transient, "not_tried": self.not_tried, "resolves": share(self.resolves),
                "resolves_low": share(self.resolves_low), "resolves_high": share(self.resolves_high)}


def shard_summary(shard: str, manifest_dir: Path | str = MANIFEST_DIR, raw_dir: Path | str = RAW_DIR) -> ShardSummary:
    """Count a shard's manifest ids by their row in ``<raw_dir>/<shard>/status.parquet``.

    An id without a row (no status table yet: the shard's download never finished) is not yet
    tried; rows of ids the manifest no longer lists are ignored.
    """
    ids = {entry.video_id for entry in read_manifest(shard_path(shard, Path(manifest_dir)))}
    table = Path(raw_dir) / shard / STATUS_FILE
    rows = []
    if table.is_file():
        try:
            rows = read_status(table)
        except (pa.ArrowException, OSError) as error:
            raise StatusTableError(f"{table}: not a download status table ({_one_line(str(error))})") from None
        missing = [name for name in ("video_id", "status", "error_class") if rows and name not in rows[0]]
        if missing:
            raise StatusTableError(f"{table}: not a download status table (no column {missing[0]!r})")
    downloaded, failed = 0, {}
    for row in rows:
        if row["video_id"] not in ids:
            continue
        if row["status"] == OK:
            downloaded += 1
        else:
            name = row["error_class"] or "unknown"
            failed[name] = failed.get(name, 0) + 1
    return ShardSummary(shard, len(ids), downloaded, dict(sorted(failed.items())))


def summary_table(summaries: Sequence[ShardSummary]) -> str:
    """The text form of ``v2m manifest status``: one line per shard, then the total when there are several."""
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [f"{'shard':<6} {'ids':>7} {'downloaded':>10} {'failed':>7} {'not tried':>9} {'resolves':>8} "
             f"{'(low-high)':>15}  failed by class (* = permanent)"]
    shown = list(summaries) + ([ShardSummary.total(summaries)] if len(summaries) > 1 else [])
    for s in shown:
        classes = ", ".join(f"{name}{'*' if name in PERMANENT else ''} {n}" for name, n in s.failed_by_class.items())
        bounds = f"{percent(s.resolves_low)}-{percent(s.resolves_high)}" if s.ids else "-"
        lines.append(f"{s.shard:<6} {s.ids:>7} {s.downloaded:>10} {s.failed:>7} {s.not_tried:>9} "
                     f"{percent(s.resolves):>8} {bounds:>15}  {classes or '-'}")
    return "\n".join(lines)
