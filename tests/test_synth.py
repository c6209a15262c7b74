"""v2m-synth: determinism, and that the video and audio really carry the labelled key, tempo and motion."""

from __future__ import annotations

import colorsys
import dataclasses
import re

import librosa
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import media
from pipeline.config import SampleParams
from pipeline.features.motion import flow_magnitudes
from pipeline.synth import LABELS_FILE, read_labels, render_clip, render_sample_set
from pipeline.synth.scene import object_positions, render_frames
from pipeline.synth.spec import WIDTH_PER_BEAT, sample_clip_spec


def decoded_frames(path) -> np.ndarray:
    return np.stack([frame for _, frame in media.decode_frames(path)])


# Krumhansl-Kessler key profiles (tonic first): the standard template for key finding.
KEY_PROFILES = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}


def estimate_key(audio: np.ndarray, sr: int, mode: str) -> int:
    """The tonic whose key profile (in the labelled mode) correlates best with the mean chroma."""
    chroma = librosa.feature.chroma_stft(y=audio.mean(0), sr=sr, n_fft=8192, hop_length=2048).mean(axis=1)
    return int(np.argmax([np.corrcoef(chroma, np.roll(KEY_PROFILES[mode], k))[0, 1] for k in range(12)]))


def estimate_bpm(audio: np.ndarray, sr: int, accents: list[float] = ()) -> float:
    """Tempo from onset detection: 60 / median inter-onset interval, the event accents' onsets
    (within 50 ms of a labelled event time) left out: they are off the beat by design."""
    onsets = librosa.onset.onset_detect(y=audio.mean(0), sr=sr, units="time")
    onsets = np.array([t for t in onsets if not any(abs(t - e) < 0.05 for e in accents)])
    return 60.0 / float(np.median(np.diff(onsets)))


