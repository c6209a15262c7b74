"""Learning benchmark: the model learns the video-to-music mapping of v2m-synth, on CPU, in minutes.

v2m-synth's music follows its video (key = background hue, mode = brightness, tempo = object
speed; ``labels.parquet`` holds key, mode and bpm per clip), so a model that learns must predict
held-out music better with the clip's own video than with another clip's. Every figure is a
held-out cross-entropy in nats per audio token (``pipeline.train.experiment``), the train stage's
code and the embedded default params (``params.yaml``: tiny model, 300 steps of batch 8, 4 s
segments, lr 1e-3) unless an option says otherwise:

(a) ``video_info_gain`` = ce(shuffled videos) - ce(true video), for ``--seeds`` training seeds
    (``model.seed`` = ``train.seed`` = 0, 1, ...): each seed's figures, then mean, std, min..max.
    Target: >= 0.1 nats/token.
(b) ``oracle_gain``: the same model, loop and budget conditioned on the clips' *labels* instead of
    the video: a clip table whose every frame is a constant encoding of (key, mode, bpm) (token 0:
    one-hot of ``2 * key + mode``; token 1: a soft one-hot of bpm over 32 bins; zeros elsewhere),
    trained with ``model.use_motion=false``; labels are shuffled across clips exactly as videos
    are. ``video_info_gain / oracle_gain`` says how much of what the labels can tell the video
    tells. (The labels carry no beat phase; the video's scene cuts, on chord changes, do.)
(c) ``motion_gain`` on the motion-only variant of v2m-synth (no scene cuts: only the motion
    shows the tempo and the events) = ce_true(``use_motion=false``) - ce_true(``use_motion=true``),
    all code frames. A tempo constant over the clip is worth ~0 to a decoder that hears the music
    so far (issue 5's oracles); the events (the shapes lurch, an accent hits) are what the picture
    tells and the audio history cannot.
(d) ``event_gain`` and ``sync_gain`` of the (a) runs (``pipeline.train.experiment.sync_figures``):
    ce(motion shifted in time by half the segment) - ce(true motion), same model, on the code frames
    of the event onsets (onset frame + next) / on all code frames. Targets for the better mode:
    event_gain >= 0.5 (mean) and > 0 every seed; sync_gain and motion_gain > 0 every seed.

(a), (c) and (d) run for each ``--modes`` value of ``model.aligned_condition`` (default both: false
is the paper's model, true adds the time-aligned features to the decoder's input); (b) in the
paper's mode. ``--figures`` picks which of video (a + d), oracle (b), motion (c) to run (default all).

Data, built as the stages build it: v2m-synth rendered by ``render_sample_set`` (``--clips``
clips of ``sample.seconds``, features over the first ``clip.seconds``); CLIP ViT-B/32 tokens from
a random-weights model (``save_visual_stand_in``: ``features.visual.init_seed`` and ``init_layers``, as ``visual_init``);
Farneback flow; EnCodec 32 kHz codes from a random codec whose codebooks are calibrated on the
set's train-split audio (``save_calibrated_random_codec``, as ``codec_init``). The target audio is
the CLEAN accompaniment stem the synth writes, resampled to 32 kHz mono: no Demucs here (the
main job separates the mix with a briefly trained small HTDemucs). Use >= 96 clips: with 24
clips the held-out set is ~7 clips and the model does not generalise (gain ~0).

Features are cached under ``--work`` (reused when the same settings made them); every training
run starts afresh, unless ``--resume``: then finished runs' saved results are reused and a killed
run resumes from its last checkpoint. Each run's exported EMA weights stay in ``WORK/models/<run>``.
Nothing is written into data/, models/ or metrics/.

Usage: python benchmarks/learning.py [--clips 96] [--steps 300] [--seeds 3] [--other-seeds 1] [--first-seed 0]
                                     [--figures video,oracle,motion] [--modes false,true] [--work .cache/v2m/learning]
                                     [--out learning.json] [--resume]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import transformers

from pipeline import media
from pipeline.config import as_dict, load_params
from pipeline.embedded import save_visual_stand_in
from pipeline.features import codec as codec_lib
from pipeline.features.extract import ClipInput, codes_table, extract_tables
from pipeline.features.store import FeatureShard, ShardWriter, tensor_column
from pipeline.features.visual import load_visual_model
from pipeline.files import atomic_path
from pipeline.split import assign, ids_in
from pipeline.status import OK, summary
from pipeline.synth import read_labels, render_sample_set
from pipeline.train.experiment import code_fingerprint, run_identity, run_training

ROOT = Path(__file__).resolve().parents[1]
SHARD = "s0000"
FORMAT = 5               # bump when the cached feature layout below or what v2m-synth renders changes
TARGET_RATE = 32_000
BPM_BINS = 32
FIGURES = ("video", "oracle", "motion")
MODES = ("major", "minor")


def log(message: str) -> None:
    print(message, flush=True)


# -- data ------------------------------------------------------------------------------------------


def build_set(work: Path, name: str, sample, clip, features, split, clip_model_dir: Path) -> dict:
    """Render one v2m-synth variant and write its clip, flow and codes shards (cached)."""
    root = work / name
    stamp = {"format": FORMAT, "sample": as_dict(sample), "clip_seconds": clip.seconds,
             "features": as_dict(features), "split": as_dict(split)}
    stamp_file = root / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        log(f"[data] {name}: reusing {root}")
        return {"root": root, "labels": read_labels(root / "synth"), "seconds": {}, "stamp": stamp}
    shutil.rmtree(root, ignore_errors=True)
    seconds = {}

    start = time.perf_counter()
    render_sample_set(root / "synth", sample, progress=False)
    labels = read_labels(root / "synth")
    seconds["render"] = time.perf_counter() - start

    # target audio: the clean accompaniment stem, resampled by FFmpeg to mono 32 kHz, first clip.seconds
    start = time.perf_counter()
    audio_dir = root / "audio"
    for row in labels:
        mono, _ = media.decode_audio(root / "synth" / row["accompaniment_file"], TARGET_RATE, channels=1)
        media.write_wav(audio_dir / f"{row['video_id']}.wav", mono[:, : round(clip.seconds * TARGET_RATE)], TARGET_RATE)
    seconds["audio"] = time.perf_counter() - start

    start = time.perf_counter()
    visual = dataclasses.replace(features.visual, model=str(clip_model_dir))
    model = load_visual_model(visual)
    clips = [ClipInput(row["video_id"], root / "synth" / row["video_file"], clip.seconds) for row in labels]
    feature_root = root / "features"
    rows = extract_tables(clips, visual=visual, model=model, motion=features.motion,
                          visual_out=feature_root / "visual" / f"{SHARD}.parquet",
                          motion_out=feature_root / "motion" / f"{SHARD}.parquet",
                          motion_workers=os.cpu_count() or 1, progress=False, desc=name)
    _check(rows, f"{name} visual/motion")
    seconds["visual+motion"] = time.perf_counter() - start
    del model

    # codec_init: random EnCodec, codebooks fitted on this set's train-split audio
    start = time.perf_counter()
    calibration = features.codes.calibration
    train_ids = ids_in([r["video_id"] for r in labels], split, "train")
    audios = [media.read_wav(audio_dir / f"{v}.wav")[0] for v in train_ids]
    codec_dir = root / "codec"
    codec_lib.calibrate_embedded_codec(codec_dir, audios, calibration)
    seconds["codec_init"] = time.perf_counter() - start

    start = time.perf_counter()
    codes_params = dataclasses.replace(features.codes, codec=str(codec_dir))
    codec = codec_lib.load_codec(codec_dir, device=codes_params.device)
    rows = codes_table([r["video_id"] for r in labels], audio_dir, feature_root / "codes" / f"{SHARD}.parquet",
                       codes_params, codec, progress=False, desc=f"{name} codes")
    _check(rows, f"{name} codes")
    seconds["codes"] = time.perf_counter() - start

    with atomic_path(stamp_file) as temp:
        temp.write_text(json.dumps(stamp, indent=1))
    log(f"[data] {name}: {len(labels)} clips in {root}; " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return {"root": root, "labels": labels, "seconds": seconds, "stamp": stamp}


def _check(rows: list[dict], what: str) -> None:
    if any(row["status"] != OK for row in rows):
        raise SystemExit(f"{what}: {summary(rows)}")


def label_tokens(row: dict, bpm_min: float, bpm_max: float, tokens: int, width: int) -> np.ndarray:
    """The constant ``[tokens, width]`` grid of one clip's labels (see the module docstring)."""
    grid = np.zeros((tokens, width), np.float32)
    grid[0, 2 * int(row["key"]) + MODES.index(row["mode"])] = 1.0
    # a soft one-hot: a plain scalar would not survive the visual encoder's per-token LayerNorm
    centres = np.linspace(bpm_min, bpm_max, BPM_BINS)
    sigma = (bpm_max - bpm_min) / (BPM_BINS - 1)
    grid[1, :BPM_BINS] = np.exp(-0.5 * ((float(row["bpm"]) - centres) / sigma) ** 2)
    return grid


