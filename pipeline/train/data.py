"""Training segments from the feature cache: aligned windows of CLIP tokens, flow maps and codes.

A segment of ``L`` seconds starting at ``s`` is, for every stream, the rows
``[s * rate, (s + L) * rate)``: ``2L`` CLIP frames (2 fps), ``4L`` flow maps (4 fps) and ``50L``
code frames (50 Hz). Starts lie on the time grid of :class:`pipeline.features.recipe.StreamRates`
(``1 / gcd(rates)`` seconds, 0.5 s for 2, 4 and 50), the grid ``v2m generate``'s windows lie on too.

Training items draw one random start per clip and epoch from a generator seeded by
``(seed, epoch, clip index)``, so a run is reproducible whatever the worker count; evaluation
items are every non-overlapping segment of every clip from 0, a fixed list.

The Parquet readers are memory-mapped and cannot be pickled: each process (the main one and
every DataLoader worker) opens its own on first use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.device import evaluating
from pipeline.errors import UserError
from pipeline.features.motion import dequantize
from pipeline.features.recipe import StreamRates
from pipeline.features.store import FeatureReader

log = logging.getLogger("v2m.train")

# Clips' columns each table reader of a dataset keeps in memory, per process (FeatureReader's cache):
# the embedded default's 65 training clips take ~140 MB in all, so every epoch after the first reads
# no Parquet (0.39 -> 0.03 s per batch of 8 on 2 cores); a V2M-sized set cycles through it harmlessly.
READER_CACHE_BYTES = 512 << 20


class SegmentDataset(Dataset):
    """Aligned (visual, motion, codes) segments of the listed clips.

    Args:
        clip_paths, flow_paths, codes_paths: the shards of each table (the listed ones, no glob);
            ``flow_paths`` is never opened when ``use_motion`` is false.
        video_ids: the clips to serve (e.g. one split), in this order.
        segment_seconds: ``L``; a multiple of the time grid (``rates.time_grid()``: 0.5 s for the default rates).
        train: one random segment per clip per epoch (``len`` = clips) if true; every
            non-overlapping segment from 0 otherwise (``len`` = segments).
        seed: seed of the training starts.
        rates: the feature cache's :class:`StreamRates` (row rates of the three tables, the time grid).
        use_motion: read the motion table; items carry ``motion=None`` otherwise.

    Items are dicts: ``visual`` float32 ``[2L, 50, 768]``, ``motion`` float32 ``[4L, S, S]`` or
    None, ``codes`` int64 ``[K, 50L]``, ``video_id`` and ``start`` (seconds). An item key is an
    index or an ``(epoch, index)`` pair (what :class:`SegmentBatchSampler` yields).
    Clips shorter than one segment are skipped, with one warning that lists them.
    """

    def __init__(self, visual_paths: Sequence[Path | str], motion_paths: Sequence[Path | str],
                 codes_paths: Sequence[Path | str], video_ids: Sequence[str], *, segment_seconds: float,
                 train: bool, rates: StreamRates, seed: int = 0, use_motion: bool = True):
        self.paths = {"visual": [Path(p) for p in visual_paths], "codes": [Path(p) for p in codes_paths]}
        if use_motion:
            self.paths["motion"] = [Path(p) for p in motion_paths]
        per_second = rates.per_second()
        self.rates = {table: per_second[table] for table in self.paths}
        self.use_motion, self.train, self.seed = use_motion, train, int(seed)
        self.segment_seconds = float(segment_seconds)
        # starts lie on the time grid (1/G seconds); every stream moves rate/G rows per grid step
        self.grid_rate = rates.grid_rate
        self.segment_steps = rates.grid_steps(self.segment_seconds, "train.segment_seconds")   # L in grid steps
        self.frames = {t: int(round(self.segment_seconds * r)) for t, r in self.rates.items()}

        lengths = self._lengths(list(video_ids))
        self.video_ids: list[str] = []       # usable clips
        self.max_start: list[int] = []       # last start of each, in grid steps
        short = []
        for video_id in video_ids:
            last = min((lengths[t][video_id] - self.frames[t]) // (r // self.grid_rate)
                       for t, r in self.rates.items())
            if last < 0:
                short.append(video_id)
                continue
            self.video_ids.append(video_id)
            self.max_start.append(int(last))
        if short:
            log.warning("skipping %d clip(s) shorter than one %g s segment: %s",
                        len(short), self.segment_seconds, ", ".join(short))
        self.skipped = short
        # evaluation: every non-overlapping segment from 0, as (clip index, start step)
        self.segments: list[tuple[int, int]] = [
            (i, j) for i, last in enumerate(self.max_start) for j in range(0, last + 1, self.segment_steps)]
        self.epoch = 0
        self._readers: dict[str, FeatureReader] | None = None
        self._pid: int | None = None

    # -- reading -----------------------------------------------------------------------------

    def _lengths(self, video_ids: list[str]) -> dict[str, dict[str, int]]:
        """Rows per clip and table, from the Parquet row-group metadata (no data read)."""
        out = {}
        for table, paths in self.paths.items():
            reader = FeatureReader(paths)
            missing = [v for v in video_ids if v not in reader]
            if missing:
                raise UserError(f"{len(missing)} clip(s) missing from the {table} shards "
                                f"{', '.join(map(str, paths))}: {', '.join(missing[:10])}"
                                f"{' ...' if len(missing) > 10 else ''}")
            out[table] = {v: reader.where[v].file.metadata.row_group(reader.where[v].index[v]).num_rows
                          for v in video_ids}
        return out

    def readers(self) -> dict[str, FeatureReader]:
        """This process's readers, opened on first use (DataLoader workers open their own)."""
        if self._readers is None or self._pid != os.getpid():
            self._readers = {table: FeatureReader(paths, cache_bytes=READER_CACHE_BYTES)
                             for table, paths in self.paths.items()}
            self._pid = os.getpid()
        return self._readers

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_pid"] = None, None
        return state

    # -- items -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.video_ids) if self.train else len(self.segments)

    def locate(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """``(clip index, start in grid steps)`` of an item key."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        if not self.train:
            return self.segments[index]
        rng = np.random.default_rng([self.seed, int(epoch), index])
        return index, int(rng.integers(0, self.max_start[index] + 1))

    def start_seconds(self, step: int) -> float:
        return step / self.grid_rate

    def read(self, clip: int, step: int, parts: Sequence[str] = ("visual", "motion", "codes")) -> dict[str, Any]:
        """The segment of clip ``clip`` (an index into ``video_ids``) at ``step`` grid steps.

        ``parts`` limits what is read (e.g. only ``codes``)."""
        video_id = self.video_ids[clip]
        readers = self.readers()

        def rows(table: str) -> slice:
            first = step * (self.rates[table] // self.grid_rate)
            return slice(first, first + self.frames[table])

        item: dict[str, Any] = {"visual": None, "motion": None, "codes": None}
        if "visual" in parts:
            tokens = readers["visual"][video_id]["tokens"][rows("visual")]
            item["visual"] = torch.from_numpy(tokens.astype(np.float32))
        if self.use_motion and "motion" in parts:
            flow = readers["motion"][video_id]
            sl = rows("motion")
            item["motion"] = torch.from_numpy(dequantize(flow["magnitude"][sl], flow["scale"][sl]))
        if "codes" in parts:
            codes = readers["codes"][video_id]["codes"][rows("codes")]
            item["codes"] = torch.from_numpy(np.ascontiguousarray(codes.T, dtype=np.int64))
        item["video_id"] = video_id
        item["start"] = self.start_seconds(step)
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.read(*self.locate(key))


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items: ``visual [B, N_v, 50, 768]``, ``motion [B, N_m, S, S]`` or None,
    ``codes [B, K, T]``, ``video_id`` list, ``start`` float64 ``[B]``."""
    motion = [it["motion"] for it in items]
    return {
        "visual": torch.stack([it["visual"] for it in items]),
        "motion": None if any(m is None for m in motion) else torch.stack(motion),
        "codes": torch.stack([it["codes"] for it in items]),
        "video_id": [it["video_id"] for it in items],
        "start": torch.tensor([it["start"] for it in items], dtype=torch.float64),
    }


class SegmentBatchSampler(Sampler):
    """Batches of item keys: a deterministic stream of ``(epoch, index)`` cut into batches.

    Epoch ``e`` visits every item once, in the order of a permutation seeded by ``(seed, e)``
    when ``shuffle`` (in index order otherwise). ``infinite`` runs epoch after epoch, batches
    spanning epoch ends so every batch is full; otherwise one epoch, the last batch maybe short.
    ``start_batch`` skips that many batches without reading anything (resuming a run).
    Under several processes each takes its slice ``[rank::world]``-wise of every global batch
    (``batch_size`` is the global size and must divide by ``world``).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, infinite: bool = False,
                 start_batch: int = 0, rank: int = 0, world: int = 1):
        if n <= 0:
            raise UserError("no segments to load (every clip shorter than one segment, or no clips)")
        if batch_size % world:
            raise UserError(f"train.batch_size ({batch_size}) must divide by the number of processes ({world})")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.infinite, self.start_batch, self.rank, self.world = infinite, start_batch, rank, world

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        if not self.infinite:
            keys = [(0, int(i)) for i in self.order(0)]
            for b in range(self.start_batch, math.ceil(self.n / self.batch_size)):
                yield keys[b * self.batch_size:(b + 1) * self.batch_size]
            return
        position = self.start_batch * self.batch_size
        epoch, offset = divmod(position, self.n)
        order = self.order(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.n:
                    epoch, offset = epoch + 1, 0
                    order = self.order(epoch)
                take = min(self.batch_size - len(batch), self.n - offset)
                batch += [(epoch, int(i)) for i in order[offset:offset + take]]
                offset += take
            yield batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches():
            if self.world > 1:
                per = math.ceil(len(batch) / self.world)
                batch = batch[self.rank * per:(self.rank + 1) * per]
            yield batch

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite batch sampler has no length")
        return max(math.ceil(self.n / self.batch_size) - self.start_batch, 0)


def make_loader(dataset: SegmentDataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                infinite: bool = False, start_batch: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    """A DataLoader of stacked batches (see :class:`SegmentBatchSampler` for the order).

    The same seed gives the same batches whatever ``num_workers`` is: every key carries its
    epoch, and every random start is drawn from ``(seed, epoch, index)`` alone.
    """
    sampler = SegmentBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, infinite=infinite,
                                  start_batch=start_batch, rank=rank, world=world)
    # its own generator: making an iterator draws a worker base seed, which must not advance the
    # global torch RNG (a resumed run would then drift from an uninterrupted one)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed))


# -- held-out cross-entropy -------------------------------------------------------------------


def derangement_of_segments(video_of: Sequence[str], seed: int = 0) -> np.ndarray:
    """A permutation ``p`` of segments with ``video_of[p[i]] != video_of[i]`` for every ``i``.

    Segments are put in groups by video (groups in random order, random order inside), and each
    takes the segment ``m`` places further on, ``m`` = the largest group: a group of at most
    ``m`` consecutive places never reaches itself. Needs ``m <= n / 2``.
    """
    n = len(video_of)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(video_of):
        groups.setdefault(v, []).append(i)
    m = max((len(g) for g in groups.values()), default=0)
    if n == 0 or 2 * m > n:
        raise UserError(f"cannot shuffle videos across {n} segments: one video has {m} of them "
                        "(more than half); use more held-out clips")
    names = list(groups)
    ordered = [i for g in rng.permutation(len(names)) for i in rng.permutation(groups[names[g]])]
    perm = np.empty(n, dtype=np.int64)
    for place, seg in enumerate(ordered):
        perm[seg] = ordered[(place + m) % n]
    return perm


def token_nll(out: Any, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log p over the valid tokens, number of valid tokens)`` of one forward's output.

    ``V2MModel`` returns code-aligned logits ``[B, K, T, C]`` (its ``undo_delay`` of the delayed
    layout): logits ``[b, k, t]`` predict ``codes[b, k, t]``, and every one of the ``K * T`` codes
    is a real target (the delay pattern's pad positions are already gone). So the sum runs over
    all of them; a model that marks invalid targets passes ``out.valid`` (bool, codes' shape).
    """
    logits = out.logits
    if logits.shape[:3] != codes.shape:
        raise ValueError(f"logits {tuple(logits.shape)} are not code-aligned with codes {tuple(codes.shape)}")
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1).long(),
                                            reduction="none")
    valid = getattr(out, "valid", None)
    if valid is None:
        return nll.sum(), torch.tensor(float(nll.numel()))
    valid = valid.expand_as(codes).reshape(-1)
    return (nll * valid).sum(), valid.sum().float()


