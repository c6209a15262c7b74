"""Append-only manifest shards: ``data/manifests/sNNNN.csv``, one video per row.

Columns: ``video_id`` (a YouTube id, 11 characters of ``[A-Za-z0-9_-]``), optional ``url``
(default: the YouTube watch URL of the id) and optional ``sha256`` (expected content, checked
after download). A shard never changes once written: new videos go into a new shard, which
``add_shard`` appends to ``data.shards`` in params.yaml, so DVC runs only the new shard's stages.

A ``file:`` URL with a relative path (``file:data/sample/x.mp4``) is resolved against the
working directory: that is how the embedded default's shard points at the synthetic sample set.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline.errors import ParamsError, UserError
from pipeline.files import atomic_path, content_lines

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")
SHARD_NAME = re.compile(r"s(\d{4})")
MANIFEST_DIR = Path("data/manifests")
COLUMNS = ("video_id", "url", "sha256")


class ManifestError(UserError, ValueError):
    """A manifest or id list that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class ManifestEntry:
    video_id: str
    url: str
    sha256: str | None = None


def watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def shard_path(name: str, manifest_dir: Path = MANIFEST_DIR) -> Path:
    return Path(manifest_dir) / f"{name}.csv"


def read_manifest(path: Path | str) -> list[ManifestEntry]:
    """Parse and validate a shard; any bad row is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    text = path.read_text()
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or not header or header[0].strip() != "video_id":
        raise ManifestError(f"{path} line 1: the header must start with 'video_id' (columns: {', '.join(COLUMNS)})")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ManifestError(f"{path} line 1: unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    entries, seen = [], {}
    for line_number, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise ManifestError(f"{path} line {line_number}: {len(row)} fields, the header has {len(header)}")
        values = dict(zip(header, (cell.strip() for cell in row)))
        video_id = values.get("video_id", "")
        if not VIDEO_ID.fullmatch(video_id):
            raise ManifestError(f"{path} line {line_number}: {video_id!r} is not a video id "
                                "(11 characters of A-Z a-z 0-9 _ -)")
        if video_id in seen:
            raise ManifestError(f"{path} line {line_number}: {video_id} repeats line {seen[video_id]}")
        seen[video_id] = line_number
        url = values.get("url") or watch_url(video_id)
        if not re.match(r"(https?|file):", url):
            raise ManifestError(f"{path} line {line_number}: url {url!r} must start with http:, https: or file:")
        sha = values.get("sha256") or None
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ManifestError(f"{path} line {line_number}: sha256 {sha!r} is not 64 hex digits")
        entries.append(ManifestEntry(video_id, url, sha))
    return entries


def write_manifest(path: Path | str, entries: Iterable[ManifestEntry]) -> Path:
    """Write a shard atomically, with only the columns that carry information."""
    entries = list(entries)
    columns = ["video_id"]
    if any(e.url != watch_url(e.video_id) for e in entries):
        columns.append("url")
    if any(e.sha256 for e in entries):
        columns.append("sha256")
    with atomic_path(path) as temp:
        with open(temp, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for e in entries:
                writer.writerow([{"video_id": e.video_id, "url": e.url, "sha256": e.sha256 or ""}[c] for c in columns])
    return Path(path)


def read_id_list(path: Path | str) -> list[tuple[int, str]]:
    """``(line number, id)`` from a V2M-style list (one id per line; blanks and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such id list")
    return content_lines(path)


def existing_shards(manifest_dir: Path = MANIFEST_DIR) -> list[Path]:
    return sorted(p for p in Path(manifest_dir).glob("s*.csv") if SHARD_NAME.fullmatch(p.stem))


def add_shard(ids_file: Path | str, n: int, *, manifest_dir: Path = MANIFEST_DIR,
              params_file: Path | str = "params.yaml", exclude_file: Path | str | None = None) -> tuple[Path, int]:
    """Write the next shard with up to ``n`` new ids from ``ids_file`` and list it in params.yaml.

    Ids already in any shard or in the exclusion list are skipped, so the same V2M list can be
    fed again to take the next ``n``.

    Returns:
        ``(path of the new shard, number of ids skipped as already known)``.
    """
    if n < 1:
        raise ManifestError(f"--n must be at least 1, got {n}")
    listed = read_id_list(ids_file)
    bad = [(line, token) for line, token in listed if not VIDEO_ID.fullmatch(token)]
    if bad:
        shown = "; ".join(f"line {line}: {token!r}" for line, token in bad[:5])
        raise ManifestError(f"{ids_file}: {len(bad)} invalid video ids ({shown}); "
                            "ids are 11 characters of A-Z a-z 0-9 _ -")
    known = {e.video_id for shard in existing_shards(manifest_dir) for e in read_manifest(shard)}
    if exclude_file is not None and Path(exclude_file).is_file():
        known |= {token for _, token in read_id_list(exclude_file)}
    fresh, skipped = [], 0
    for _, token in listed:
        if token in known:
            skipped += 1
            continue
        known.add(token)
        fresh.append(token)
        if len(fresh) == n:
            break
    if not fresh:
        raise ManifestError(f"{ids_file}: no new ids (all {len(listed)} are in earlier shards or excluded)")
    numbers = [int(SHARD_NAME.fullmatch(p.stem).group(1)) for p in existing_shards(manifest_dir)]
    name = f"s{max(numbers, default=0) + 1:04d}"
    path = write_manifest(shard_path(name, manifest_dir), (ManifestEntry(i, watch_url(i)) for i in fresh))
    append_shard_to_params(params_file, name)
    return path, skipped


def append_shard_to_params(params_file: Path | str, name: str) -> None:
    """Add ``name`` to ``data.shards`` in params.yaml, keeping its comments and layout."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    path = Path(params_file)
    try:
        document = yaml.load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    data = document.setdefault("data", {})
    shards = data.setdefault("shards", [])
    if name not in shards:
        shards.append(name)
    with atomic_path(path) as temp:
        with open(temp, "w") as handle:
            yaml.dump(document, handle)
