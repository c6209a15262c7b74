"""Training data and loop, on tiny feature shards with a learnable relation and the real tiny model.

The toy shards: every clip has a class ``y`` (4 classes); its CLIP tokens are noise plus a class
pattern, and its codes are drawn uniformly from the 16 entries ``16 y .. 16 y + 15`` of every
codebook. So a model that reads the video can put its mass on 16 of 2048 entries from the first
token on, and the same model scored with another clip's video is confidently wrong.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import FeaturesParams, ModelParams, SplitParams, TrainParams
from pipeline.features.motion import dequantize
from pipeline.features.recipe import StreamRates
from pipeline.features.store import ShardWriter, tensor_column
from pipeline.model.builder import tiny_config
from pipeline.model.v2m import V2MModel
from pipeline.train import (EMA, SegmentDataset, checkpoints, derangement_of_segments, held_out_ce, lr_factor,
                            make_loader, make_scheduler, parameter_groups, train)
from pipeline.train.experiment import (code_fingerprint, data_fingerprint, event_frames, run_identity, run_key,
                                       sync_figures)

SIZE, K, CLASSES, SUBSET = 64, 4, 4, 16
TRAIN_IDS = [f"train{i:02d}" for i in range(8)]
VAL_IDS = [f"val{i:02d}" for i in range(4)]
# seconds per table (clip, flow, codes); codes may run a little short, as EnCodec's can
LENGTHS = {**{v: (6.0, 6.0, 6.0) for v in TRAIN_IDS + VAL_IDS}, "train03": (7.0, 7.0, 6.9), "val01": (5.5, 5.5, 5.5),
           "short": (1.5, 1.5, 1.5)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """``{table: path}`` of one shard per table, plus each clip's class and raw arrays."""
    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    patterns = rng.standard_normal((CLASSES, 768)) * 2
    paths = {t: folder / t / "s0000.parquet" for t in ("visual", "motion", "codes")}
    raw, labels = {}, {}
    with ShardWriter(paths["visual"], "visual", [pa.field("frame", pa.int32()), pa.field("time", pa.float32()),
                     pa.field("tokens", pa.fixed_shape_tensor(pa.float16(), [50, 768]))], {}) as clip_w, \
         ShardWriter(paths["motion"], "motion", [pa.field("frame", pa.int32()), pa.field("time", pa.float32()),
                     pa.field("magnitude", pa.fixed_shape_tensor(pa.uint8(), [SIZE, SIZE])),
                     pa.field("scale", pa.float32())], {}, compression="zstd") as flow_w, \
         ShardWriter(paths["codes"], "codes", [pa.field("frame", pa.int32()),
                     pa.field("codes", pa.fixed_shape_tensor(pa.int16(), [K]))], {}) as codes_w:
        for i, (video_id, (sv, sm, sc)) in enumerate(LENGTHS.items()):
            y = labels[video_id] = i % CLASSES
            nv, nm, nc = round(sv * 2), round(sm * 4), round(sc * 50)
            tokens = (rng.standard_normal((nv, 50, 768)) + patterns[y]).astype(np.float16)
            magnitude = rng.integers(0, 256, (nm, SIZE, SIZE), dtype=np.uint8)
            scale = rng.uniform(0.5, 5.0, nm).astype(np.float32)
            codes = (y * SUBSET + rng.integers(0, SUBSET, (nc, K))).astype(np.int16)
            clip_w.write_clip(video_id, {"frame": np.arange(nv, dtype=np.int32),
                                         "time": np.arange(nv, dtype=np.float32) / 2, "tokens": tensor_column(tokens)})
            flow_w.write_clip(video_id, {"frame": np.arange(nm, dtype=np.int32),
                                         "time": np.arange(nm, dtype=np.float32) / 4,
                                         "magnitude": tensor_column(magnitude), "scale": scale})
            codes_w.write_clip(video_id, {"frame": np.arange(nc, dtype=np.int32), "codes": tensor_column(codes)})
            raw[video_id] = {"visual": tokens, "motion": dequantize(magnitude, scale), "codes": codes}
    return {"paths": paths, "raw": raw, "labels": labels}


