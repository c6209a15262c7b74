"""Evaluation metrics with the published definitions (shared docs/metrics.md): chroma cosine
similarity, FAD on VGGish embeddings, KL divergence on PaSST class probabilities.

Nothing here imports the model package: the metrics judge audio files, whoever made them.
Arrays follow :mod:`pipeline.media`: audio is float ``[C, S]`` (channels first) or ``[S]`` mono.
"""

from __future__ import annotations

import numpy as np
import soxr

# soxr's best setting: the metrics compare spectra up to the Nyquist of the target rate.
RESAMPLE_QUALITY = "VHQ"


def mono_resampled(audio: np.ndarray, sample_rate: int, target_rate: int,
                   quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Audio as one channel at ``target_rate``.

    Channels are averaged (as audiocraft's ``convert_audio`` does to reach one channel), then
    resampled with soxr. The published tools resample with julius (audiocraft) or resampy
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
