"""One training run from the feature cache, and its learning figures: what the train stage and
``benchmarks/learning.py`` both call.

The learning figures are held-out cross-entropies in nats per token: ``ce_true`` with each
segment's own video, ``ce_shuffled`` with the videos of other clips (codes unchanged), and
``video_info_gain = ce_shuffled - ce_true``: how much the model's predictions of the music
depend on the right video.

The timing figures (:func:`sync_figures`) ask whether the model knows *when* things happen: the
same model scored with each segment's motion maps circularly shifted in time by half the segment
(``motion[j] -> motion[(j - N_m / 2) mod N_m]``: the same motion, at the wrong times) against the
true ones. ``sync_gain`` is that CE difference over every code frame; ``event_gain`` over the code
frames of the labelled event onsets only (the onset frame and the next one), where v2m-synth's
accents come.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch.nn import functional as F

from pipeline.config import FeaturesParams, ModelParams, SplitParams, TrainParams, as_dict
from pipeline.errors import UserError
from pipeline.features.recipe import RECIPE_FILE, FeatureRecipe, StreamRates
from pipeline.features.store import FeatureShard
from pipeline.files import atomic_path, file_sha256
from pipeline.model.builder import build_model
from pipeline.model.v2m import V2MModel
from pipeline.split import assign
from pipeline.train.data import SegmentDataset, collate, held_out_ce
from pipeline.train.loop import train

log = logging.getLogger("v2m.train")

TABLES = ("visual", "motion", "codes")


def feature_paths(shards: Sequence[str], root: Path | str = "data/features") -> dict[str, list[Path]]:
    """The listed shards of each table (never a glob: stale shard files are ignored)."""
    return {table: [Path(root) / table / f"{shard}.parquet" for shard in shards] for table in TABLES}


def tables_read(use_motion: bool) -> list[str]:
    """The feature tables training reads: all of them, the motion table only with motion."""
    return [t for t in TABLES if use_motion or t != "motion"]


def complete_ids(paths: dict[str, list[Path]], use_motion: bool = True) -> list[str]:
    """Ids present in every table that training reads, in shard order."""
    ids = {t: [i for p in paths[t] for i in FeatureShard(p).ids()] for t in tables_read(use_motion)}
    common = set.intersection(*(set(v) for v in ids.values()))
    return [i for i in ids["codes"] if i in common]


def segment_sets(paths: dict[str, list[Path]], split: SplitParams, segment_seconds: float, seed: int,
                 use_motion: bool, rates: StreamRates) -> dict[str, SegmentDataset]:
    """``train`` (random segments) and ``val`` / ``held_out`` (val + test, fixed segments) datasets
    (``rates``: the feature cache's, which the tables were made at)."""
    groups = assign(complete_ids(paths, use_motion), split)
    if not groups["train"]:
        raise UserError("no training clips: every clip with features fell in the val/test splits")
    if not groups["val"] + groups["test"]:
        raise UserError("no held-out clips: raise split.val_fraction / split.test_fraction or add clips")

    def make(ids: list[str], training: bool) -> SegmentDataset:
        return SegmentDataset(paths["visual"], paths["motion"], paths["codes"], ids, segment_seconds=segment_seconds,
                              train=training, seed=seed, use_motion=use_motion, rates=rates)

    return {"train": make(groups["train"], True),
            "val": make(groups["val"] or groups["test"], False),
            "held_out": make(groups["val"] + groups["test"], False)}


def learning_figures(model: V2MModel, held_out: SegmentDataset, batch_size: int, seed: int = 0) -> dict:
    """``ce_true``, ``ce_shuffled`` and ``video_info_gain`` (nats per token) on held-out segments."""
    ce_true = held_out_ce(model, held_out, batch_size)
    ce_shuffled = held_out_ce(model, held_out, batch_size, shuffle_video=True, seed=seed)
    return {"ce_true": round(ce_true, 6), "ce_shuffled": round(ce_shuffled, 6),
            "video_info_gain": round(ce_shuffled - ce_true, 6),
            "held_out_segments": len(held_out), "held_out_clips": len(held_out.video_ids)}


def event_frames(events: Sequence[float], start: float, steps: int, rate: float) -> list[int]:
    """Code frames of a segment (``steps`` frames from ``start`` s) holding an event onset: the onset's
    frame ``floor((e - start) * rate)`` and the next one, for every event ``e`` inside the segment."""
    frames = set()
    for e in events:
        t = math.floor((e - start) * rate + 1e-9)
        if 0 <= t < steps:
            frames.update(f for f in (t, t + 1) if f < steps)
    return sorted(frames)


@torch.no_grad()
def sync_figures(model: V2MModel, held_out: SegmentDataset, batch_size: int,
                 event_times: Mapping[str, Sequence[float]] | None = None) -> dict:
    """``sync_gain`` and ``event_gain`` (nats per token; see the module docstring) on held-out segments.

    ``event_times``: clip id -> event times in seconds (v2m-synth's labels); without them, or without
    an event in the held-out segments, ``event_gain`` is None and ``event_reason`` says why. A model
    without motion has no motion to shift: both figures are None.
    """
    if not model.config.use_motion:
        return {"sync_gain": None, "event_gain": None, "event_reason": "the model uses no motion"}
    was_training = model.training
    model.eval()
    rate = held_out.rates["codes"]
    device = next(model.parameters()).device
    sums = {"all": [0.0, 0.0, 0], "event": [0.0, 0.0, 0]}   # true nll, shifted nll, tokens
    events_seen = 0
    try:
        for b in range(0, len(held_out), batch_size):
            batch = collate([held_out[i] for i in range(b, min(b + batch_size, len(held_out)))])
            visual, motion, codes = batch["visual"].to(device), batch["motion"].to(device), batch["codes"].to(device)
            shifted = torch.roll(motion, shifts=motion.shape[1] // 2, dims=1)
            nll = []
            for maps in (motion, shifted):
                logits = model(visual, maps, codes).logits                      # [B, K, T, C]
                nll.append(F.cross_entropy(logits.float().flatten(0, 2), codes.flatten(), reduction="none")
                           .reshape(codes.shape))                               # [B, K, T]
            mask = torch.zeros(codes.shape[0], codes.shape[2], dtype=torch.bool, device=device)
            for row, (video_id, start) in enumerate(zip(batch["video_id"], batch["start"].tolist())):
                segment_events = [e for e in (event_times or {}).get(video_id, ()) if start <= e < start +
                                  codes.shape[2] / rate]
                events_seen += len(segment_events)
                mask[row, event_frames(segment_events, start, codes.shape[2], rate)] = True
            k = codes.shape[1]
            for name, where in (("all", torch.ones_like(mask)), ("event", mask)):
                sums[name][0] += float(nll[0].sum(dim=1)[where].sum())
                sums[name][1] += float(nll[1].sum(dim=1)[where].sum())
                sums[name][2] += int(where.sum()) * k
    finally:
        model.train(was_training)
    true_all, shifted_all, n_all = sums["all"]
    out = {"sync_gain": round((shifted_all - true_all) / n_all, 6) if n_all else None,
           "held_out_events": events_seen}
    true_ev, shifted_ev, n_ev = sums["event"]
    if n_ev:
        out.update(event_gain=round((shifted_ev - true_ev) / n_ev, 6), ce_true_events=round(true_ev / n_ev, 6),
                   ce_shifted_events=round(shifted_ev / n_ev, 6))
    else:
        out.update(event_gain=None, event_reason="no event labels (v2m-synth's labels.parquet event_times) for "
                                                 "the held-out clips" if not event_times else
                   "no labelled event inside the held-out segments")
    return out


def data_fingerprint(paths: dict[str, list[Path]]) -> str:
    """sha256 of the bytes of every feature shard in ``paths`` (table by table, in order)."""
    digest = hashlib.sha256()
    for table in sorted(paths):
        for path in paths[table]:
            digest.update(f"{table}/{Path(path).name}:{file_sha256(path)};".encode())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """sha256 of the model and training code (the ``.py`` files of pipeline/model and pipeline/train)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*(package / "model").glob("*.py"), *(package / "train").glob("*.py")]):
        digest.update(f"{path.parent.name}/{path.name}:{file_sha256(path)};".encode())
    return digest.hexdigest()


# ``train`` keys that say how a run is watched and saved, not what it learns: changing one resumes the
# same run (same batches, same updates, same exported model) instead of starting afresh.
NOT_RUN_DEFINING = ("log_every", "checkpoint_every", "num_workers")


def run_identity(model: ModelParams, train_params: TrainParams, features: FeaturesParams, split: SplitParams,
                 shards: Sequence[str], data: str, code: str) -> dict:
    """What defines a training run, the one definition (README, "Run identity"): every ``model``
    key, every ``train`` key except :data:`NOT_RUN_DEFINING`, the ``features`` and ``split``
    sections, the shards, ``data`` (:func:`data_fingerprint` of the shards read) and ``code``
    (:func:`code_fingerprint`). Checkpoints resume only into the same identity (a killed run); a
    rebuilt feature cache, changed model code or any run-defining key starts afresh. JSON-plain, so
    it compares equal to itself read back from a file."""
    train = {k: v for k, v in as_dict(train_params).items() if k not in NOT_RUN_DEFINING}
    identity = {"model": as_dict(model), "train": train, "features": as_dict(features), "split": as_dict(split),
                "shards": list(shards), "data": data, "code": code}
    return json.loads(json.dumps(identity, sort_keys=True))


def run_key(identity: dict) -> str:
    """A short hash of a :func:`run_identity`: the name of the run's checkpoint folder."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def run_training(*, model_params: ModelParams, train_params: TrainParams, features: FeaturesParams,
                 split: SplitParams, shards: Sequence[str], feature_root: Path | str = "data/features",
                 work_root: Path | str = ".cache/v2m/train", live_dir: Path | str = "metrics/train",
                 export_dir: Path | str = "models/v2m", metrics_file: Path | str | None = "metrics/learning.json",
                 progress: bool = True, event_times: Mapping[str, Sequence[float]] | None = None) -> dict:
    """Train on the listed shards, export the best EMA weights, measure the learning figures.

    The export also holds ``features.json`` (:mod:`pipeline.features.recipe`): how the inputs were made.
    ``event_times`` (clip id -> seconds, v2m-synth's labels) make ``event_gain`` (:func:`sync_figures`).

    Checkpoints go to ``work_root/<run key>`` (outside the DVC outputs), so a killed run resumes
    and a changed configuration, feature cache or model code starts afresh. Returns the training
    summary plus the figures, which are also written to ``metrics_file`` (atomically) when given.
    """
    paths = feature_paths(shards, feature_root)
    rates = StreamRates.of(features)
    sets = segment_sets(paths, split, train_params.segment_seconds, train_params.seed, model_params.use_motion,
                        rates)
    model = build_model(model_params, rates)
    model.log_param_counts()
    used = {table: paths[table] for table in tables_read(model_params.use_motion)}
    identity = run_identity(model_params, train_params, features, split, shards, data_fingerprint(used),
                            code_fingerprint())
    work_dir = Path(work_root) / run_key(identity)
    recipe = FeatureRecipe(features, train_params.segment_seconds)
    summary = train(model, sets["train"], sets["val"], train_params, identity=identity, work_dir=work_dir,
                    live_dir=Path(live_dir),
                    export_dir=Path(export_dir), progress=progress, export_files={RECIPE_FILE: recipe.to_json()})
    best = V2MModel.from_pretrained(export_dir)
    eval_batch = max(1, min(train_params.batch_size, 16))
    figures = learning_figures(best, sets["held_out"], batch_size=eval_batch, seed=train_params.seed)
    figures.update(sync_figures(best, sets["held_out"], eval_batch, event_times))
    result = {**figures, "train_clips": len(sets["train"].video_ids), "steps": summary["steps"],
              "best_val_loss": summary["best_val_loss"], "tokens_per_s": summary["tokens_per_s"],
              "use_motion": model_params.use_motion}
    log.info("learning figures: %s", result)
    if metrics_file is not None:
        with atomic_path(metrics_file) as temp:
            temp.write_text(json.dumps(result, indent=2) + "\n")
    return result


__all__ = ["code_fingerprint", "complete_ids", "data_fingerprint", "event_frames", "feature_paths", "learning_figures",
           "run_key", "run_training", "segment_sets", "sync_figures", "tables_read"]
