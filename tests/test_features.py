"""Frame sampling, Farneback motion, the Parquet store and the split: each against a known answer."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline import media
from pipeline.config import MotionFeatureParams, SampleParams, SplitParams
from pipeline.features.motion import dequantize, flow_kwargs, flow_magnitudes, quantize
from pipeline.features.store import FeatureReader, FeatureShard, ShardWriter, tensor_column
from pipeline.split import assign, ids_in, split_of
from pipeline.synth.scene import render_frames
from pipeline.synth.spec import sample_clip_spec


def texture(seed: int = 0, size: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur((rng.random((size, size)) * 255).astype(np.uint8), (0, 0), 2)
    return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX)


@pytest.mark.parametrize("dx, dy", [(3, 4), (0, 2), (-5, 0)])
def test_flow_magnitude_of_a_translating_pattern_is_the_shift(dx, dy):
    pattern = texture()
    frames = np.stack([pattern[60 + dy * i: 60 + dy * i + 224, 60 + dx * i: 60 + dx * i + 224] for i in range(4)])
    maps = flow_magnitudes(frames, **flow_kwargs(MotionFeatureParams()))
    assert maps.shape == (4, 224, 224)
    # map 0 has no previous frame: it repeats the first interval's motion, so steady motion shows no
    # change at the clip's start (a zero there read as a burst of motion, an event at every clip start)
    assert np.array_equal(maps[0], maps[1])
    interior = maps[1:, 32:-32, 32:-32]
    assert np.median(interior) == pytest.approx(np.hypot(dx, dy), abs=0.05)


def test_a_single_frame_has_a_zero_motion_map():
    maps = flow_magnitudes(texture(2)[None, :224, :224])
    assert maps.shape == (1, 224, 224) and not maps.any()


def test_flow_of_a_static_video_is_about_zero():
    frames = np.repeat(texture(1)[None, :224, :224], 6, axis=0)
    maps = flow_magnitudes(frames)
    assert maps.mean() < 0.01 and maps.max() < 0.25  # Farneback's fit leaves a little noise at the borders


def test_flow_is_computed_at_the_requested_size():
    pattern = texture(2, 500)
    frames = np.stack([pattern[50: 50 + 400, 50 + 8 * i: 50 + 8 * i + 400] for i in range(3)])
    maps = flow_magnitudes(frames, size=100)
    assert maps.shape == (3, 100, 100)
    assert np.median(maps[1:, 16:-16, 16:-16]) == pytest.approx(2.0, abs=0.1)  # 8 px at 400 -> 2 px at 100


def test_quantized_flow_round_trip_error_is_bounded():
    rng = np.random.default_rng(3)
    maps = rng.gamma(2.0, 1.5, size=(5, 32, 32)).astype(np.float32)
    maps[2] = 0.0
    q, scale = quantize(maps)
    assert q.dtype == np.uint8 and scale.shape == (5,)
    back = dequantize(q, scale)
    assert np.all(np.abs(back - maps) <= scale[:, None, None] / 510 + 1e-6)
    assert np.all(back[2] == 0)


def test_sample_frames_counts_and_picks_from_one_decode(tmp_path):
    spec = sample_clip_spec(SampleParams(seconds=3.0, fps=12), 0)
    all_frames = list(render_frames(spec))
    path = media.write_mp4(tmp_path / "v.mp4", all_frames, spec.fps)
    decoded = [frame for _, frame in media.decode_frames(path)]
    sampled = media.sample_frames(path, rgb_fps=2, gray_fps=4)
    assert sampled.rgb.shape == (6, 120, 160, 3) and sampled.gray.shape == (12, 120, 160)
    for i in range(6):
        assert np.array_equal(sampled.rgb[i], decoded[6 * i])
    gray_reference = cv2.cvtColor(decoded[3], cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(sampled.gray[1].astype(int) - gray_reference).mean() < 2.0  # BT.601 luma, rounding apart
    part = media.sample_frames(path, gray_fps=4, seconds=2.0)
    assert part.rgb is None and part.gray.shape[0] == 8


def test_sample_frames_of_an_odd_frame_rate(tmp_path):
    spec = sample_clip_spec(SampleParams(seconds=2.0, fps=30), 1)
    path = media.write_mp4(tmp_path / "v.mp4", render_frames(spec), 30)
    sampled = media.sample_frames(path, rgb_fps=2, gray_fps=4)
    assert sampled.rgb.shape[0] == 4 and sampled.gray.shape[0] == 8
    with pytest.raises(media.MediaError, match="video ends after"):
        media.sample_frames(path, gray_fps=4, seconds=5.0)


def test_parquet_round_trip_is_exact_and_zero_copy(tmp_path):
    rng = np.random.default_rng(4)
    clips = {f"clip{i:07d}": rng.standard_normal((3 + i, 50, 8)).astype(np.float16) for i in range(3)}
    path = tmp_path / "s0000.parquet"
    with ShardWriter(path, "visual", [pa.field("frame", pa.int32()),
                                    pa.field("tokens", pa.fixed_shape_tensor(pa.float16(), [50, 8]))],
                     {"model": "test", "params": {"fps": 2}}) as writer:
        for video_id, tokens in clips.items():
            writer.write_clip(video_id, {"frame": np.arange(len(tokens), dtype=np.int32),
                                         "tokens": tensor_column(tokens)})
    shard = FeatureShard(path)
    assert shard.metadata["model"] == "test" and shard.metadata["params"] == {"fps": 2}
    assert shard.ids() == list(clips)
    for video_id, tokens in clips.items():
        got = shard[video_id]
        assert got["tokens"].dtype == np.float16 and np.array_equal(got["tokens"], tokens)
        assert np.array_equal(got["frame"], np.arange(len(tokens)))
        assert not got["tokens"].flags.owndata  # a view on Arrow's buffer, not a copy
    assert pa.parquet.ParquetFile(path).num_row_groups == 3


def test_reader_spans_listed_shards_only(tmp_path):
    for shard, ids in (("s0000", ["aaaaaaaaaaa"]), ("s0001", ["bbbbbbbbbbb"]), ("s0002", ["ccccccccccc"])):
        with ShardWriter(tmp_path / f"{shard}.parquet", "codes",
                         [pa.field("codes", pa.fixed_shape_tensor(pa.int16(), [4]))], {}) as writer:
            for video_id in ids:
                writer.write_clip(video_id, {"codes": tensor_column(np.ones((5, 4), np.int16))})
    reader = FeatureReader([tmp_path / "s0000.parquet", tmp_path / "s0002.parquet"])
    assert reader.ids() == ["aaaaaaaaaaa", "ccccccccccc"]
    assert "bbbbbbbbbbb" not in reader
    assert reader["ccccccccccc"]["codes"].shape == (5, 4)


def test_reader_cache_keeps_recent_clips_within_its_budget(tmp_path, monkeypatch):
    ids = [f"clip{i:07d}" for i in range(4)]
    with ShardWriter(tmp_path / "s0000.parquet", "codes",
                     [pa.field("codes", pa.fixed_shape_tensor(pa.int16(), [4]))], {}) as writer:
        for n, video_id in enumerate(ids):
            writer.write_clip(video_id, {"codes": tensor_column(np.full((100, 4), n, np.int16))})
    reads = []
    original = FeatureShard.__getitem__
    monkeypatch.setattr(FeatureShard, "__getitem__", lambda self, v: reads.append(v) or original(self, v))
    clip_bytes = 100 * 4 * 2                    # one clip: codes int16 [100, 4]
    reader = FeatureReader([tmp_path / "s0000.parquet"], cache_bytes=2 * clip_bytes)
    first = reader[ids[0]]
    assert reader[ids[0]] is first and reads == [ids[0]]                 # served from memory
    reader[ids[1]], reader[ids[0]], reader[ids[2]]                         # ids[1] is now the oldest
    assert reads == ids[:3]
    assert np.array_equal(reader[ids[0]]["codes"], np.zeros((100, 4))) and reads == ids[:3]
    reader[ids[1]]                                                         # was dropped: read again
    assert reads == [*ids[:3], ids[1]]
    uncached = FeatureReader([tmp_path / "s0000.parquet"])
    uncached[ids[3]], uncached[ids[3]]
    assert reads[-2:] == [ids[3], ids[3]]


def test_killed_writer_leaves_no_file(tmp_path):
    path = tmp_path / "s0000.parquet"
    with pytest.raises(RuntimeError):
        with ShardWriter(path, "codes", [pa.field("codes", pa.fixed_shape_tensor(pa.int16(), [4]))], {}) as writer:
            writer.write_clip("aaaaaaaaaaa", {"codes": tensor_column(np.ones((5, 4), np.int16))})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_split_is_stable_and_near_the_fractions():
    ids = [f"id{i:09d}" for i in range(4000)]
    fifteen = SplitParams(val_fraction=0.15, test_fraction=0.15)
    groups = assign(ids, fifteen)
    assert abs(len(groups["test"]) / 4000 - 0.15) < 0.03 and abs(len(groups["val"]) / 4000 - 0.15) < 0.03
    assert split_of("abcdefghijk", fifteen) == split_of("abcdefghijk", fifteen)
    # Adding ids never moves the old ones.
    assert assign(ids[:100], fifteen)["test"] == [i for i in groups["test"] if int(i[2:]) < 100]
    assert split_of("abcdefghijk", SplitParams(val_fraction=0.0, test_fraction=0.0)) == "train"
    assert ids_in(ids, fifteen, "test") == groups["test"] and ids_in(ids, fifteen, "train") == groups["train"]


def test_broken_or_short_clips_give_status_rows_and_the_rest_goes_on(tmp_path):
    from pipeline.config import CodesFeatureParams
    from pipeline.features.codec import encodec_32khz_config, random_codec
    from pipeline.features.extract import ClipInput, codes_table, extract_tables

    spec = sample_clip_spec(SampleParams(seconds=3.0, fps=12), 2)
    good = media.write_mp4(tmp_path / "good.mp4", render_frames(spec), spec.fps)
    short = media.write_mp4(tmp_path / "short.mp4", list(render_frames(spec))[:12], spec.fps)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    clips = [ClipInput("good0000001", good, 3.0), ClipInput("short000001", short, 3.0),
             ClipInput("broken00001", tmp_path / "broken.mp4", 3.0)]
    rows = {r["video_id"]: r for r in extract_tables(clips, motion=MotionFeatureParams(size=32),
                                                     motion_out=tmp_path / "flow.parquet", progress=False)}
    assert rows["good0000001"]["status"] == "ok" and rows["good0000001"]["rows"] == 12
    assert rows["short000001"]["status"] == "failed" and "video ends after 1.00 s" in rows["short000001"]["error_message"]
    assert rows["broken00001"]["status"] == "failed" and "broken.mp4" in rows["broken00001"]["error_message"]
    assert FeatureShard(tmp_path / "flow.parquet").ids() == ["good0000001"]

    media.write_wav(tmp_path / "audio" / "good0000001.wav", np.zeros((1, 32000), np.float32), 32000)
    media.write_wav(tmp_path / "audio" / "stereo00001.wav", np.zeros((2, 32000), np.float32), 32000)
    codec = random_codec(seed=0, config=encodec_32khz_config(num_filters=4, hidden_size=16, codebook_size=16,
                                                             num_lstm_layers=1))
    code_rows = {r["video_id"]: r for r in codes_table(["good0000001", "stereo00001", "missing0001"], tmp_path / "audio",
                                                       tmp_path / "codes.parquet", CodesFeatureParams(), codec,
                                                       progress=False)}
    assert code_rows["good0000001"]["status"] == "ok" and code_rows["good0000001"]["rows"] == 50
    assert code_rows["stereo00001"]["status"] == "failed" and "mono" in code_rows["stereo00001"]["error_message"]
    assert code_rows["missing0001"]["status"] == "failed"
    assert FeatureShard(tmp_path / "codes.parquet").ids() == ["good0000001"]