def dataset(shards, ids, *, train, seconds=2.0, seed=0, rates=None, **kwargs):
    p = shards["paths"]
    return SegmentDataset([p["visual"]], [p["motion"]], [p["codes"]], ids, segment_seconds=seconds, train=train,
                          seed=seed, rates=rates or RATES, **kwargs)


RATES = StreamRates(visual_fps=2, motion_fps=4, code_rate=50, motion_size=SIZE)


def identity_of(train_params: TrainParams) -> dict:
    """A run identity as the experiment makes it, for runs of ``train_params`` on the test cache."""
    return run_identity(ModelParams(size="tiny"), train_params, FeaturesParams(), SplitParams(), ["test"],
                        "test data", "test code")


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return V2MModel(tiny_config(motion_size=SIZE, **overrides))


# -- data ---------------------------------------------------------------------------------------


def test_segments_have_exact_shapes_and_aligned_rows(shards):
    raw = shards["raw"]
    for seconds in (2.0, 1.5):
        data = dataset(shards, TRAIN_IDS, train=True, seconds=seconds, seed=3)
        nv, nm, t = int(2 * seconds), int(4 * seconds), int(50 * seconds)
        starts = set()
        for epoch in range(6):
            for index in range(len(data)):
                item = data[(epoch, index)]
                assert item["visual"].shape == (nv, 50, 768) and item["visual"].dtype == torch.float32
                assert item["motion"].shape == (nm, SIZE, SIZE) and item["motion"].dtype == torch.float32
                assert item["codes"].shape == (K, t) and item["codes"].dtype == torch.int64
                s = item["start"]
                assert (2 * s) == int(2 * s)  # on the 0.5 s grid
                r = raw[item["video_id"]]
                a = int(2 * s)
                assert np.array_equal(item["visual"].numpy(), r["visual"][a:a + nv].astype(np.float32))
                assert np.array_equal(item["motion"].numpy(), r["motion"][2 * a:2 * a + nm])
                assert np.array_equal(item["codes"].numpy(), r["codes"][25 * a:25 * a + t].T)
                starts.add((item["video_id"], s))
        # train03's codes end at 6.9 s (its video at 7 s): the codes bound its last start
        last = {2.0: 4.5, 1.5: 5.0}[seconds]
        assert data.max_start[data.video_ids.index("train03")] / 2 == last
        assert data.max_start[data.video_ids.index("train00")] / 2 == 6.0 - seconds
        assert max(s for v, s in starts if v == "train03") <= last


