"""Exact clips: video within one frame, audio sample-exact; every broken input becomes a status row."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import media
from pipeline.acquire.clip import clip_one, clip_shard
from pipeline.acquire.download import STATUS_SCHEMA as DOWNLOAD_SCHEMA
from pipeline.config import ClipParams
from pipeline.status import read_status, write_status
from pipeline.synth.scene import render_frames
from pipeline.synth.spec import sample_clip_spec
from pipeline.config import SampleParams


def test_clip_durations_are_exact(synth_set, tmp_path):
    folder, rows = synth_set
    params = ClipParams(seconds=4.5, min_seconds=2.0, fps=12, max_height=96)
    row = clip_one(folder / rows[0]["video_file"], tmp_path, rows[0]["video_id"], params)
    assert row["status"] == "ok" and row["seconds"] == 4.5
    info = media.probe(tmp_path / f"{rows[0]['video_id']}.mp4")
    assert info.video_frames == 54 == row["video_frames"]
    assert abs(info.duration - 4.5) <= 1 / 12
    assert info.height == 96 and info.width % 2 == 0 and info.audio_rate is not None
    assert len([f for _ in [0] for f in media.decode_frames(tmp_path / f"{rows[0]['video_id']}.mp4")]) == 54
    stereo, sr = media.read_wav(tmp_path / f"{rows[0]['video_id']}.44k.wav")
    mono, sr32 = media.read_wav(tmp_path / f"{rows[0]['video_id']}.32k.wav")
    assert (stereo.shape, sr) == ((2, round(4.5 * 44100)), 44100)
    assert (mono.shape, sr32) == ((1, 4.5 * 32000), 32000)
    # The clip's audio is the source's first 4.5 s, sample for sample (up to 16-bit rounding).
    source, _ = media.decode_audio(folder / rows[0]["video_file"], 44100, channels=2)
    assert np.abs(stereo - source[:, : stereo.shape[1]]).max() < 1e-3


def write_broken_inputs(raw):
    """One of each kind of bad input, plus one good video; returns {video_id: expected error class}."""
    spec = sample_clip_spec(SampleParams(seconds=3.0, seed=8), 0)
    frames = list(render_frames(spec))
    audio = np.zeros((2, 3 * 44100), dtype=np.float32)
    media.write_mp4(raw / "good0000001.mp4", frames, spec.fps, audio + 0.1 * np.sin(np.arange(3 * 44100) / 20.0))
    media.write_mp4(raw / "noaudio0001.mp4", frames, spec.fps)
    media.write_mp4(raw / "short000001.mp4", frames[:12], spec.fps, audio[:, :44100])
    (raw / "empty000001.mp4").write_bytes(b"")
    (raw / "notvideo001.mp4").write_text("this is a text file, not a video\n" * 20)
    whole = (raw / "good0000001.mp4").read_bytes()
    (raw / "truncated01.mp4").write_bytes(whole[: len(whole) // 3])
    return {"good0000001": None, "noaudio0001": "no_audio", "short000001": "too_short",
            "empty000001": "empty", "notvideo001": "unreadable", "truncated01": ("corrupt", "unreadable")}


def test_each_broken_input_gives_its_status_row_and_the_shard_goes_on(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    expected = write_broken_inputs(raw)
    write_status(raw / "status.parquet", [
        {"video_id": vid, "status": "ok", "file": f"{vid}.mp4"} for vid in expected
    ] + [{"video_id": "failedupstr", "status": "failed", "error_class": "not_found", "file": None}], DOWNLOAD_SCHEMA)
    rows = clip_shard(raw, tmp_path / "clips", ClipParams(seconds=2.0, min_seconds=2.0), progress=False)
    by_id = {row["video_id"]: row for row in read_status(tmp_path / "clips")}
    assert set(by_id) == set(expected)  # upstream failures are not retried here
    assert len(rows) == len(expected)
    for video_id, error_class in expected.items():
        row = by_id[video_id]
        if error_class is None:
            assert row["status"] == "ok"
            assert (tmp_path / "clips" / f"{video_id}.44k.wav").is_file()
        else:
            assert row["status"] == "failed", video_id
            classes = error_class if isinstance(error_class, tuple) else (error_class,)
            assert row["error_class"] in classes, (video_id, row)
            assert video_id in row["error_message"] or "mp4" in row["error_message"]
            assert not (tmp_path / "clips" / f"{video_id}.mp4").exists()


def test_short_clip_message_names_the_lengths(tmp_path):
    spec = sample_clip_spec(SampleParams(seconds=2.0, seed=8), 1)
    media.write_mp4(tmp_path / "a.mp4", render_frames(spec), spec.fps, np.zeros((2, 2 * 44100), np.float32))
    row = clip_one(tmp_path / "a.mp4", tmp_path, "a", ClipParams(seconds=30.0, min_seconds=29.0))
    assert row["error_class"] == "too_short"
    assert "2.00 s" in row["error_message"] and "clip.min_seconds is 29" in row["error_message"]


def test_clip_params_cross_check():
    from pipeline.config import build
    from pipeline.errors import ParamsError

    with pytest.raises(ParamsError, match="clip.min_seconds: must be <= clip.seconds"):
        build(ClipParams, {"seconds": 5.0, "min_seconds": 6.0}, prefix="clip")
