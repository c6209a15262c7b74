"""Figures for an evaluation: one clip's chroma and spectrum side by side, and per-clip metric histograms.

Figures are drawn with matplotlib's object API (no pyplot global state, Agg rendering), so they are
safe in worker processes and on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.files import atomic_path
from pipeline.audio import mono_resampled
from pipeline.metrics.chroma import SAMPLE_RATE as CHROMA_RATE
from pipeline.metrics.chroma import chroma_frames, periodic_hann

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SPECTROGRAM_N_FFT = 2048
SPECTROGRAM_HOP = 512
# dB range shown below each spectrogram's peak: quieter detail is noise for a visual comparison.
SPECTROGRAM_RANGE_DB = 80.0


def log_spectrogram(audio: np.ndarray, sample_rate: int, n_fft: int = SPECTROGRAM_N_FFT,
                    hop: int = SPECTROGRAM_HOP) -> np.ndarray:
    """Power spectrogram in dB of a mono signal, float64 ``[n_fft // 2 + 1, F]`` (frequency rows).

    Args:
        audio: float ``[C, S]`` or ``[S]`` (channels are averaged).
    """
    signal = mono_resampled(audio, sample_rate, sample_rate)
    signal = np.pad(signal, (n_fft // 2, n_fft // 2 + max(0, n_fft - signal.shape[0])))
    frames = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * periodic_hann(n_fft), axis=1)) ** 2
    return 10.0 * np.log10(power.T + 1e-12)


def _save(figure: Figure, out_png: Path | str) -> Path:
    with atomic_path(out_png) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return Path(out_png)


def plot_clip_comparison(generated: np.ndarray, reference: np.ndarray, sample_rate: int, out_png: Path | str,
                         title: str = "", *, reference_sample_rate: int | None = None) -> Path:
    """A 2x2 figure: chromagram (top) and log spectrogram (bottom), generated (left) vs reference (right).

    Chromagrams are the metric's own (32 kHz, n_fft 16384, hop 4096), max-normalised, shown
    without the argmax so near-ties are visible.

    Args:
        generated, reference: float ``[C, S]`` or ``[S]``.
        sample_rate: rate of ``generated`` (and ``reference`` unless ``reference_sample_rate``).
        out_png: file to write (atomically).
        title: figure title, e.g. the video id and its per-clip scores.

    Returns:
        ``out_png``.
    """
    figure = Figure(figsize=(12, 7), layout="constrained")
    axes = figure.subplots(2, 2)
    clips = (("generated", generated, sample_rate), ("reference", reference, reference_sample_rate or sample_rate))
    for column, (label, audio, rate) in enumerate(clips):
        seconds = np.asarray(audio).shape[-1] / rate
        chroma = chroma_frames(audio, rate, argmax=False)
        top = axes[0, column]
        top.imshow(chroma.T, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                   extent=(0.0, chroma.shape[0] * 4096 / CHROMA_RATE, -0.5, 11.5), interpolation="nearest")
        top.set_yticks(range(12), PITCH_CLASSES)
        top.set_title(f"{label}: chroma")
        spectrum = log_spectrogram(audio, rate)
        bottom = axes[1, column]
        image = bottom.imshow(spectrum, origin="lower", aspect="auto", cmap="viridis",
                              vmin=spectrum.max() - SPECTROGRAM_RANGE_DB, vmax=spectrum.max(),
                              extent=(0.0, seconds, 0.0, rate / 2000.0))
        bottom.set_title(f"{label}: log power spectrogram")
        bottom.set_xlabel("time (s)")
        bottom.set_ylabel("frequency (kHz)")
        figure.colorbar(image, ax=bottom, label="dB")
    if title:
        figure.suptitle(title)
    return _save(figure, out_png)


def plot_metric_distributions(rows: Sequence[dict[str, Any]], out_png: Path | str) -> Path:
    """Histograms of the per-clip chroma cosine, beat hit/coverage and, where present, both KL directions
    and AV-Align (generated and reference music on the same video).

    Args:
        rows: per-clip rows from :func:`pipeline.metrics.evaluate.evaluate_pairs` (None values skipped).
        out_png: file to write (atomically).

    Returns:
        ``out_png``.
    """
    panels = [("chroma_cosine", "chroma cosine (per clip)")]
    if any(row.get("kld_ref_gen") is not None for row in rows):
        panels += [("kld_ref_gen", "KL(reference || generated)"), ("kld_gen_ref", "KL(generated || reference)")]
    if any(row.get("av_align") is not None for row in rows):
        panels += [("av_align", "AV-Align, generated"), ("av_align_reference", "AV-Align, reference (ceiling)")]
    panels += [("beat_hit", "beat hit (1 s bins)"), ("beat_coverage", "beat coverage (1 s bins)"),
               ("beat_hit_50ms", "beat hit (onsets within 50 ms)")]
    columns = min(4, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows_of_panels), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows_of_panels, columns)).ravel()
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    for axis, (key, label) in zip(axes, panels):
        values = np.array([row[key] for row in rows if row.get(key) is not None], dtype=np.float64)
        if values.size:
            axis.hist(values, bins=min(30, max(5, values.size)), color="tab:blue", edgecolor="white")
            axis.axvline(values.mean(), color="tab:red", label=f"mean {values.mean():.3f}")
            axis.legend()
        else:
            axis.text(0.5, 0.5, "no values", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(f"{label}, n = {values.size}")
        axis.set_ylabel("clips")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(figure, out_png)
