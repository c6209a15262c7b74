"""Audio helpers shared by separation, generation and the metrics: mono downmix and resampling
(the one soxr quality setting), and ITU-R BS.1770-4 loudness with normalisation to a target.

Generated clips come out at whatever level the codec decoder gives; users expect music that sits
at a streaming-style level (-14 LUFS by default) without clipping, whatever the model.
"""

from __future__ import annotations

import math

import numpy as np
import soxr
from scipy.signal import lfilter

BLOCK_SECONDS = 0.4      # gating block (BS.1770-4, 2.3)
BLOCK_STEP = 0.1         # 75 % overlap
ABSOLUTE_GATE = -70.0    # LUFS
RELATIVE_GATE = -10.0    # LU below the absolutely gated loudness
# soxr's best setting: the metrics compare spectra up to the Nyquist of the target rate.
RESAMPLE_QUALITY = "VHQ"


def mono_resampled(audio: np.ndarray, sample_rate: int, target_rate: int,
                   quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Audio as one channel at ``target_rate``.

    Channels are averaged (as audiocraft's ``convert_audio`` does to reach one channel), then
    resampled with soxr. The published metric tools resample with julius (audiocraft) or resampy
    (VGGish's own front end); the filters differ slightly, so numbers can differ in the last digits.

    Args:
        audio: float ``[C, S]`` or ``[S]``.
        sample_rate: rate of ``audio`` in Hz.
        target_rate: rate wanted in Hz.
        quality: soxr quality name (``"VHQ"``, ``"HQ"``, ...).

    Returns:
        float64 ``[S']``, ``S'`` about ``S * target_rate / sample_rate`` (soxr rounds it).
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be [C, S] or [S], got shape {audio.shape}")
    if int(sample_rate) == int(target_rate) or audio.size == 0:
        return audio
    return np.asarray(soxr.resample(audio, int(sample_rate), int(target_rate), quality=quality), dtype=np.float64)


def k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads ``(b, a)`` at ``sample_rate``.

    BS.1770 gives coefficients for 48 kHz only; these are derived from the filters' analogue
    parameters (a high shelf of +4 dB near 1.7 kHz, then a high-pass near 38 Hz) by the bilinear
    transform, which reproduces the 48 kHz table to 1e-8.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)
    q = 0.7071752369554196
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = (np.array([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]),
             np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    k = math.tan(math.pi * 38.13547087602444 / sample_rate)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    highpass = (np.array([1.0, -2.0, 1.0]), np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    return [shelf, highpass]


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Gated integrated loudness in LUFS (BS.1770-4); ``-inf`` for silence.

    Args:
        audio: ``[S]`` mono or ``[C, S]`` (channels weighted 1, as for L/R/C; surround weights
            are not applied).
    """
    x = np.atleast_2d(np.asarray(audio, dtype=np.float64))
    for b, a in k_weighting(sample_rate):
        x = lfilter(b, a, x, axis=-1)
    block, step = round(BLOCK_SECONDS * sample_rate), round(BLOCK_STEP * sample_rate)
    if x.shape[-1] < block:     # shorter than one block: the whole clip is the block
        powers = np.mean(x ** 2, axis=-1, keepdims=True)
    else:
        squares = np.cumsum(np.pad(x ** 2, ((0, 0), (1, 0))), axis=-1)
        starts = np.arange(0, x.shape[-1] - block + 1, step)
        powers = (squares[:, starts + block] - squares[:, starts]) / block       # [C, blocks]
    z = powers.sum(axis=0)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(z)
    kept = z[loudness > ABSOLUTE_GATE]
    if kept.size == 0:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(kept.mean()) + RELATIVE_GATE
    kept = z[(loudness > ABSOLUTE_GATE) & (loudness > relative)]
    return float(-0.691 + 10 * np.log10(kept.mean()))


def normalize_loudness(audio: np.ndarray, sample_rate: int, target_lufs: float = -14.0,
                       peak_dbfs: float = -1.0) -> tuple[np.ndarray, float]:
    """Scale to ``target_lufs``, then down if needed so the sample peak stays at or below ``peak_dbfs``.

    Returns:
        ``(audio, gain_db)``: float32 audio of the input's shape and the gain applied (0 for silence,
        which is returned unchanged).
    """
    audio = np.asarray(audio, dtype=np.float32)
    loudness = integrated_loudness(audio, sample_rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(loudness) or peak == 0.0:
        return audio, 0.0
    gain_db = target_lufs - loudness
    gain_db = min(gain_db, peak_dbfs - 20 * math.log10(peak))
    return (audio * 10 ** (gain_db / 20)).astype(np.float32), gain_db


__all__ = ["RESAMPLE_QUALITY", "integrated_loudness", "k_weighting", "mono_resampled", "normalize_loudness"]
