"""Train / val / test membership by a hash of the video id.

A video's split depends only on its id and the salt, never on which shards are listed or in what
order, so adding a shard never moves a video from test to train.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from pipeline.config import SplitParams

SPLITS = ("train", "val", "test")


def split_of(video_id: str, split: SplitParams) -> str:
    """``train``, ``val`` or ``test`` for one id: a uniform hash in [0, 1) against the fractions."""
    digest = hashlib.blake2b(f"{split.salt}:{video_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0 ** 64
    if u < split.test_fraction:
        return "test"
    if u < split.test_fraction + split.val_fraction:
        return "val"
    return "train"


def assign(video_ids: Iterable[str], split: SplitParams) -> dict[str, list[str]]:
    """``{split: [ids in input order]}`` for every split, empty lists included."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for video_id in video_ids:
        out[split_of(video_id, split)].append(video_id)
    return out


def ids_in(video_ids: Iterable[str], split: SplitParams, which: str) -> list[str]:
    """The ids of ``video_ids`` in split ``which`` (``train``, ``val`` or ``test``), in input order:
    the one train/val/test filter of every stage, the generator and the benchmarks."""
    if which not in SPLITS:
        raise ValueError(f"unknown split {which!r}; splits: {', '.join(SPLITS)}")
    return [video_id for video_id in video_ids if split_of(video_id, split) == which]