def background_key(frame: np.ndarray) -> tuple[int, float]:
    """(nearest key hue, value) of the frame's border, where the background shows."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(float) / 255
    r, g, b = np.median(border, axis=0)
    hue, _, value = colorsys.rgb_to_hsv(r, g, b)
    return int(round(hue * 12)) % 12, value


def test_same_seed_gives_identical_frames_and_samples_in_one_process_or_two(tmp_path):
    params = SampleParams(n_clips=3, seconds=3.0, seed=11)
    first, second = tmp_path / "a", tmp_path / "b"
    render_sample_set(first, params, progress=False, workers=1)
    render_sample_set(second, params, progress=False, workers=2)
    rows = read_labels(first)
    assert rows == read_labels(second)
    for row in rows:
        assert np.array_equal(decoded_frames(first / row["video_file"]), decoded_frames(second / row["video_file"]))
        audio_a, _ = media.decode_audio(first / row["video_file"])
        audio_b, _ = media.decode_audio(second / row["video_file"])
        assert np.array_equal(audio_a, audio_b)
        stem_a, _ = media.read_wav(first / row["accompaniment_file"])
        stem_b, _ = media.read_wav(second / row["accompaniment_file"])
        assert np.array_equal(stem_a, stem_b)
    other = tmp_path / "c"
    render_sample_set(other, dataclasses.replace(params, seed=12), progress=False)
    row = read_labels(other)[0]
    assert not np.array_equal(decoded_frames(other / row["video_file"]), decoded_frames(first / rows[0]["video_file"]))


def test_files_and_labels(synth_set):
    folder, rows = synth_set
    assert len(rows) == 6
    assert len({r["video_id"] for r in rows}) == 6
    for row in rows:
        assert re.fullmatch(r"[A-Za-z0-9_-]{11}", row["video_id"])
        info = media.probe(folder / row["video_file"])
        assert info.video_frames == round(row["seconds"] * row["fps"])
        assert (info.width, info.height) == (row["width"], row["height"])
        assert info.audio_rate == 44100 and info.audio_channels == 2
        assert abs(info.duration - row["seconds"]) < 0.05
        assert all(0 < t < row["seconds"] for t in row["chord_change_times"])
        assert row["cut_times"] == row["chord_change_times"]
        assert len(row["chord_roots"]) == len(row["chord_change_times"]) + 1
        assert row["object_speed"] == pytest.approx(WIDTH_PER_BEAT * row["width"] * row["bpm"] / 60, rel=1e-4)
    table = pq.read_table(folder / LABELS_FILE)
    assert b"v2m.synth.params" in table.schema.metadata


def test_sets_vary_across_clips():
    rows = [sample_clip_spec(SampleParams(seed=0), i) for i in range(24)]
    assert len({r.key for r in rows}) >= 6
    assert len({r.mode for r in rows}) == 2
    bpms = [r.bpm for r in rows]
    assert max(bpms) - min(bpms) > 40
    assert len({r.chord_change_times for r in rows}) == 24


def test_audio_key_matches_label(synth_set):
    folder, rows = synth_set
    for row in rows:
        accompaniment, sr = media.read_wav(folder / row["accompaniment_file"])
        assert estimate_key(accompaniment, sr, row["mode"]) == row["key"], row["video_id"]
        mix, sr = media.decode_audio(folder / row["video_file"])
        assert estimate_key(mix, sr, row["mode"]) == row["key"], row["video_id"]


def test_onset_rate_matches_bpm(synth_set):
    folder, rows = synth_set
    for row in rows:
        accompaniment, sr = media.read_wav(folder / row["accompaniment_file"])
        assert estimate_bpm(accompaniment, sr, row["event_times"]) == pytest.approx(row["bpm"], rel=0.04), \
            row["video_id"]


def test_background_colour_matches_key_mapping(synth_set):
    folder, rows = synth_set
    for row in rows:
        frames = decoded_frames(folder / row["video_file"])
        for frame in frames[:: len(frames) // 4]:
            key, value = background_key(frame)
            assert key == row["key"], row["video_id"]
            assert (value > 0.7) == (row["mode"] == "major")


def mean_frame_difference(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def test_motion_grows_with_labelled_speed(tmp_path):
    """The same clip at four tempi, through the real encoder and decoder: faster tempo, more motion."""
    base = sample_clip_spec(SampleParams(seconds=4.0, seed=5, motion_only=True), 0)
    motions = []
    for bpm in (60.0, 90.0, 120.0, 160.0):
        spec = dataclasses.replace(base, bpm=bpm, object_speed=base.object_speed * bpm / base.bpm)
        path = media.write_mp4(tmp_path / f"{bpm}.mp4", render_frames(spec), spec.fps)
        motions.append(mean_frame_difference(decoded_frames(path)))
    assert all(a < b for a, b in zip(motions, motions[1:])), motions


def test_motion_only_mode_shows_tempo_only_through_motion():
    slow = sample_clip_spec(SampleParams(seconds=6.0, seed=4, motion_only=True, bpm_min=70, bpm_max=70), 3)
    fast = sample_clip_spec(SampleParams(seconds=6.0, seed=4, motion_only=True, bpm_min=140, bpm_max=140), 3)
    assert slow.cut_times == () and fast.cut_times == ()
    assert slow.scenes == fast.scenes and slow.key == fast.key
    slow_frames, fast_frames = list(render_frames(slow)), list(render_frames(fast))
    assert np.array_equal(slow_frames[0], fast_frames[0])  # same picture...
    assert not np.array_equal(slow_frames[-1], fast_frames[-1])  # ...moving at another speed


def test_flow_features_follow_the_tempo():
    """Farneback on frames 0.25 s apart (the flow features' rate) sees the shapes' speed grow with the tempo."""
    for index in range(3):
        base = sample_clip_spec(SampleParams(seconds=3.0, seed=6, motion_only=True), index)
        speeds = []
        for bpm in (75.0, 145.0):
            spec = dataclasses.replace(base, bpm=bpm, object_speed=WIDTH_PER_BEAT * base.width * bpm / 60)
            gray = np.stack(list(render_frames(spec)))[:: spec.fps // 4].mean(axis=3).astype(np.uint8)
            # the drift between events (an event's lurch is the same at every tempo)
            events = {round(t * 4) for t in spec.event_times}
            maps = flow_magnitudes(gray)[[j for j in range(1, len(gray)) if j not in events]]
            speeds.append(float(np.quantile(maps, 0.995)))
        assert speeds[1] > 1.4 * speeds[0] > 0, (index, speeds)


def test_vocal_stem_is_in_the_mix(synth_set):
    folder, rows = synth_set
    for row in rows[:3]:
        mix, sr = media.decode_audio(folder / row["video_file"])
        accompaniment, _ = media.read_wav(folder / row["accompaniment_file"])
        vocals, _ = media.read_wav(folder / row["vocals_file"])
        n = accompaniment.shape[1]
        lag = best_lag(mix[0], accompaniment[0] + vocals[0])
        mix = mix[:, lag:lag + n].mean(0)
        acc, voc = accompaniment[:, : mix.size].mean(0), vocals[:, : mix.size].mean(0)
        basis = np.stack([acc, voc], axis=1)
        (gain_acc, gain_voc), *_ = np.linalg.lstsq(basis, mix, rcond=None)
        assert gain_acc == pytest.approx(1.0, abs=0.05)
        assert gain_voc == pytest.approx(1.0, abs=0.1)
        residual = mix - basis @ np.array([gain_acc, gain_voc])
        without_vocals = mix - acc * (acc @ mix) / (acc @ acc)
        assert (residual ** 2).mean() < 0.1 * (without_vocals ** 2).mean()


def best_lag(signal: np.ndarray, reference: np.ndarray, max_lag: int = 4096) -> int:
    """The delay (samples) of ``signal`` against ``reference``, e.g. the AAC encoder's priming."""
    window = reference[: 4 * max_lag]
    scores = [float(signal[lag:lag + window.size] @ window) for lag in range(max_lag)]
    return int(np.argmax(scores))


def test_render_clip_writes_all_three_files(tmp_path):
    spec = sample_clip_spec(SampleParams(seconds=2.0), 0)
    (tmp_path / "stems").mkdir()
    row = render_clip(spec, tmp_path)
    for key in ("video_file", "accompaniment_file", "vocals_file"):
        assert (tmp_path / row[key]).stat().st_size > 0
    accompaniment, sr = media.read_wav(tmp_path / row["accompaniment_file"])
    assert accompaniment.shape == (2, 2 * 44100) and sr == 44100


# -- motion events --------------------------------------------------------------------------------


def flow_scores(spec, size: int = 224) -> np.ndarray:
    """Mean Farneback magnitude of each 4 fps flow map of a clip (``size`` px, as the features run it): ``[N]``."""
    gray = np.stack(list(render_frames(spec)))[:: spec.fps // 4].mean(axis=3).astype(np.uint8)
    maps = flow_magnitudes(gray, size=size)
    return maps.reshape(len(maps), -1).mean(axis=1)


def test_event_times_are_random_on_the_grid_with_the_rate_asked():
    params = SampleParams(seconds=20.0, seed=2, events_per_second=1.0, event_min_gap=0.5, event_grid=0.25)
    specs = [sample_clip_spec(params, i) for i in range(30)]
    gaps = []
    for spec in specs:
        times = np.array(spec.event_times)
        assert np.allclose(times / 0.25, np.round(times / 0.25)), times
        assert times.min() > 0 and times.max() < spec.seconds
        gaps += list(np.diff(times))
    assert min(gaps) >= 0.5 - 1e-9
    rate = sum(len(s.event_times) for s in specs) / (30 * 20.0)
    assert 0.8 < rate < 1.15, rate
    assert len(set(np.round(gaps, 3))) >= 5                  # not periodic
    # not on the beat grid: most events fall between beats
    off_beat = [min(abs((t - s.first_beat) / s.beat_period - round((t - s.first_beat) / s.beat_period)), 1) > 0.1
                for s in specs for t in s.event_times]
    assert np.mean(off_beat) > 0.5
    assert sample_clip_spec(dataclasses.replace(params, events_per_second=0.0), 0).event_times == ()
    # the other draws do not depend on the events: same music and scenes without them
    quiet = sample_clip_spec(dataclasses.replace(params, events_per_second=0.0), 3)
    assert (quiet.bpm, quiet.chords, quiet.melody, quiet.scenes) == (specs[3].bpm, specs[3].chords, specs[3].melody,
                                                                      specs[3].scenes)


@pytest.mark.parametrize("size", [224, 112])   # the paper's flow size, the embedded default's
def test_flow_peaks_land_on_the_events(size):
    """Farneback at ``size`` px / 4 fps: >= 90% of events have a flow peak within one flow frame, <= 10% extra peaks."""
    hits = events = extra = peaks_total = 0
    for index in range(8):
        spec = sample_clip_spec(SampleParams(seconds=6.0, seed=3, motion_only=True), index)
        score = flow_scores(spec, size)
        base = np.median(score[1:])
        peaks = [j for j in range(1, len(score)) if score[j] > 1.3 * base and score[j] >= score[j - 1]
                 and (j + 1 == len(score) or score[j] >= score[j + 1])]
        marks = [round(t * 4) for t in spec.event_times]
        hits += sum(any(abs(p - e) <= 1 for p in peaks) for e in marks)
        events += len(marks)
        extra += sum(not any(abs(p - e) <= 1 for e in marks) for p in peaks)
        peaks_total += len(peaks)
    assert events >= 30
    assert hits >= 0.9 * events, (hits, events)
    assert extra <= 0.1 * peaks_total, (extra, peaks_total)


def test_accents_are_onsets_of_the_accompaniment_at_the_event_times(synth_set):
    folder, rows = synth_set
    errors = []
    for row in rows:
        assert row["event_times"], row["video_id"]
        accompaniment, sr = media.read_wav(folder / row["accompaniment_file"])
        onsets = librosa.onset.onset_detect(y=accompaniment.mean(0), sr=sr, units="time")
        errors += [float(np.min(np.abs(onsets - t))) for t in row["event_times"]]
    assert max(errors) < 0.030, errors


def test_motion_only_event_frames_differ_from_the_frame_before_only_by_object_positions():
    spec = sample_clip_spec(SampleParams(seconds=6.0, seed=3, motion_only=True), 1)
    frames = list(render_frames(spec))
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w]
    scene = spec.scenes[0]
    for t in spec.event_times:
        k = round(t * spec.fps)
        before, at = frames[k - 1].astype(int), frames[k].astype(int)
        shapes = np.zeros((h, w), bool)
        for time in ((k - 1) / spec.fps, k / spec.fps):
            for obj, (cx, cy) in zip(scene.objects, object_positions(spec, scene, time)):
                shapes |= (xx - cx) ** 2 + (yy - cy) ** 2 <= (obj.radius + 1) ** 2
        changed = np.any(before != at, axis=2)
        assert changed.any()                                    # the shapes moved...
        assert not (changed & ~shapes).any()                    # ...and nothing else changed
        # the same colours, only elsewhere: no colour or brightness change
        assert {tuple(c) for c in before.reshape(-1, 3)} == {tuple(c) for c in at.reshape(-1, 3)}