@torch.no_grad()
def ce_sums(model: torch.nn.Module, dataset: SegmentDataset, batch_size: int, *, indices: Sequence[int] | None = None,
            shuffle_video: bool = False, seed: int = 0, device: torch.device | str | None = None,
            autocast: Callable[[], ContextManager] | None = None) -> tuple[float, float]:
    """``(nll sum, valid-token count)`` over the given evaluation segments (all by default).

    ``indices`` picks segments (a process's share); ``autocast`` makes a fresh mixed-precision
    context per forward (e.g. ``accelerator.autocast``)."""
    if dataset.train:
        raise ValueError("held-out CE needs an evaluation dataset (train=False): fixed segments")
    n = len(dataset)
    indices = list(range(n)) if indices is None else list(indices)
    source = np.arange(n)
    if shuffle_video:
        source = derangement_of_segments([dataset.video_ids[c] for c, _ in dataset.segments], seed)
    device = device if device is not None else next(model.parameters()).device
    total, count = 0.0, 0.0
    with evaluating(model):
        for b in range(0, len(indices), batch_size):
            chunk = indices[b:b + batch_size]
            video = collate([dataset[int(source[i])] for i in chunk])
            codes = video["codes"]
            if shuffle_video:
                codes = torch.stack([dataset.read(*dataset.segments[i], parts=("codes",))["codes"] for i in chunk])
            visual = video["visual"].to(device)
            motion = video["motion"].to(device) if video["motion"] is not None else None
            codes = codes.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(visual, motion, codes)
            s, c = token_nll(out, codes)
            total += float(s)
            count += float(c)
    return total, count


def held_out_ce(model: torch.nn.Module, dataset: SegmentDataset, batch_size: int, *, shuffle_video: bool = False,
                seed: int = 0) -> float:
    """Mean cross-entropy in nats per valid token over every held-out segment.

    With ``shuffle_video`` each segment is scored with the video (visual and motion together) of
    another clip's segment, codes kept in place (a derangement: none keeps its own video);
    ``ce(shuffled) - ce(true)`` is the information the model takes from the video.
    Exact per token: sums of token losses over sums of valid tokens, not a mean of batch means.
    """
    total, count = ce_sums(model, dataset, batch_size, shuffle_video=shuffle_video, seed=seed)
    if count == 0:
        raise UserError("no valid tokens in the held-out segments")
    return total / count