def test_eval_segments_tile_each_clip_and_short_clips_are_skipped(shards, caplog):
    with caplog.at_level(logging.WARNING, logger="v2m.train"):
        data = dataset(shards, VAL_IDS + ["short"], train=False)
    warnings = [r for r in caplog.records if "short" in r.getMessage()]
    assert len(warnings) == 1 and data.skipped == ["short"]
    assert "short" not in data.video_ids
    per_clip = {}
    for i in range(len(data)):
        item = data[i]
        per_clip.setdefault(item["video_id"], []).append(item)
    assert set(per_clip) == set(VAL_IDS)
    for video_id, items in per_clip.items():
        seconds = min(LENGTHS[video_id])
        assert [it["start"] for it in items] == [2.0 * j for j in range(int(seconds // 2))]
        codes = np.concatenate([it["codes"].numpy() for it in items], axis=1)
        assert np.array_equal(codes, shards["raw"][video_id]["codes"][:codes.shape[1]].T)
    assert len(per_clip["val01"]) == 2 and len(data) == 3 * 3 + 2  # 5.5 s holds two 2 s segments
    assert [dataset(shards, VAL_IDS, train=False)[i]["start"] for i in range(3)] == [0.0, 2.0, 4.0]


def test_training_starts_are_reproducible_and_workers_give_the_same_batches(shards):
    a, b = dataset(shards, TRAIN_IDS, train=True, seed=7), dataset(shards, TRAIN_IDS, train=True, seed=7)
    other = dataset(shards, TRAIN_IDS, train=True, seed=8)
    keys = [(e, i) for e in range(3) for i in range(len(a))]
    assert [a.locate(k) for k in keys] == [b.locate(k) for k in keys]
    assert [a.locate(k) for k in keys] != [other.locate(k) for k in keys]
    assert [a.locate((0, i)) for i in range(8)] != [a.locate((1, i)) for i in range(8)]  # a new start per epoch

    def batches(workers, start_batch=0):
        loader = make_loader(a, 3, shuffle=True, seed=5, num_workers=workers, infinite=True, start_batch=start_batch)
        return [batch for _, batch in zip(range(7), loader)]

    serial, parallel, skipped = batches(0), batches(2), batches(0, start_batch=4)
    for x, y in zip(serial, parallel):
        assert x["video_id"] == y["video_id"] and torch.equal(x["start"], y["start"])
        assert torch.equal(x["visual"], y["visual"]) and torch.equal(x["motion"], y["motion"])
        assert torch.equal(x["codes"], y["codes"])
    # 7 batches of 3 span three epochs of 8 clips; every epoch visits every clip once
    ids = [v for batch in serial for v in batch["video_id"]]
    assert sorted(ids[:8]) == sorted(TRAIN_IDS) and sorted(ids[8:16]) == sorted(TRAIN_IDS)
    assert [x["video_id"] for x in serial[4:]] == [x["video_id"] for x in skipped[:3]]  # resuming skips exactly


def test_without_motion_the_flow_table_is_never_opened(shards, tmp_path):
    p = shards["paths"]
    data = SegmentDataset([p["visual"]], [tmp_path / "missing.parquet"], [p["codes"]], VAL_IDS, segment_seconds=2,
                          train=False, rates=RATES, use_motion=False)
    batch = next(iter(make_loader(data, 4, shuffle=False)))
    assert batch["motion"] is None and batch["visual"].shape == (4, 4, 50, 768)
    model = tiny_model(use_motion=False)
    assert math.isfinite(held_out_ce(model, data, 4))


def test_the_feature_rates_reach_the_datasets_and_the_model(shards):
    """A cache made at other rates is read at those rates and coded with matching temporal codes."""
    from pipeline.model.builder import model_config
    from pipeline.train.experiment import segment_sets

    paths = {t: [shards["paths"][t]] for t in ("visual", "motion", "codes")}
    rates = StreamRates(visual_fps=1, motion_fps=2, code_rate=50, motion_size=SIZE)
    sets = segment_sets(paths, SplitParams(val_fraction=0.3, test_fraction=0.0), 2.0, 0, True, rates)
    item = sets["held_out"][0]
    assert item["visual"].shape[0] == 2 and item["motion"].shape[0] == 4 and item["codes"].shape[1] == 100
    config = model_config(ModelParams(size="tiny"), rates)
    assert (config.visual_fps, config.motion_fps) == (1.0, 2.0)


def test_a_rebuilt_feature_cache_or_new_code_gets_a_new_run_key(shards, tmp_path):
    """Checkpoints resume only into the same run: same params on new feature bytes or code must not resume."""
    paths = {table: [path] for table, path in shards["paths"].items()}
    copy = tmp_path / "codes" / "s0000.parquet"
    copy.parent.mkdir()
    shutil.copy(paths["codes"][0], copy)
    fingerprint = data_fingerprint(paths)
    assert data_fingerprint({**paths, "codes": [copy]}) == fingerprint     # same bytes, same data
    blob = bytearray(copy.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    copy.write_bytes(bytes(blob))
    rebuilt = data_fingerprint({**paths, "codes": [copy]})
    assert rebuilt != fingerprint
    settings = (ModelParams(size="tiny"), TrainParams(), FeaturesParams(), SplitParams(), ["s0000"])
    code = code_fingerprint()
    assert code == code_fingerprint() and len(code) == 64

    def key(*args):
        return run_key(run_identity(*args))

    assert key(*settings, fingerprint, code) == key(*settings, fingerprint, code)
    assert key(*settings, rebuilt, code) != key(*settings, fingerprint, code)
    assert key(*settings, fingerprint, "other code") != key(*settings, fingerprint, code)
    assert key(ModelParams(size="tiny"), TrainParams(), FeaturesParams(), SplitParams(val_fraction=0.3),
               ["s0000"], fingerprint, code) != key(*settings, fingerprint, code)


def test_derangement_moves_every_segment_to_another_video():
    rng = np.random.default_rng(0)
    for trial in range(50):
        videos = [f"v{int(x)}" for x in rng.integers(0, rng.integers(2, 8), rng.integers(2, 30))]
        counts = np.unique(videos, return_counts=True)[1]
        if 2 * counts.max() > len(videos):
            continue
        perm = derangement_of_segments(videos, seed=trial)
        assert sorted(perm) == list(range(len(videos)))
        assert all(videos[p] != v for p, v in zip(perm, videos))


def test_held_out_ce_is_exact_per_token(shards):
    data = dataset(shards, VAL_IDS, train=False)
    model = tiny_model().eval()
    per_segment = []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            per_segment.append(float(model(item["visual"][None], item["motion"][None], item["codes"][None]).loss))
    # every segment has K * T valid tokens, so the per-token mean is the mean of per-segment means
    expected = float(np.mean(per_segment))
    assert held_out_ce(model, data, 1) == pytest.approx(expected, rel=1e-6)
    assert held_out_ce(model, data, 4) == pytest.approx(expected, rel=1e-6)  # 11 segments: a short last batch


def test_event_frames_are_the_onset_frame_and_the_next():
    assert event_frames([0.25], 0.0, 100, 50) == [12, 13]          # 0.25 s = code frame 12.5: its frame is 12
    assert event_frames([4.5, 3.9, 6.0], 4.0, 100, 50) == [25, 26]  # only events inside [4, 6)
    assert event_frames([1.99], 0.0, 100, 50) == [99]               # the next frame is past the segment
    assert event_frames([0.5, 0.52], 0.0, 100, 50) == [25, 26, 27]


@pytest.mark.parametrize("aligned", [False, True])
def test_sync_and_event_gains_are_the_shifted_minus_true_cross_entropy(shards, aligned):
    """By hand: each segment's motion rolled by half its maps, scored by the same model, per-token CE
    over all code frames (sync_gain) and over the event onset frames (event_gain)."""
    data = dataset(shards, VAL_IDS, train=False)
    model = tiny_model(aligned_condition=aligned).eval()
    if aligned:
        with torch.no_grad():
            for p in model.aligned.parameters():
                p.normal_(0, 0.2)
    events = {"val00": [0.25, 3.5], "val02": [4.75]}
    sums = np.zeros((2, 2))   # [all / event, true / shifted]
    counts = np.zeros(2)
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            codes = item["codes"][None]
            frames = event_frames(events.get(item["video_id"], []), item["start"], codes.shape[2], 50)
            for j, motion in enumerate((item["motion"], torch.roll(item["motion"], item["motion"].shape[0] // 2, 0))):
                logits = model(item["visual"][None], motion[None], codes).logits[0]
                nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes[0].flatten(),
                                                        reduction="none").reshape(codes.shape[1:])
                sums[0, j] += float(nll.sum())
                sums[1, j] += float(nll[:, frames].sum())
            counts += [codes.numel(), codes.shape[1] * len(frames)]
    figures = sync_figures(model, data, 3, events)
    assert counts[1] == 4 * 6         # 3 events in three 2 s segments, 2 frames each, K = 4 codebooks
    assert figures["sync_gain"] == pytest.approx((sums[0, 1] - sums[0, 0]) / counts[0], abs=1e-5)
    assert figures["event_gain"] == pytest.approx((sums[1, 1] - sums[1, 0]) / counts[1], abs=1e-5)
    assert figures["held_out_events"] == 3
    if aligned:   # random aligned weights: the timing of the motion matters (through Z alone it is tiny)
        assert figures["sync_gain"] != 0
    none = sync_figures(model, data, 3, None)
    assert none["event_gain"] is None and "no event labels" in none["event_reason"]
    assert none["sync_gain"] == figures["sync_gain"]


# -- schedule and EMA -------------------------------------------------------------------------------


def test_lr_schedule_warms_up_linearly_then_decays_to_zero_by_cosine():
    warmup, total = 10, 110
    assert lr_factor(1, warmup, total) == pytest.approx(0.1)
    assert lr_factor(5, warmup, total) == pytest.approx(0.5)
    assert lr_factor(warmup, warmup, total) == pytest.approx(1.0)           # warmup end: the peak
    assert lr_factor(60, warmup, total) == pytest.approx(0.5)               # halfway down the cosine
    assert lr_factor(35, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(total, warmup, total) == pytest.approx(0.0, abs=1e-12)  # zero at max_steps
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-3)
    sched = make_scheduler(opt, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[warmup - 1] == pytest.approx(2e-3) and lrs[59] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))
    assert all(a > b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1:]))


def test_ema_is_bias_corrected():
    layer = torch.nn.Linear(2, 1)
    ema = EMA(layer, 0.9)
    weights = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[-1.0, 4.0]])]
    with torch.no_grad():
        layer.weight.copy_(weights[0])
    ema.update(layer)
    assert torch.equal(ema.averaged()["weight"], weights[0])            # one update: the weights themselves
    assert torch.allclose(ema.averaged()["bias"], layer.bias.detach())
    for w in weights[1:]:
        with torch.no_grad():
            layer.weight.copy_(w)
        ema.update(layer)
    # by hand: shadow = 0.1 * (0.81 w1 + 0.9 w2 + w3) = [0.081 + 0.27 - 0.1, -0.162 + 0 + 0.4] = [0.251, 0.238]
    # corrected by 1 - 0.9 ** 3 = 0.271
    assert torch.allclose(ema.averaged()["weight"], torch.tensor([[0.251 / 0.271, 0.238 / 0.271]]), atol=1e-6)
    assert ema.updates == 3


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = tiny_model()
    decay, keep = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert kept | decayed == set(names.values()) and not kept & decayed
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert "visual_encoder.spatial" in kept and "motion_encoder.spatial" in kept
    assert any("embed_tokens" in n for n in kept) and not any("embed_tokens" in n for n in decayed)
    assert "projection.weight" in decayed and "motion_encoder.patch_embed.weight" in decayed