def build_oracle(data: dict, sample, visual_params) -> Path:
    """A clip-table shard of label encodings (same schema, ids and row counts as the set's CLIP shard),
    beside a link to the set's codes shard: the feature root of the oracle runs."""
    root = data["root"] / "oracle"
    clip_shard = FeatureShard(data["root"] / "features" / "visual" / f"{SHARD}.parquet")
    tokens_type = clip_shard.file.schema_arrow.field("tokens").type
    n_tokens, width = tokens_type.shape
    out = root / "visual" / f"{SHARD}.parquet"
    with ShardWriter(out, "visual", [pa.field("frame", pa.int32()), pa.field("time", pa.float32()),
                                   pa.field("tokens", tokens_type)],
                     {"model": "v2m-synth labels (oracle)", "params": dataclasses.asdict(visual_params),
                      "hidden_state": "labels",
                      "units": f"token 0: one-hot of 2*key+mode (mode 0 major, 1 minor); token 1: soft one-hot of "
                               f"bpm over {BPM_BINS} bins {sample.bpm_min:g}..{sample.bpm_max:g}; zeros elsewhere; "
                               "the same every frame"}) as writer:
        for row in data["labels"]:
            video_id = row["video_id"]
            n = clip_shard.file.metadata.row_group(clip_shard.index[video_id]).num_rows
            grid = label_tokens(row, sample.bpm_min, sample.bpm_max, n_tokens, width)
            writer.write_clip(video_id, {
                "frame": np.arange(n, dtype=np.int32), "time": np.arange(n, dtype=np.float32) / visual_params.fps,
                "tokens": tensor_column(np.broadcast_to(grid, (n, n_tokens, width)).astype(np.float16))})
    codes = root / "codes" / f"{SHARD}.parquet"
    codes.parent.mkdir(parents=True, exist_ok=True)
    if codes.is_symlink() or codes.exists():
        codes.unlink()
    codes.symlink_to(data["root"] / "features" / "codes" / f"{SHARD}.parquet")
    return root


