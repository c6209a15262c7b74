"""Chroma cosine similarity, as audiocraft's ``ChromaCosineSimilarityMetric`` defines it.

Per clip: a 12-bin chromagram of the generated and of the reference audio (32 kHz mono), each frame
normalised by its maximum and, by default, made one-hot at its largest bin; the score is the
cosine between corresponding frames, summed over the first ``ceil(len / hop)`` frames of every clip
and divided by the total number of frames (frame-weighted, not a mean of clip means). With
``argmax=True`` it is the fraction of frames whose dominant pitch class matches the reference.

Every argument that changes the number is a keyword with the published default.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import librosa
import numpy as np

from pipeline.audio import RESAMPLE_QUALITY, mono_resampled

SAMPLE_RATE = 32000
N_FFT = 2 ** 14
HOP = N_FFT // 4
N_CHROMA = 12
NORM_EPS = 1e-6
COSINE_EPS = 1e-8
# Frames per FFT batch: bounds memory at about 16 MB for n_fft = 16384, whatever the clip length.
_FRAMES_PER_BATCH = 64


def periodic_hann(length: int) -> np.ndarray:
    """The periodic Hann window ``0.5 - 0.5 cos(2 pi n / length)``, float64 ``[length]``."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


@functools.lru_cache(maxsize=8)
def chroma_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_chroma: int = N_CHROMA) -> np.ndarray:
    """librosa's chroma filterbank at tuning 0, float64 ``[n_chroma, n_fft // 2 + 1]`` (read-only)."""
    bank = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0.0, n_chroma=n_chroma, dtype=np.float64)
    bank.setflags(write=False)
    return bank


