"""Sync metrics (AV-Align, LORIS beat hit/coverage) and FD over PaSST: known answers, and evaluate with/without videos."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from pipeline.media import write_mp4, write_wav
from pipeline.metrics import sync
from pipeline.metrics.evaluate import _fd_passt, evaluate_pairs
from pipeline.metrics.fad import frechet_distance
from pipeline.metrics.passt import save_random_passt

FPS, SIDE, SECONDS, RATE = 10, 64, 4.0, 22050
JUMPS = (0.5, 1.5, 2.5, 3.2)          # times (s) at which the square jumps: frame index * 1/FPS


def test_av_align_of_constructed_peak_lists():
    # fps 4: a hit is strictly within 0.25 s of a video peak; each audio peak counts once.
    assert sync.av_align([1.2, 2.0, 3.9], [1.0, 2.1], 4) == pytest.approx(2 / (3 + 2 - 2))
    assert sync.av_align([1.25], [1.0], 4) == 0.0          # exactly one frame away: not a hit
    # Two audio peaks on one video peak both count, so the published "IoU" can exceed 1: 2 / (2 + 1 - 2).
    assert sync.av_align([1.0, 1.1], [1.0], 4) == 2.0
    assert sync.av_align([], [1.0, 2.0], 4) == 0.0
    assert sync.av_align([], [], 4) is None                # 0 / 0: no score rather than a made-up one


def test_video_peaks_are_strict_local_maxima_at_frame_times():
    assert sync.video_peaks(np.array([1.0, 3.0, 2.0, 2.0, 5.0, 1.0]), 2.0).tolist() == [0.5, 2.0]
    assert sync.video_peaks(np.array([1.0, 2.0, 2.0, 1.0]), 2.0).size == 0      # a plateau is no strict maximum
    assert sync.video_peaks(np.array([1.0, 2.0]), 2.0).size == 0


def test_beat_hit_and_coverage_in_one_second_bins():
    # generated bins [1, 1, 0, 0]; reference [1, 0, 1, 1, 0] cut to 4 -> [1, 0, 1, 1]; both: bin 0.
    hit, coverage = sync.beat_hit_coverage([0.2, 1.5], 4.0, [0.1, 0.9, 2.5, 3.2], 5.0)
    assert (hit, coverage) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert sync.f1(hit, coverage) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert sync.beat_bins([0.0, 0.99, 3.5], 3.5).tolist() == [True, False, False, True]
    # An empty generated set: nothing hit, nothing covered, F1 0 (not a division by zero).
    assert sync.beat_hit_coverage([], 4.0, [0.1, 2.5], 4.0) == (0.0, 0.0)
    assert sync.f1(0.0, 0.0) == 0.0
    # The finer variant: 0.52 is within 50 ms of 0.50, nothing else matches.
    assert sync.onset_hit_coverage([0.50, 1.00, 2.00], [0.52, 1.2, 3.0]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert sync.onset_hit_coverage([], [0.5]) == (0.0, 0.0)


def test_fd_is_the_closed_form_on_gaussians_with_known_moments():
    def set_with(mean, variances):
        # +-a along each axis: the mean is exact and the unbiased covariance diagonal, 2 a^2 / (2 D - 1).
        d = len(variances)
        a = np.sqrt(np.asarray(variances) * (2 * d - 1) / 2)
        rows = np.concatenate([np.diag(a), -np.diag(a)]) + np.asarray(mean)
        return [rows[:d], rows[d:]]   # two "clips"

    va, vb, ma, mb = [1.0, 4.0, 0.25], [2.0, 1.0, 1.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]
    expected = sum((x - y) ** 2 for x, y in zip(ma, mb)) + sum(x + y - 2 * math.sqrt(x * y) for x, y in zip(va, vb))
    out = _fd_passt({"generated": set_with(ma, va), "reference": set_with(mb, vb)})
    assert out["fd_passt"] == pytest.approx(expected, rel=1e-9) and out["fd_passt_reason"] is None
    assert frechet_distance(np.array(ma), np.diag(va), np.array(mb), np.diag(vb)) == pytest.approx(expected)
    short = _fd_passt({"generated": [np.zeros((1, 3))], "reference": set_with(mb, vb)})
    assert short["fd_passt"] is None and "too few PaSST segments" in short["fd_passt_reason"]


# ---- a rendered video whose motion bursts line up with clicks, or not ----

def _square_video(path):
    """A textured square that sits still except for one-frame jumps at JUMPS (lossless, so still frames
    are identical and give zero flow)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    frames, x = [], 10
    jump_frames = {round(t * FPS) for t in JUMPS}
    for index in range(int(SECONDS * FPS)):
        if index in jump_frames:
            x += 8
        frame = np.full((SIDE, SIDE, 3), 90, np.uint8)
        frame[24:40, x:x + 16] = texture
        frames.append(frame)
    write_mp4(path, frames, FPS, crf=0)