# -- training --------------------------------------------------------------------------------------


def train_run(work: Path, run: str, feature_root: Path, params: dict, *, seed: int, use_motion: bool,
              steps: int, data_stamp: dict, resume: bool, aligned: bool = False,
              event_times: dict[str, list[float]] | None = None) -> dict:
    """One training run (the train stage's code) and its held-out figures.

    Fresh unless ``resume``: then a finished run's saved result (same settings, data and model code) is reused
    and an unfinished one resumes from its last checkpoint (``train.checkpoint_every`` steps)."""
    model = dataclasses.replace(params["model"], seed=seed, use_motion=use_motion, aligned_condition=aligned)
    train = dataclasses.replace(params["train"], seed=seed, max_steps=steps,
                                warmup_steps=min(params["train"].warmup_steps, max(steps // 10, 1)))
    dirs = {"work_root": work / "train" / run, "live_dir": work / "live" / run, "export_dir": work / "models" / run}
    # the train stage's own run identity, with the benchmark's data stamp as the data
    key = {"run": run_identity(model, train, params["features"], params["split"], [SHARD],
                               json.dumps(data_stamp, sort_keys=True), code_fingerprint()),
           "feature_root": str(feature_root)}
    saved = work / "results" / f"{run}.json"
    if resume and saved.is_file():
        old = json.loads(saved.read_text())
        if old["key"] == key:
            return {**old["result"], "reused": True}
    if not resume:
        for folder in dirs.values():
            shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    result = run_training(model_params=model, train_params=train, features=params["features"], split=params["split"],
                          shards=[SHARD], feature_root=feature_root, metrics_file=None, progress=False,
                          event_times=event_times, **dirs)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["seed"] = seed
    with atomic_path(saved) as temp:
        temp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    shutil.rmtree(dirs["work_root"], ignore_errors=True)   # checkpoints (~120 MB a run): only a killed run needs them
    return result


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def spread_text(s: dict) -> str:
    return f"mean {s['mean']:.3f}, std {s['std']:.3f}, min..max {s['min']:.3f}..{s['max']:.3f} (n={s['n']})"


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96, help="clips per set (>= 96: 24 gave no held-out gain)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: train.max_steps)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of the video_info_gain figure")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (to add seeds to a run)")
    parser.add_argument("--other-seeds", type=int, default=1,
                        help="training seeds of the oracle and motion figures (each run is ~2.5 min on 2 cores)")
    parser.add_argument("--modes", default="false,true",
                        help="model.aligned_condition values to run (a), (c), (d) with, comma separated")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help="which figures to run, comma separated: video (a), oracle (b), motion (c)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache/v2m/learning",
                        help="renders, features and runs (features are reused); not inside data/ or models/")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs' saved results and resume killed runs from their checkpoints")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    wanted = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FIGURES))
    if unknown or not wanted:
        parser.error(f"--figures: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FIGURES)}")
    modes = [{"true": True, "false": False}.get(m.strip().lower()) for m in args.modes.split(",") if m.strip()]
    if not modes or None in modes:
        parser.error(f"--modes: give true and/or false, got {args.modes!r}")
    work = args.work.resolve()
    for guarded in (ROOT / "data", ROOT / "models", ROOT / "metrics"):
        if work == guarded or guarded in work.parents:
            parser.error(f"--work must not be inside {guarded} (a DVC output)")
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    began = time.perf_counter()

    params = load_params(args.params, sections=("sample", "clip", "features", "split", "model", "train"))
    steps = args.steps or params["train"].max_steps
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    other_seeds = list(range(args.first_seed, args.first_seed + args.other_seeds))
    sample = dataclasses.replace(params["sample"], n_clips=args.clips)
    clip, features, split = params["clip"], params["features"], params["split"]
    m, t = params["model"], params["train"]
    log(f"config: v2m-synth {args.clips} clips of {sample.seconds:g} s ({sample.width}x{sample.height} at "
        f"{sample.fps} fps, seed {sample.seed}), features over the first {clip.seconds:g} s; CLIP ViT-B/32 RANDOM "
        f"weights at {features.visual.fps} fps; Farneback flow at {features.motion.fps} fps, {features.motion.size}px; "
        f"EnCodec 32 kHz random, codebooks calibrated on the train split; targets: the CLEAN accompaniment stems "
        f"at 32 kHz mono (no Demucs)")
    log(f"config: model {m.size}, tokens_per_frame {m.tokens_per_frame}, condition_dropout {m.condition_dropout}, "
        f"aligned_motion_rank {m.aligned_motion_rank}, aligned_motion_energy {m.aligned_motion_energy}; "
        f"train {steps} steps, batch {t.batch_size}, segment {t.segment_seconds:g} s, lr {t.lr:g}, "
        f"warmup {min(t.warmup_steps, max(steps // 10, 1))}, ema {t.ema_decay}; split val {split.val_fraction} / "
        f"test {split.test_fraction} (held out: val + test); seeds {seeds}, oracle/motion seeds {other_seeds} "
        f"(model.seed = train.seed); "
        f"{torch.get_num_threads()} torch threads; work {work}")

    clip_dir = work / "models" / f"visual-random-{features.visual.init_seed}-{features.visual.init_layers}"
    if not (clip_dir / "config.json").is_file():
        save_visual_stand_in(clip_dir, features.visual)
    set_names = {"synth": False, "synth-motion-only": True}
    needed = ((["synth"] if {"video", "oracle"} & set(wanted) else [])
              + (["synth-motion-only"] if "motion" in wanted else []))
    sets = {name: build_set(work, name, dataclasses.replace(sample, motion_only=set_names[name]), clip, features, split,
                            clip_dir) for name in needed}
    for name, data in sets.items():
        groups = assign([r["video_id"] for r in data["labels"]], split)
        log(f"[data] {name}: {len(groups['train'])} train / {len(groups['val'])} val / {len(groups['test'])} test clips")

    plan = []   # (kind, set, feature root, use_motion, aligned, seed)
    if "video" in wanted:
        plan += [("video", "synth", sets["synth"]["root"] / "features", True, a, s) for a in modes for s in seeds]
    if "oracle" in wanted:
        oracle_root = build_oracle(sets["synth"], sample, features.visual)
        plan += [("oracle", "synth", oracle_root, False, False, s) for s in other_seeds]
    if "motion" in wanted:
        plan += [(f"motion-{'on' if on else 'off'}", "synth-motion-only", sets["synth-motion-only"]["root"] / "features",
                  on, a, s) for a in modes for s in other_seeds for on in (False, True)]
    runs = []
    for kind, set_name, root, use_motion, aligned, seed in plan:
        name = f"{kind}{'-aligned' if aligned else ''}-seed{seed}"
        events = {r["video_id"]: list(r["event_times"]) for r in sets[set_name]["labels"]}
        result = train_run(work, name, root, params, seed=seed, use_motion=use_motion, steps=steps,
                           data_stamp=sets[set_name]["stamp"], resume=args.resume, aligned=aligned,
                           event_times=events)
        result.update(run=name, kind=kind, set=set_name, aligned=aligned)
        runs.append(result)
        timing = (f"  event_gain {result['event_gain']:+.4f}  sync_gain {result['sync_gain']:+.4f}"
                  if result.get("event_gain") is not None else "")
        log(f"[run] {name:<26} ce_true {result['ce_true']:.4f}  ce_shuffled {result['ce_shuffled']:.4f}  "
            f"gain {result['video_info_gain']:+.4f}{timing}  ({result['held_out_clips']} held-out clips, "
            f"{result.get('held_out_events', 'no')} events, "
            f"{result['seconds']:.0f} s{', saved result reused' if result.get('reused') else ''})")

    def mode_name(aligned: bool) -> str:
        return "aligned" if aligned else "paper"

    by = {(kind, a): {r["seed"]: r for r in runs if r["kind"] == kind and r["aligned"] == a}
          for kind in ("video", "oracle", "motion-off", "motion-on") for a in (False, True)}
    figures, passed = {}, {}
    if "video" in wanted:
        for a in modes:
            video = [by["video", a][s]["video_info_gain"] for s in seeds]
            key = "video_info_gain" if not a else "video_info_gain_aligned"
            figures[key] = {"per_seed": dict(zip(map(str, seeds), video)), **spread(video)}
            passed[f"{key} >= 0.1 (every seed)"] = min(video) >= 0.1
            for name in ("event_gain", "sync_gain"):
                values = [by["video", a][s][name] for s in seeds]
                if None in values:
                    continue
                figures.setdefault(name, {})[mode_name(a)] = {"per_seed": dict(zip(map(str, seeds), values)),
                                                              **spread(values)}
            if "event_gain" in figures and mode_name(a) in figures["event_gain"]:
                ev = figures["event_gain"][mode_name(a)]
                passed[f"event_gain >= 0.5 mean, > 0 every seed ({mode_name(a)})"] = ev["mean"] >= 0.5 and ev["min"] > 0
                passed[f"sync_gain > 0 every seed ({mode_name(a)})"] = figures["sync_gain"][mode_name(a)]["min"] > 0
    if "oracle" in wanted:
        oracle = [by["oracle", False][s]["video_info_gain"] for s in other_seeds]
        figures["oracle_gain"] = {"per_seed": dict(zip(map(str, other_seeds), oracle)), **spread(oracle)}
        if "video_info_gain" in figures:
            paper_video = figures["video_info_gain"]["mean"]
            figures["video_over_oracle"] = (round(paper_video / statistics.fmean(oracle), 4)
                                            if statistics.fmean(oracle) else None)
    if "motion" in wanted:
        for a in modes:
            motion = [round(by["motion-off", a][s]["ce_true"] - by["motion-on", a][s]["ce_true"], 6)
                      for s in other_seeds]
            figures.setdefault("motion_gain", {})[mode_name(a)] = {"per_seed": dict(zip(map(str, other_seeds), motion)),
                                                                   **spread(motion)}
            passed[f"motion_gain > 0 every seed ({mode_name(a)})"] = all(x > 0 for x in motion)

    print()
    def fmt(value) -> str:
        return f"{value:+8.4f}" if value is not None else f"{'-':>8}"

    print(f"{'run':<26} {'set':<18} {'condition':<9} {'motion':<6} {'aligned':<7} {'ce_true':>8} {'ce_shuf':>8} "
          f"{'gain':>8} {'event':>8} {'sync':>8} {'held-out':>8} {'time':>6}")
    for r in runs:
        condition = "labels" if r["kind"] == "oracle" else "video"
        print(f"{r['run']:<26} {r['set']:<18} {condition:<9} {'yes' if r['use_motion'] else 'no':<6} "
              f"{'yes' if r['aligned'] else 'no':<7} {r['ce_true']:8.4f} {r['ce_shuffled']:8.4f} "
              f"{r['video_info_gain']:+8.4f} {fmt(r.get('event_gain'))} {fmt(r.get('sync_gain'))} "
              f"{r['held_out_segments']:8d} {r['seconds']:5.0f}s{' (reused)' if r.get('reused') else ''}")
    print()
    print("held-out cross-entropy in nats/token; gain = ce_shuffled - ce_true (videos or labels of other clips); "
          "event / sync = ce(motion shifted by half the segment) - ce(true motion) on event onset frames / all frames")
    for key in ("video_info_gain", "video_info_gain_aligned"):
        if key in figures:
            print(f"(a) {key:<24} {spread_text(figures[key])}   target >= 0.1: "
                  f"{'PASS' if passed[f'{key} >= 0.1 (every seed)'] else 'FAIL'} (every seed)")
    if "oracle_gain" in figures:
        print(f"(b) oracle_gain       {spread_text(figures['oracle_gain'])}   (labels key, mode, bpm; "
              f"same model/budget)")
    if "video_over_oracle" in figures:
        print(f"    video_info_gain / oracle_gain = {figures['video_over_oracle']}")
    for mode, spread_ in figures.get("motion_gain", {}).items():
        print(f"(c) motion_gain [{mode:<7}] {spread_text(spread_)}   = ce_true(w/o motion) - ce_true(with motion), "
              f"motion-only set: {'POSITIVE' if spread_['min'] > 0 else 'NOT positive'} for every seed")
    for name in ("event_gain", "sync_gain"):
        for mode, spread_ in figures.get(name, {}).items():
            print(f"(d) {name} [{mode:<7}] {spread_text(spread_)}")
    for name, ok in passed.items():
        print(f"    {'PASS' if ok else 'FAIL'}  {name}")
    total = time.perf_counter() - began
    reused = sum(bool(r.get("reused")) for r in runs)
    print(f"total {total / 60:.1f} min; {len(runs)} runs of {steps} steps, {sum(r['seconds'] for r in runs) / 60:.1f} "
          f"min of training in all" + (f" ({reused} saved results reused)" if reused else ""))

    if args.out is not None:
        report = {"config": {"clips": args.clips, "sample": as_dict(sample), "clip_seconds": clip.seconds,
                             "features": as_dict(features), "split": as_dict(split), "model": as_dict(m),
                             "train": as_dict(t), "steps": steps, "seeds": seeds, "modes": modes,
                             "targets": "clean accompaniment stems, 32 kHz mono (no Demucs)"},
                  "figures": figures, "passed": passed,
                  "data_seconds": {name: d["seconds"] for name, d in sets.items()},
                  "runs": runs, "total_seconds": round(total, 1)}
        with atomic_path(args.out) as temp:
            temp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