def chroma_frames(audio: np.ndarray, sample_rate: int, *, n_fft: int = N_FFT, hop: int | None = None,
                  win_length: int | None = None, n_chroma: int = N_CHROMA, norm_eps: float = NORM_EPS,
                  argmax: bool = True, chroma_rate: int = SAMPLE_RATE,
                  resample_quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """The normalised chromagram of a clip, one row per STFT frame.

    The audio is made mono at ``chroma_rate`` first. A clip shorter than ``n_fft`` is zero-padded
    symmetrically to ``n_fft`` (the extra sample on the right when the padding is odd). The STFT is
    centred with reflect padding, a periodic Hann window of ``win_length`` (zero-padded to
    ``n_fft`` in the middle when shorter), power 2, divided by the window energy ``sum(w^2)``. The
    chroma filterbank is ``librosa.filters.chroma(sr=chroma_rate, n_fft=n_fft, tuning=0,
    n_chroma=n_chroma)``. Each frame is divided by ``max(max(frame), norm_eps)``; with ``argmax``
    it becomes one-hot at its largest bin (the first bin on ties, so a silent frame is one-hot at C).

    Args:
        audio: float ``[C, S]`` or ``[S]`` at ``sample_rate``.
        sample_rate: rate of ``audio`` in Hz.
        n_fft: FFT size (audiocraft: ``2 ** radix2_exp`` with radix2_exp 14).
        hop: hop in samples; None = ``win_length // 4`` (4096).
        win_length: window length; None = ``n_fft``.
        n_chroma: pitch classes.
        norm_eps: floor of the per-frame maximum (torch ``normalize(p=inf, eps=1e-6)``).
        argmax: make each frame one-hot at its dominant pitch class.
        chroma_rate: the rate the chromagram is computed at.
        resample_quality: soxr quality used when ``sample_rate != chroma_rate``.

    Returns:
        float64 ``[F, n_chroma]`` with ``F = 1 + max(len, n_fft) // hop`` (len at ``chroma_rate``).
    """
    signal = mono_resampled(audio, sample_rate, chroma_rate, quality=resample_quality)
    return _chroma_of_mono(signal, sample_rate=chroma_rate, n_fft=n_fft, hop=hop, win_length=win_length,
                           n_chroma=n_chroma, norm_eps=norm_eps, argmax=argmax)


def _chroma_of_mono(signal: np.ndarray, *, sample_rate: int, n_fft: int, hop: int | None, win_length: int | None,
                    n_chroma: int, norm_eps: float, argmax: bool) -> np.ndarray:
    win_length = win_length or n_fft
    hop = hop or win_length // 4
    if win_length > n_fft:
        raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
    if signal.shape[0] < n_fft:
        missing = n_fft - signal.shape[0]
        signal = np.pad(signal, (missing // 2, missing - missing // 2))
    window = np.zeros(n_fft)
    offset = (n_fft - win_length) // 2
    window[offset:offset + win_length] = periodic_hann(win_length)
    window_energy = float(np.sum(window ** 2))
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    n_frames = 1 + (padded.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    bank = chroma_filterbank(sample_rate, n_fft, n_chroma)
    raw = np.empty((n_frames, n_chroma))
    for start in range(0, n_frames, _FRAMES_PER_BATCH):
        batch = frames[start:start + _FRAMES_PER_BATCH] * window
        power = np.abs(np.fft.rfft(batch, axis=1)) ** 2 / window_energy
        raw[start:start + batch.shape[0]] = power @ bank.T
    peak = np.maximum(np.abs(raw).max(axis=1, keepdims=True), norm_eps)
    chroma = raw / peak
    if argmax:
        one_hot = np.zeros_like(chroma)
        one_hot[np.arange(n_frames), chroma.argmax(axis=1)] = 1.0
        chroma = one_hot
    return chroma


def frame_cosines(first: np.ndarray, second: np.ndarray, eps: float = COSINE_EPS) -> np.ndarray:
    """Cosine similarity of corresponding rows, each norm floored at ``eps`` (a zero row gives 0).

    Args:
        first, second: float ``[F, D]``.

    Returns:
        float64 ``[F]``.
    """
    norms = (np.maximum(np.linalg.norm(first, axis=1), eps) * np.maximum(np.linalg.norm(second, axis=1), eps))
    return np.einsum("fd,fd->f", first, second) / norms


def chroma_cosine_sums(generated: np.ndarray, reference: np.ndarray, sample_rate: int, *,
                       reference_sample_rate: int | None = None, n_fft: int = N_FFT, hop: int | None = None,
                       win_length: int | None = None, n_chroma: int = N_CHROMA, norm_eps: float = NORM_EPS,
                       argmax: bool = True, cosine_eps: float = COSINE_EPS, chroma_rate: int = SAMPLE_RATE,
                       resample_quality: str = RESAMPLE_QUALITY) -> tuple[float, int]:
    """The summed frame cosines of one generated/reference pair, and how many frames were compared.

    Lengths: audiocraft compares a pair over one length (its ``sizes``), the generated clip's; here
    the reference (at ``chroma_rate``) is cut to the generated clip's length, or zero-padded to it
    when shorter, BEFORE its STFT, so both chromagrams cover the same samples. The frames compared
    are the first ``ceil(len / hop)`` with ``len`` the generated length at ``chroma_rate``
    (audiocraft counts its ``sizes`` at the input rate, which is the same when that rate is 32 kHz).

    Args:
        generated, reference: float ``[C, S]`` or ``[S]``.
        sample_rate: rate of ``generated`` (and of ``reference`` unless ``reference_sample_rate``).
        reference_sample_rate: rate of ``reference`` when it differs.
        cosine_eps: floor of each frame's norm in the cosine (torch ``cosine_similarity`` eps).
        Other keywords: as :func:`chroma_frames`.

    Returns:
        ``(sum of frame cosines, frames compared)``; ``(0.0, 0)`` for an empty generated clip.
    """
    hop = hop or (win_length or n_fft) // 4
    settings = dict(sample_rate=chroma_rate, n_fft=n_fft, hop=hop, win_length=win_length, n_chroma=n_chroma,
                    norm_eps=norm_eps, argmax=argmax)
    gen = mono_resampled(generated, sample_rate, chroma_rate, quality=resample_quality)
    ref = mono_resampled(reference, reference_sample_rate or sample_rate, chroma_rate, quality=resample_quality)
    length = gen.shape[0]
    if length == 0:
        return 0.0, 0
    ref = ref[:length] if ref.shape[0] >= length else np.pad(ref, (0, length - ref.shape[0]))
    compared = math.ceil(length / hop)
    gen_chroma = _chroma_of_mono(gen, **settings)[:compared]
    ref_chroma = _chroma_of_mono(ref, **settings)[:compared]
    return float(frame_cosines(gen_chroma, ref_chroma, cosine_eps).sum()), int(compared)


def chroma_cosine(pairs: Iterable[tuple[np.ndarray, np.ndarray]], sample_rate: int, **options) -> float:
    """Set-level chroma cosine similarity: all frame cosines of all pairs over the total frame count.

    Args:
        pairs: ``(generated, reference)`` audio, float ``[C, S]`` or ``[S]``, both at ``sample_rate``.
        options: keywords of :func:`chroma_cosine_sums`.

    Raises:
        ValueError: no frames at all (no pairs, or only empty generated clips).
    """
    total, frames = 0.0, 0
    for generated, reference in pairs:
        clip_sum, clip_frames = chroma_cosine_sums(generated, reference, sample_rate, **options)
        total += clip_sum
        frames += clip_frames
    if frames == 0:
        raise ValueError("chroma cosine needs at least one frame: no pairs, or only empty generated clips")
    return total / frames