def _clicks(times, seconds=SECONDS, rate=RATE):
    audio = np.zeros(int(seconds * rate), np.float32)
    rng = np.random.default_rng(1)
    for t in times:
        start = int(t * rate)
        audio[start:start + 400] += (rng.standard_normal(400) * np.exp(-np.arange(400) / 80)).astype(np.float32)
    return 0.5 * audio[None] / np.abs(audio).max()


@pytest.fixture(scope="module")
def sync_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync")
    for name in ("videos", "generated", "reference"):
        (root / name).mkdir()
    _square_video(root / "videos" / "c1.mp4")
    write_wav(root / "generated" / "c1.wav", _clicks(JUMPS), RATE)                       # on the motion
    write_wav(root / "reference" / "c1.wav", _clicks([t + 0.35 for t in JUMPS[:3]] + [0.1]), RATE)  # off it
    return root


def test_video_motion_peaks_are_the_jumps(sync_folders):
    motion = sync.video_motion(sync_folders / "videos" / "c1.mp4")
    assert motion.fps == FPS and motion.trajectory.shape == (int(SECONDS * FPS),)
    assert np.allclose(motion.peaks, JUMPS, atol=1e-9)


def test_evaluate_with_videos_scores_aligned_clicks_above_shifted_ones(sync_folders):
    summary, rows = evaluate_pairs(sync_folders / "generated", sync_folders / "reference", progress=False,
                                   videos=sync_folders / "videos")
    row = rows[0]
    assert row["video_peaks"] == len(JUMPS)
    # Clicks on the jumps: every onset within one frame of a peak (measured 1.0); shifted by 0.35 s: none.
    assert row["av_align"] >= 0.75 and row["av_align_reference"] <= 0.2
    assert summary["av_align"] == row["av_align"] and summary["av_align_reason"] is None
    assert summary["av_align_videos"] == 1
    # Beats: 4 clicks in bins 0,1,2,3 vs reference clicks in bins 0,1,2 (0.85, 1.85, 2.85) and 0 (0.1).
    assert row["beat_hit"] == pytest.approx(1.0) and row["beat_coverage"] == pytest.approx(3 / 4)
    assert row["beat_hit_50ms"] == 0.0 and summary["beat_f1_50ms"] == 0.0
    assert summary["beat_f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert summary["fd_passt"] is None and "no PaSST checkpoint" in summary["fd_passt_reason"]


def test_evaluate_without_videos_leaves_av_align_null_with_the_reason(sync_folders):
    summary, rows = evaluate_pairs(sync_folders / "generated", sync_folders / "reference", progress=False)
    assert rows[0]["av_align"] is None and rows[0]["av_align_reference"] is None and rows[0]["video_peaks"] is None
    assert summary["av_align"] is None and summary["av_align_reference"] is None
    assert "--videos" in summary["av_align_reason"] and summary["av_align_videos"] == 0
    assert summary["beat_hit"] == pytest.approx(1.0)       # the beat metrics need no video


def test_fd_passt_with_a_random_weights_checkpoint(sync_folders, tmp_path):
    checkpoint = save_random_passt(tmp_path / "passt.pt", seed=1, embed_dim=64, depth=1)
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    generated.mkdir()
    reference.mkdir()
    for index, times in enumerate(([0.5, 1.5], [0.2, 0.9, 1.5], [1.1])):
        write_wav(generated / f"c{index}.wav", _clicks(times, seconds=2.0), RATE)
        write_wav(reference / f"c{index}.wav", _clicks([t + 0.3 for t in times], seconds=2.0) * 0.3, RATE)
    same, _ = evaluate_pairs(generated, generated, passt=checkpoint, progress=False)
    other, _ = evaluate_pairs(generated, reference, passt=checkpoint, progress=False)
    assert same["fd_passt_segments"] == 3 and same["fd_passt_reason"] is None
    assert abs(same["fd_passt"]) < 1e-6 < other["fd_passt"]


def test_sync_columns_from_side_threads_come_back_in_clip_order_as_computed_alone(sync_folders, tmp_path):
    """evaluate_pairs computes onsets and video flow in side threads beside chroma: rows must be those of
    one thread, each on its own clip (the clips differ, so a mix-up would show)."""
    for folder in ("generated", "reference", "videos"):
        shutil.copytree(sync_folders / folder, tmp_path / folder)
    for i, shift in enumerate((0.2, 0.5, 0.1), start=2):
        write_wav(tmp_path / "generated" / f"c{i}.wav", _clicks([t + shift for t in JUMPS]), RATE)
        shutil.copy(sync_folders / "reference" / "c1.wav", tmp_path / "reference" / f"c{i}.wav")
        shutil.copy(sync_folders / "videos" / "c1.mp4", tmp_path / "videos" / f"c{i}.mp4")
    args = (tmp_path / "generated", tmp_path / "reference")
    alone = evaluate_pairs(*args, progress=False, videos=tmp_path / "videos", workers=1)[1]
    threaded = evaluate_pairs(*args, progress=False, videos=tmp_path / "videos", workers=3)[1]
    assert [row["video_id"] for row in threaded] == ["c1", "c2", "c3", "c4"]
    assert threaded == alone
    assert len({row["av_align"] for row in threaded}) > 1
