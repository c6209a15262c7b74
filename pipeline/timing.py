"""Wall time of every stage: one line at its end and a small table the report shows.

Each stage's process records its last run in ``.cache/v2m/timings/<stage>.json`` (``V2M_TIMINGS``
moves the folder): outside DVC's outputs (``/.cache/`` is in .dvcignore and .gitignore), so a
timing never changes a stage's hash or reruns anything. The time counts from the process's start,
so the Python start-up and imports (torch, transformers: seconds per stage on a slow CPU) are in
it, and are also shown on their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pipeline import threads
from pipeline.files import atomic_path

DEFAULT_DIR = Path(".cache/v2m/timings")
FIELDS = ("stage", "status", "seconds", "startup_seconds", "threads", "busy_cores", "max_rss_mb", "finished")


def timings_dir() -> Path:
    return Path(os.environ.get("V2M_TIMINGS") or DEFAULT_DIR)


def process_start_time() -> float:
    """This process's start, in seconds since the epoch (``time.time()`` units)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):  # pragma: no cover - psutil comes with accelerate
        return time.time()


@contextlib.contextmanager
def stage_clock(stage: str, folder: Path | None = None) -> Iterator[None]:
    """Time the block as stage ``stage``: print ``<stage>: N s wall ...`` to stderr at its end and
    record the row (status ok, failed or interrupted) in the timings folder."""
    started = process_start_time()
    entered = time.time()
    status = "failed"
    try:
        yield
        status = "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except SystemExit as exc:
        status = "ok" if exc.code in (None, 0) else ("interrupted" if exc.code == 130 else "failed")
        raise
    finally:
        ended = time.time()
        plan = threads.applied()
        row = {"stage": stage, "status": status, "seconds": round(ended - started, 3),
               "startup_seconds": round(entered - started, 3),
               "threads": plan.threads if plan else None,
               "busy_cores": round(plan.busy_cores, 2) if plan else None,
               "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "finished": datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds")}
        shown = "" if status == "ok" else f", {status}"
        threads_text = f"torch threads {row['threads']}" if row["threads"] else "torch's default threads"
        print(f"{stage}: {row['seconds']:.1f} s wall ({row['startup_seconds']:.1f} s Python start-up and imports, "
              f"{threads_text}{shown})", file=sys.stderr)
        with contextlib.suppress(OSError):
            write_row(row, folder)


def write_row(row: dict, folder: Path | None = None) -> Path:
    """Write one stage's row (atomically: a reader never sees half a file)."""
    folder = Path(folder) if folder is not None else timings_dir()
    path = folder / f"{row['stage']}.json"
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(row, indent=1) + "\n")
    return path


def read_timings(folder: Path | None = None) -> list[dict]:
    """Every recorded stage's last run, in the order they finished (unreadable files skipped)."""
    folder = Path(folder) if folder is not None else timings_dir()
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            row = json.loads(path.read_text())
            if isinstance(row, dict) and "stage" in row and "seconds" in row:
                rows.append(row)
    return sorted(rows, key=lambda row: (str(row.get("finished", "")), row["stage"]))


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table, with the total of the ok rows."""
    lines = [f"{'stage':<24} {'status':<11} {'wall s':>8} {'start-up s':>10} {'threads':>7} {'max RSS MB':>10}  finished"]
    for row in rows:
        lines.append(f"{row['stage']:<24} {row.get('status', ''):<11} {row['seconds']:>8.1f} "
                     f"{row.get('startup_seconds') or 0:>10.1f} {row.get('threads') or '-':>7} "
                     f"{row.get('max_rss_mb') or 0:>10.0f}  {row.get('finished', '')}")
    total = sum(row["seconds"] for row in rows if row.get("status") == "ok")
    startup = sum(row.get("startup_seconds") or 0 for row in rows if row.get("status") == "ok")
    lines.append(f"{'total (ok)':<24} {'':<11} {total:>8.1f} {startup:>10.1f}")
    return "\n".join(lines)


__all__ = ["FIELDS", "format_table", "process_start_time", "read_timings", "stage_clock", "timings_dir", "write_row"]
