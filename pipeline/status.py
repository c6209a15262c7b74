"""Per-shard status tables: one row per input video and stage, ``ok`` or the reason it is not.

Every stage that works through a shard writes ``status.parquet`` beside its outputs; a bad
input becomes a row naming the video and the reason, and the rest of the shard goes on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.files import atomic_path

STATUS_FILE = "status.parquet"
OK = "ok"
FAILED = "failed"

BASE_FIELDS = [
    pa.field("video_id", pa.string()),
    pa.field("status", pa.string()),          # ok | failed
    pa.field("error_class", pa.string()),     # null when ok; a short machine-readable reason
    pa.field("error_message", pa.string()),   # null when ok; one human-readable line
]

# What was undone to show a video's picture as played (pipeline.media.Picture): the clip, feature and
# generate stages' rows carry them. rotation: degrees clockwise, 0 = none; sar: the source's pixel
# shape, "1:1" = square (none).
PICTURE_FIELDS = [pa.field("rotation", pa.int16()), pa.field("sar", pa.string())]


def picture_columns(picture) -> dict:
    """The :data:`PICTURE_FIELDS` of a ``pipeline.media.Picture``."""
    return {"rotation": picture.rotation, "sar": f"{picture.sar.numerator}:{picture.sar.denominator}"}


# The machine that did each video: ``local`` (engine local) or a Ray node's ``host/node-id`` (engine ray).
NODE_FIELD = pa.field("node", pa.string())


def status_schema(*extra: pa.Field) -> pa.Schema:
    """The common columns followed by a stage's own."""
    return pa.schema(BASE_FIELDS + list(extra))


def ok_row(video_id: str, **columns) -> dict:
    """A finished video's row: the common columns (``ok``, no error) and the stage's own ``columns``."""
    return {"video_id": video_id, "status": OK, "error_class": None, "error_message": None, **columns}


def failed_row(video_id: str, error_class: str, message: str, **columns) -> dict:
    """A failed video's row: ``error_class`` (short, machine-readable), ``message`` (one line naming the
    input and the reason) and the stage's own ``columns``."""
    return {"video_id": video_id, "status": FAILED, "error_class": error_class, "error_message": message, **columns}


def write_status(path: Path | str, rows: Iterable[dict], schema: pa.Schema) -> Path:
    """Write a status table atomically; rows are sorted by video_id so reruns compare equal."""
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["video_id"]), schema=schema)
    with atomic_path(path) as temp:
        pq.write_table(table, temp)
    return Path(path)


def read_status(path: Path | str) -> list[dict]:
    """Rows of a status table (a folder means its status.parquet)."""
    path = Path(path)
    if path.is_dir():
        path = path / STATUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no status table (has the previous stage run?)")
    return pq.read_table(path).to_pylist()


def ok_ids(path: Path | str) -> list[str]:
    """The video ids a previous stage finished."""
    return [row["video_id"] for row in read_status(path) if row["status"] == OK]


def summary(rows: Iterable[dict]) -> str:
    """One line: ``12 ok, 3 failed (not_found: 2, proxy: 1)``."""
    rows = list(rows)
    ok = sum(row["status"] == OK for row in rows)
    failed = Counter(row["error_class"] for row in rows if row["status"] != OK)
    line = f"{ok} ok, {sum(failed.values())} failed"
    if failed:
        line += " (" + ", ".join(f"{name}: {count}" for name, count in sorted(failed.items())) + ")"
    return line
