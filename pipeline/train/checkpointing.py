"""Checkpoints of a training run and the DVCLive folder that goes with them.

A run's checkpoints live in ``work_dir/checkpoints/step_<N>`` (``accelerator.save_state`` plus a
copy of the DVCLive folder as it was then), written under a temp name and renamed, the newest
:data:`KEEP_CHECKPOINTS` kept. ``work_dir/run.json`` holds the run identity they were made under
(:func:`pipeline.train.experiment.run_identity`); checkpoints of another identity are dropped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from pipeline.files import atomic_path

log = logging.getLogger("v2m.train")

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


def checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints in ``work_dir``, oldest first."""
    folder = Path(work_dir) / CHECKPOINTS
    found = [p for p in folder.glob("step_*") if re.fullmatch(r"step_\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


LIVE_COPY = "live"


def save_checkpoint(accelerator: Accelerator, work_dir: Path, step: int, live_dir: Path) -> None:
    """save_state into a temp folder, renamed when every process is done; keeps the newest two.

    The DVCLive folder as it is now goes along (``live/``): a resumed run restores it, so its
    history holds exactly the steps up to the checkpoint even if the folder was deleted since
    (DVC removes a stage's outputs before running it again) or the killed run logged past it.
    """
    folder = Path(work_dir) / CHECKPOINTS
    final = folder / f"step_{step:08d}"
    temp = folder / f".step_{step:08d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if Path(live_dir).is_dir():
            shutil.copytree(live_dir, temp / LIVE_COPY)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        for old in checkpoints(work_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def restore_live(checkpoint: Path, live_dir: Path, step: int) -> None:
    """The DVCLive folder as it was at ``checkpoint`` (or, lacking that copy, its rows up to ``step``)."""
    copy = Path(checkpoint) / LIVE_COPY
    if copy.is_dir():
        with atomic_path(live_dir) as temp:
            shutil.copytree(copy, temp)
    elif Path(live_dir).is_dir():
        trim_live(live_dir, step)


# what decides a run's trajectory: a checkpoint made under other values is not resumed
IDENTITY_FILE = "run.json"


def check_identity(work_dir: Path, identity: dict[str, Any]) -> None:
    """Drop checkpoints made by another run (``run.json`` holds the identity they were made with)."""
    path = Path(work_dir) / IDENTITY_FILE
    old = json.loads(path.read_text()) if path.is_file() else None
    if old != identity:
        if checkpoints(work_dir):
            changed = sorted(k for k in identity if old is None or old.get(k) != identity[k])
            log.warning("not resuming from %s: its checkpoints were made with other %s; starting afresh",
                        work_dir, "/".join(changed))
            shutil.rmtree(Path(work_dir) / CHECKPOINTS)
        with atomic_path(path) as temp:
            temp.write_text(json.dumps(identity, indent=1, sort_keys=True))


def trim_live(live_dir: Path, step: int) -> None:
    """Drop DVCLive history rows logged after ``step`` (a killed run logged past its checkpoint)."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[col]) <= step]
        if len(kept) != len(rows):
            with atomic_path(tsv) as tmp:
                with open(tmp, "w", newline="") as f:
                    csv.writer(f, delimiter="\t", lineterminator="\n").writerows(kept)