# -- the loop ----------------------------------------------------------------------------------------


def params(**overrides):
    base = dict(segment_seconds=2.0, batch_size=8, grad_accum=1, max_steps=40, lr=2e-3, betas=(0.9, 0.95),
                weight_decay=0.01, warmup_steps=4, clip_grad=1.0, ema_decay=0.8, eval_every=10, log_every=3,
                checkpoint_every=20, num_workers=0, seed=0)
    return TrainParams(**{**base, **overrides})


def test_training_learns_logs_to_dvclive_and_exports_the_best_ema_weights(shards, tmp_path):
    train_set, val_set = dataset(shards, TRAIN_IDS, train=True), dataset(shards, VAL_IDS, train=False)
    model = tiny_model(condition_dropout=0.1)
    before = held_out_ce(model, val_set, 8)
    tracked = ["projection.bias", "decoder.lm_heads.0.weight"]
    seen = {n: [] for n in tracked}

    def record(step, info):
        for n in tracked:
            seen[n].append(info["model"].get_parameter(n).detach().clone())

    p = params()
    summary = train(model, train_set, val_set, p, identity=identity_of(p), work_dir=tmp_path / "work", live_dir=tmp_path / "live",
                    export_dir=tmp_path / "model", progress=False, callback=record)
    assert summary["steps"] == 40 and summary["resumed_from"] == 0 and summary["tokens_per_s"] > 0
    assert summary["best_val_loss"] < before - 2.0          # from ln 2048 = 7.6 towards ln 16 = 2.8

    # DVCLive: one row per log_every interval, for every metric; metrics.json has the latest values
    live = tmp_path / "live"
    rows = {}
    for name in ("loss", "lr", "tokens_per_s", "val_loss"):
        lines = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert lines[0] == f"step\t{name}"
        rows[name] = [[float(x) for x in line.split("\t")] for line in lines[1:]]
    assert [int(r[0]) for r in rows["loss"]] == list(range(3, 40, 3)) and len(rows["loss"]) == 40 // 3
    assert [int(r[0]) for r in rows["lr"]] == [int(r[0]) for r in rows["tokens_per_s"]] == list(range(3, 40, 3))
    assert [int(r[0]) for r in rows["val_loss"]] == [12, 21, 30]   # evals at 10, 20, 30 land in those intervals
    assert rows["loss"][-1][1] < rows["loss"][0][1] - 2.0
    assert rows["lr"][0][1] == pytest.approx(2e-3 * 3 / 4)
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 39 and metrics["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert not (live / "dvc.yaml").exists()

    # the export holds the best EMA weights, recomputed here by hand from the weights of every step
    assert summary["best_step"] in (10, 20, 30, 40)
    exported = V2MModel.from_pretrained(tmp_path / "model")
    for n in tracked:
        history = seen[n][:summary["best_step"]]
        d = p.ema_decay
        shadow = sum((1 - d) * d ** (len(history) - 1 - i) * w for i, w in enumerate(history))
        expected = shadow / (1 - d ** len(history))
        assert torch.allclose(exported.get_parameter(n), expected, atol=1e-5)
        assert not torch.allclose(exported.get_parameter(n), history[-1], atol=1e-4)  # not the raw weights
    assert len(checkpoints(tmp_path / "work")) == 2

    # the video carries information: another clip's video makes the codes much less likely
    true_ce = held_out_ce(exported, val_set, 8)
    shuffled_ce = held_out_ce(exported, val_set, 8, shuffle_video=True)
    assert true_ce == pytest.approx(summary["best_val_loss"], rel=1e-5)
    assert shuffled_ce > true_ce + 0.5


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result(shards, tmp_path):
    train_set, val_set = dataset(shards, TRAIN_IDS, train=True), dataset(shards, VAL_IDS, train=False)
    # accumulation, condition dropout and the model's own dropout all in play
    p = params(max_steps=12, grad_accum=2, batch_size=4, eval_every=4, log_every=2, checkpoint_every=4, ema_decay=0.9)
    config = dict(condition_dropout=0.5)

    def run(folder, callback=None, p=p):
        return train(tiny_model(**config), train_set, val_set, p, identity=identity_of(p),
                     work_dir=folder / "work", live_dir=folder / "live",
                     export_dir=folder / "model", progress=False, callback=callback)

    whole = run(tmp_path / "a")

    def kill(step, info):
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "b", kill)
    assert [c.name for c in checkpoints(tmp_path / "b" / "work")] == ["step_00000004", "step_00000008"]
    assert not (tmp_path / "b" / "model").exists()
    shutil.rmtree(tmp_path / "b" / "live")       # as `dvc repro` does to a stage's outputs before it runs
    resumed = run(tmp_path / "b")
    assert resumed["resumed_from"] == 8 and resumed["steps"] == 12
    # exact, not close: the weights, optimizer, EMA, RNG streams, data position and dropout masks are
    # all restored or functions of the step, and CPU kernels at a fixed thread count are deterministic
    assert resumed["final_train_loss"] == whole["final_train_loss"]
    assert resumed["best_val_loss"] == whole["best_val_loss"]
    a, b = (V2MModel.from_pretrained(tmp_path / x / "model").state_dict() for x in "ab")
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the DVCLive history as the checkpoint left it, then the resumed steps: each step once
    for name in ("loss", "lr", "val_loss"):
        la = (tmp_path / "a" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        lb = (tmp_path / "b" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in la] == [r.split("\t")[0] for r in lb]
        assert la == lb
        assert len(la) - 1 == (12 // 4 if name == "val_loss" else 12 // 2)
    # a finished run called again only re-exports
    again = run(tmp_path / "b")
    assert again["resumed_from"] == 12 and again["best_val_loss"] == pytest.approx(whole["best_val_loss"])
    # other params: the old checkpoints are stale, never resumed
    other = run(tmp_path / "b", p=params(**{**p.__dict__, "lr": 1e-3, "max_steps": 2, "checkpoint_every": 100}))
    assert other["resumed_from"] == 0 and [c.name for c in checkpoints(tmp_path / "b" / "work")] == ["step_00000002"]


def test_the_run_identity_holds_what_the_run_learns_and_nothing_else(shards, tmp_path):
    """One definition of a run: watching keys resume the same run, learning keys start a new one."""
    base = run_identity(ModelParams(size="tiny"), TrainParams(), FeaturesParams(), SplitParams(), ["s0000"], "d", "c")
    for watching in ({"log_every": 3}, {"checkpoint_every": 7}, {"num_workers": 2}):
        same = run_identity(ModelParams(size="tiny"), TrainParams(**watching), FeaturesParams(), SplitParams(),
                            ["s0000"], "d", "c")
        assert run_key(same) == run_key(base), watching
    for learning in ({"lr": 2e-3}, {"batch_size": 4}, {"max_steps": 301}, {"eval_every": 25}, {"seed": 1}):
        other = run_identity(ModelParams(size="tiny"), TrainParams(**learning), FeaturesParams(), SplitParams(),
                             ["s0000"], "d", "c")
        assert run_key(other) != run_key(base), learning
    assert run_key(run_identity(ModelParams(size="tiny", use_motion=False), TrainParams(), FeaturesParams(),
                                SplitParams(), ["s0000"], "d", "c")) != run_key(base)
    assert json.loads(json.dumps(base)) == base          # compares equal to itself read back from run.json

    # the loop keeps the checkpoints of the same identity whatever log_every is, and drops another's
    train_set, val_set = dataset(shards, TRAIN_IDS, train=True), dataset(shards, VAL_IDS, train=False)
    p = params(max_steps=4, checkpoint_every=2, eval_every=2, log_every=1)

    def run(q):
        return train(tiny_model(), train_set, val_set, q, identity=identity_of(q), work_dir=tmp_path / "work",
                     live_dir=tmp_path / "live", export_dir=tmp_path / "model", progress=False)

    run(p)
    assert run(params(**{**p.__dict__, "log_every": 2}))["resumed_from"] == 4
    assert run(params(**{**p.__dict__, "lr": 1e-4}))["resumed_from"] == 0


def test_train_segments_and_generate_windows_lie_on_one_time_grid(shards):
    """Changing features.visual.fps / features.motion.fps moves training starts and generation windows together."""
    from pipeline.config import MotionFeatureParams, GenerateParams, VisualFeatureParams
    from pipeline.errors import UserError
    from pipeline.features.recipe import FeatureRecipe
    from pipeline.generate import window_steps_of

    for clip_fps, flow_fps in ((2, 4), (4, 8), (1, 3), (5, 4)):
        features = FeaturesParams(visual=VisualFeatureParams(fps=clip_fps), motion=MotionFeatureParams(fps=flow_fps, size=SIZE))
        rates = StreamRates.of(features)
        recipe = FeatureRecipe(features, segment_seconds=2.0)
        for seconds in (0.2, 0.25, 0.5, 1.0, 2.0):
            try:
                steps = rates.grid_steps(seconds, "x")
            except UserError:
                steps = None
            try:
                data = dataset(shards, VAL_IDS, train=False, seconds=seconds, rates=rates)
            except UserError:
                data = None
            try:
                window, _ = window_steps_of(GenerateParams(window_seconds=seconds, prompt_seconds=0.0), recipe)
            except UserError:
                window = None
            # both accept exactly the lengths on the grid, and agree on the code frames in them
            assert (data is None) == (window is None) == (steps is None), (clip_fps, flow_fps, seconds)
            if data is not None:
                assert data.grid_rate == rates.grid_rate and data.frames["codes"] == window
                assert window == round(seconds * 50)
        # the grid is where all three streams start on a whole row
        grid = rates.time_grid()
        assert all(abs(grid * r - round(grid * r)) < 1e-9 for r in (clip_fps, flow_fps, 50))
    assert StreamRates.of(FeaturesParams(visual=VisualFeatureParams(fps=4), motion=MotionFeatureParams(fps=8))).time_grid() == 0.5
