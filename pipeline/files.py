"""Files that are either complete or absent: every output is written to a temp name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces ``final`` only if the block succeeds.

    Works for files and folders. The temp name keeps the suffix (encoders pick the format from it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.stem}.partial-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield temp
        if final.is_dir() and temp.is_dir():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(temp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, final)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        elif temp.exists():
            temp.unlink()


def content_lines(path: Path | str) -> list[tuple[int, str]]:
    """``(line number, text)`` of each line of a list file that has content: ``#`` comments and blanks dropped."""
    out = []
    for line_number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append((line_number, text))
    return out


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in blocks (videos, shards and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
