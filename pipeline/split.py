"""Train / val / test membership by a hash of the video id.

A video's split depends only on its id and the salt, never on which shards are listed or in what
order, so adding a shard never moves a video from test to train.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

SPLITS = ("train", "val", "test")


def split_of(video_id: str, val_fraction: float, test_fraction: float, salt: str = "v2m") -> str:
    """``train``, ``val`` or ``test`` for one id: a uniform hash in [0, 1) against the fractions."""
    digest = hashlib.blake2b(f"{salt}:{video_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign(video_ids: Iterable[str], val_fraction: float, test_fraction: float, salt: str = "v2m") -> dict[str, list[str]]:
    """``{split: [ids in input order]}`` for every split, empty lists included."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for video_id in video_ids:
        out[split_of(video_id, val_fraction, test_fraction, salt)].append(video_id)
    return out
