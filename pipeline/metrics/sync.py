"""Sync metrics (shared docs/metrics.md, "Sync metrics"): AV-Align and LORIS's beat hit / coverage.

- AV-Align (TempoTokens ``av_align.py``): video peaks are strict local maxima of the mean Farneback
  flow magnitude between consecutive full-size grayscale frames at the video's own rate; audio peaks
  are librosa onsets (22050 Hz, default settings); a hit is an audio peak strictly within one video
  frame of a video peak (each audio peak counted once); score = hits / (|A| + |V| - hits).
- Beat hit / coverage (LORIS ``beats_scores.py``): onsets with LORIS's settings, each clip as 1 s
  bins (1 where an onset falls); hit = bins set in both / bins set in the reference, coverage =
  bins set in both / bins set in the generated (0 when the denominator is 0); the set's F1 is taken
  of the means. 1 s bins are coarse (a clip with an onset every second fills them all), so the
  ``*_50ms`` variant counts onsets instead: hit = reference onsets with a generated onset within
  50 ms, coverage = generated onsets with a reference onset within 50 ms.

Audio is resampled with soxr (:func:`pipeline.audio.mono_resampled`) where the reference scripts
call ``librosa.load`` (soxr_hq as well), so onsets can differ in rare frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline import media
from pipeline.audio import mono_resampled

ONSET_RATE = 22_050                    # librosa.load's default rate, which both reference scripts use
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
BEAT_ONSET = dict(wait=1, delta=0.2, pre_avg=3, post_avg=3, pre_max=3, post_max=3)  # LORIS's onset_detect
BEAT_BIN_SECONDS = 1.0
FINE_TOLERANCE = 0.05                  # seconds, the finer beat variant's window


@dataclass
class VideoMotion:
    """A video's mean flow magnitude per frame (``[N]``, frame 0 repeats pair 0's value) and frame rate."""

    trajectory: np.ndarray
    fps: float

    @property
    def peaks(self) -> np.ndarray:
        return video_peaks(self.trajectory, self.fps)


def video_motion(path: Path | str) -> VideoMotion:
    """AV-Align's motion trajectory of every frame of ``path`` at full size.

    Raises:
        MediaError: unreadable video, no video stream or no frame rate.
    """
    info = media.probe(path)
    if not info.fps:
        raise media.MediaError(f"{path}: no video frame rate")
    values, previous = [], None
    for _, rgb in media.decode_frames(path):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if previous is not None:
            flow = cv2.calcOpticalFlowFarneback(previous, gray, None, FARNEBACK["pyr_scale"], FARNEBACK["levels"],
                                                FARNEBACK["winsize"], FARNEBACK["iterations"], FARNEBACK["poly_n"],
                                                FARNEBACK["poly_sigma"], FARNEBACK["flags"])
            values.append(float(np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).mean()))
        previous = gray
    if values:
        values.insert(0, values[0])
    return VideoMotion(np.asarray(values, dtype=np.float64), float(info.fps))


def video_peaks(trajectory: np.ndarray, fps: float) -> np.ndarray:
    """Times (s) of the strict local maxima ``a[i-1] < a[i] > a[i+1]`` of ``trajectory`` ``[N]``, i = 1..N-2."""
    a = np.asarray(trajectory, dtype=np.float64)
    if a.shape[0] < 3:
        return np.zeros(0)
    inner = np.flatnonzero((a[1:-1] > a[:-2]) & (a[1:-1] > a[2:])) + 1
    return inner / float(fps)


def onset_times(audio: np.ndarray, sample_rate: int, **onset_options) -> np.ndarray:
    """librosa onset times (s) of ``audio`` (``[C, S]`` or ``[S]``) at 22050 Hz mono; ``onset_options``
    go to ``librosa.onset.onset_detect`` (none: AV-Align's defaults; :data:`BEAT_ONSET`: LORIS's)."""
    import librosa

    y = mono_resampled(audio, sample_rate, ONSET_RATE).astype(np.float32)
    if y.size == 0:
        return np.zeros(0)
    return np.asarray(librosa.onset.onset_detect(y=y, sr=ONSET_RATE, units="time", **onset_options), np.float64)


def av_align(audio_peaks: Sequence[float], video_peaks_: Sequence[float], fps: float) -> float | None:
    """AV-Align of one video: hits / (|A| + |V| - hits); None when both peak lists are empty (0 / 0).

    A hit is an audio peak ``a`` with some video peak ``v`` such that ``v - 1/fps < a < v + 1/fps``.
    As published, several audio peaks near one video peak all count, so the score can exceed 1.
    """
    audio_peaks, video_peaks_ = np.asarray(audio_peaks, np.float64), np.asarray(video_peaks_, np.float64)
    window = 1.0 / float(fps)
    hits = int(sum(bool(np.any((video_peaks_ - window < a) & (a < video_peaks_ + window))) for a in audio_peaks))
    union = audio_peaks.size + video_peaks_.size - hits
    return hits / union if union else None


def beat_bins(onsets: Sequence[float], seconds: float, bin_seconds: float = BEAT_BIN_SECONDS) -> np.ndarray:
    """bool ``[ceil(seconds / bin_seconds)]``: True where an onset falls in the bin."""
    bins = np.zeros(max(0, math.ceil(seconds / bin_seconds - 1e-9)), dtype=bool)
    index = (np.asarray(onsets, np.float64) // bin_seconds).astype(np.int64)
    bins[index[(index >= 0) & (index < bins.size)]] = True
    return bins


def beat_hit_coverage(generated: Sequence[float], generated_seconds: float, reference: Sequence[float],
                      reference_seconds: float, bin_seconds: float = BEAT_BIN_SECONDS) -> tuple[float, float]:
    """LORIS's ``(hit, coverage)`` of one clip from its onset times (s).

    The reference bins are cut (or zero-padded) to the generated clip's count.
    """
    gen = beat_bins(generated, generated_seconds, bin_seconds)
    ref = beat_bins(reference, reference_seconds, bin_seconds)
    ref = np.pad(ref[:gen.size], (0, max(0, gen.size - ref.size)))
    both = int(np.sum(gen & ref))
    hit = both / int(ref.sum()) if ref.any() else 0.0
    coverage = both / int(gen.sum()) if gen.any() else 0.0
    return hit, coverage


def onset_hit_coverage(generated: Sequence[float], reference: Sequence[float],
                       tolerance: float = FINE_TOLERANCE) -> tuple[float, float]:
    """The finer variant's ``(hit, coverage)``: the share of reference onsets with a generated one within
    ``tolerance`` s, and of generated onsets with a reference one within it (0 for an empty set)."""
    gen, ref = np.asarray(generated, np.float64), np.asarray(reference, np.float64)

    def matched(a: np.ndarray, b: np.ndarray) -> float:
        if a.size == 0:
            return 0.0
        if b.size == 0:
            return 0.0
        return float(np.mean(np.min(np.abs(a[:, None] - b[None]), axis=1) <= tolerance + 1e-9))

    return matched(ref, gen), matched(gen, ref)


def f1(hit: float | None, coverage: float | None) -> float | None:
    """``2 * coverage * hit / (coverage + hit)``; 0 when both are 0, None when either is None."""
    if hit is None or coverage is None:
        return None
    return 2 * coverage * hit / (coverage + hit) if coverage + hit else 0.0


__all__ = ["BEAT_ONSET", "FINE_TOLERANCE", "VideoMotion", "av_align", "beat_bins", "beat_hit_coverage", "f1",
           "onset_hit_coverage", "onset_times", "video_motion", "video_peaks"]
