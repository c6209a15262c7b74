"""The embedded default's decoder: a fitted spectral lookup plus Griffin-Lim (NOT EnCodec's decoder).

The calibrated random codec (:func:`pipeline.features.codec.save_calibrated_random_codec`) has
informative codes but a random decoder, whose audio is noise. This decoder is fitted instead, from
the same calibration audio and its codes, in seconds and without gradient descent:

- every code frame ``t`` (50 Hz, hop 640 at 32 kHz) gets the log-magnitude spectrum of the STFT
  frame centred on sample ``t * 640`` (n_fft 2048, periodic Hann window);
- each codebook ``k`` has a table ``W_k [C, F]`` of log spectra (C entries, F = 1025 bins), fitted
  by backfitting (a few passes of exact least squares for one table given the others, with a small
  ridge towards 0) so that ``mean + sum_k W_k[c_k(t)]`` approximates frame ``t``'s log spectrum;
- decoding sums the four rows per frame, exponentiates, and recovers a phase by (fast) Griffin-Lim.

What it can do: key, chords and timbre per 20 ms frame, and onsets at frame resolution (it carries
whatever the codes carry of the spectrum's envelope and harmonics). What it cannot: phase
coherence (Griffin-Lim's smeared transients and "phasey" sound), detail finer than the sum of four
table rows (an additive model in the log domain), or anything its calibration audio never showed.
It is not a codec's decoder: the numbers measure the codes and the model, not audio quality.

File format (``embedded_decoder.npz`` in the codec folder, version :data:`FORMAT_VERSION`):
``tables`` float16 ``[K, C, F]``, ``mean`` float32 ``[F]``, ``meta`` a JSON string with
``format`` ("v2m-embedded-decoder"), ``version``, ``sample_rate``, ``n_fft``, ``hop``,
``griffin_lim_iterations``, ``griffin_lim_momentum``, ``log_floor`` and the fit's ``stats``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.files import atomic_path

FILE = "embedded_decoder.npz"
FORMAT = "v2m-embedded-decoder"
FORMAT_VERSION = 1
N_FFT = 2048
HOP = 640                  # one STFT frame per EnCodec 32 kHz code frame (50 Hz)
SAMPLE_RATE = 32_000
LOG_FLOOR = 1e-5           # log(|X| + floor): silence stays finite
PASSES = 4                 # backfitting passes; measured: the fit stops improving after ~3
# Pseudo-frames at 0 per entry: rarely used entries lean to the mean spectrum. Measured on 48 x 4 s
# v2m-synth clips (4.7 frames per entry), chroma_cosine of 12 held-out clips' true codes against their
# references by one ridge for all four codebooks (on a 2-core AVX-512 machine): 0.1 -> 0.38, 1 -> 0.66, 2.5 -> 0.73, 4 -> 0.71, 6 -> 0.68, 16 -> 0.57.
RIDGE = 1.5
# ...for codebook 1; codebook k's ridge is RIDGE_GROWTH ** (k - 1) times it. Each residual codebook holds about
# half the variance of the one before (calibration's residual_variance: 0.37, 0.18, 0.10, 0.05), so its entries
# carry half the signal against the same per-frame noise, and need twice the shrinkage. Measured on the same
# 48 + 12 clips on a 2-core AVX2 machine, held-out chroma_cosine: one ridge 2.5 for all -> 0.669; codebook 4
# dropped -> 0.706; growth 2 from 1 / 1.5 / 2 / 2.5 -> 0.727 / 0.753 / 0.753 / 0.750; growth 3 from 1 -> 0.773.
# 1.5: on the plateau, and the fit still explains > 0.6 of the calibration spectra's variance (0.58 from 2).
RIDGE_GROWTH = 2.0
# Measured on 24 x 4 s v2m-synth clips: held-out chroma_cosine 0.56 at 8, 16 and 32 iterations alike
# (the magnitudes carry the pitch), while the cost grows linearly; 16 keeps decoding near the 20x
# real-time target on 2 cores, with the phase started coherent (see griffin_lim).
GRIFFIN_LIM_ITERATIONS = 16
GRIFFIN_LIM_MOMENTUM = 0.99  # "fast Griffin-Lim" (Perraudin et al. 2013), librosa's default
DESCRIPTION = ("embedded decoder: a fitted spectral lookup (one log-spectrum table per codebook, summed) plus "
               "Griffin-Lim phase recovery, NOT EnCodec's decoder; it carries key, chords and rhythm, with "
               "Griffin-Lim's smeared, phasey sound")


class EmbeddedDecoderError(ValueError):
    """An embedded decoder file that this code cannot read (wrong format or version); the message names it."""


def _window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def frame_log_spectra(audio: np.ndarray, frames: int, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Log-magnitude spectra of ``frames`` STFT frames centred on samples ``0, hop, 2 hop, ...``.

    Args:
        audio: float mono ``[S]`` or ``[1, S]``.
        frames: how many frames to return (the code frames, ``ceil(S / hop)``); missing ones repeat the last.

    Returns:
        float32 ``[frames, n_fft // 2 + 1]``, ``log(|X| + LOG_FLOOR)``.
    """
    signal = torch.as_tensor(np.asarray(audio, dtype=np.float32).reshape(-1))
    if signal.shape[0] < n_fft // 2 + 1:   # reflect padding needs more samples than half a window
        signal = torch.nn.functional.pad(signal, (0, n_fft // 2 + 1 - signal.shape[0]))
    spec = torch.stft(signal, n_fft, hop, window=_window(n_fft), center=True, return_complex=True).abs()  # [F, T']
    logs = torch.log(spec + LOG_FLOOR).T.float().numpy()
    if logs.shape[0] < frames:
        logs = np.concatenate([logs, np.repeat(logs[-1:], frames - logs.shape[0], axis=0)])
    return logs[:frames]


def fit_tables(codes: Sequence[np.ndarray], audios: Sequence[np.ndarray], codebook_size: int, *,
               passes: int = PASSES, ridge: float = RIDGE, ridge_growth: float = RIDGE_GROWTH, n_fft: int = N_FFT,
               hop: int = HOP) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit the per-codebook log-spectrum tables by backfitting.

    Args:
        codes: per clip int ``[K, T_i]``, the codes of ``audios`` (``T_i = ceil(S_i / hop)``).
        audios: per clip float mono ``[1, S_i]`` at the codec's rate.
        codebook_size: C, the entries per codebook.
        passes: backfitting passes over the K tables.
        ridge: pseudo-frames at 0 added to each entry's count of codebook 1 (shrinks rarely used entries).
        ridge_growth: codebook k's ridge is ``ridge * ridge_growth ** (k - 1)`` (finer residuals, more shrinkage).

    Returns:
        ``(tables float32 [K, C, F], mean float32 [F], stats)``; ``stats`` holds ``frames``,
        ``clips``, ``passes``, ``ridge`` and ``explained`` (share of the log spectra's variance the
        fit explains, after each pass).
    """
    if not len(codes) or len(codes) != len(audios):
        raise ValueError(f"need codes for every clip, got {len(codes)} code arrays for {len(audios)} clips")
    targets = [frame_log_spectra(a, np.asarray(c).shape[1], n_fft, hop) for c, a in zip(codes, audios)]
    y = torch.from_numpy(np.concatenate(targets))                                  # [N, F]
    index = torch.from_numpy(np.concatenate([np.asarray(c, dtype=np.int64) for c in codes], axis=1))  # [K, N]
    if int(index.max()) >= codebook_size or int(index.min()) < 0:
        raise ValueError(f"codes outside 0..{codebook_size - 1}")
    k_books, n = index.shape
    mean = y.mean(0)
    residual = y - mean                              # what the tables still have to explain
    total = max(float(residual.pow(2).sum()), 1e-30)
    tables = torch.zeros(k_books, codebook_size, y.shape[1])
    counts = torch.stack([torch.bincount(row, minlength=codebook_size).float() for row in index])  # [K, C]
    ridges = [ridge * ridge_growth ** k for k in range(k_books)]
    explained = []
    for _ in range(passes):
        for k in range(k_books):
            residual += tables[k][index[k]]          # take table k's part back out
            sums = torch.zeros_like(tables[k]).index_add_(0, index[k], residual)
            tables[k] = sums / (counts[k] + ridges[k])[:, None]
            residual -= tables[k][index[k]]
        explained.append(round(1.0 - float(residual.pow(2).sum()) / total, 4))
    stats = dict(frames=int(n), clips=len(codes), passes=passes, ridge=ridges, explained=explained)
    return tables.numpy(), mean.numpy(), stats


@dataclass
class EmbeddedDecoder:
    """Fitted tables and the Griffin-Lim settings: codes ``[K, T]`` -> float32 audio ``[1, T * hop]``."""

    tables: np.ndarray          # float32 [K, C, F]
    mean: np.ndarray            # float32 [F]
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop: int = HOP
    iterations: int = GRIFFIN_LIM_ITERATIONS
    momentum: float = GRIFFIN_LIM_MOMENTUM
    stats: dict | None = None

    @classmethod
    def fit(cls, codes: Sequence[np.ndarray], audios: Sequence[np.ndarray], codebook_size: int,
            sample_rate: int = SAMPLE_RATE, **options) -> "EmbeddedDecoder":
        """:func:`fit_tables` of the codes and their audio (``options``: ``passes``, ``ridge``, ``ridge_growth``)."""
        tables, mean, stats = fit_tables(codes, audios, codebook_size, **options)
        return cls(tables, mean, sample_rate=sample_rate, stats=stats)

    def log_spectra(self, codes: np.ndarray) -> np.ndarray:
        """The fitted log-magnitude frames of ``codes`` int ``[K, T]``: float32 ``[T, F]``."""
        codes = np.asarray(codes, dtype=np.int64)
        k_books, size = self.tables.shape[:2]
        if codes.ndim != 2 or codes.shape[0] > k_books:
            raise ValueError(f"codes must be [K, T] with K <= {k_books}, got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"codes outside 0..{size - 1}")
        out = np.repeat(self.mean[None], codes.shape[1], axis=0)
        for k, row in enumerate(codes):
            out += self.tables[k][row]
        return out

    def decode(self, codes: np.ndarray, seed: int = 0) -> np.ndarray:
        """Audio of ``codes`` int ``[K, T]``: float32 ``[1, T * hop]`` at ``sample_rate`` (seeded initial phase)."""
        frames = np.asarray(codes).shape[1]
        length = frames * self.hop
        if frames == 0:
            return np.zeros((1, 0), np.float32)
        magnitude = torch.from_numpy(np.exp(self.log_spectra(codes)).T.copy())  # [F, T]
        # A centred STFT of T * hop samples has T + 1 frames: the last repeats the final code frame.
        magnitude = torch.cat([magnitude, magnitude[:, -1:]], dim=1)
        magnitude = torch.clamp(magnitude - LOG_FLOOR, min=0.0)   # undo the floor: silence decodes to silence
        audio = griffin_lim(magnitude, self.n_fft, self.hop, length, self.iterations, self.momentum, seed)
        return audio[None].astype(np.float32)

    def save(self, folder: Path | str) -> Path:
        """Write ``folder/embedded_decoder.npz`` atomically (tables stored as float16: half the size,
        rounding ~1e-3 of a log unit, far below the fit's error)."""
        meta = dict(format=FORMAT, version=FORMAT_VERSION, sample_rate=self.sample_rate, n_fft=self.n_fft,
                    hop=self.hop, griffin_lim_iterations=self.iterations, griffin_lim_momentum=self.momentum,
                    log_floor=LOG_FLOOR, description=DESCRIPTION, stats=self.stats or {})
        path = Path(folder) / FILE
        buffer = io.BytesIO()
        np.savez(buffer, tables=self.tables.astype(np.float16), mean=self.mean.astype(np.float32),
                 meta=np.array(json.dumps(meta)))
        with atomic_path(path) as temp:
            temp.write_bytes(buffer.getvalue())
        return path

    @classmethod
    def load(cls, folder: Path | str) -> "EmbeddedDecoder | None":
        """The decoder saved in ``folder``, or None when it has none.

        Raises:
            EmbeddedDecoderError: the file is not an embedded decoder of a version this code reads.
        """
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                tables, mean = data["tables"].astype(np.float32), data["mean"].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise EmbeddedDecoderError(f"{path}: not a readable embedded decoder ({exc}); rerun the codec_init "
                                       "stage to rewrite it") from None
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise EmbeddedDecoderError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                                       f"this code reads {FORMAT!r} version {FORMAT_VERSION}; rerun the codec_init "
                                       "stage to rewrite it")
        return cls(tables, mean, sample_rate=int(meta["sample_rate"]), n_fft=int(meta["n_fft"]), hop=int(meta["hop"]),
                   iterations=int(meta["griffin_lim_iterations"]), momentum=float(meta["griffin_lim_momentum"]),
                   stats=meta.get("stats"))


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, length: int, iterations: int = GRIFFIN_LIM_ITERATIONS,
                momentum: float = GRIFFIN_LIM_MOMENTUM, seed: int = 0) -> np.ndarray:
    """A signal whose centred STFT magnitude approximates ``magnitude`` float ``[F, T]`` (F = n_fft // 2 + 1).

    Fast Griffin-Lim as librosa's ``griffinlim`` runs it (``momentum`` 0.99), with torch's STFT
    (periodic Hann window, float32), but started from the phase a steady sinusoid at each bin's
    centre frequency would have (advancing ``2 pi f hop / sr`` per frame) plus a little seeded
    jitter, instead of uniformly random phase: sustained partials start coherent, so fewer
    iterations reach the same spectral error.

    Returns:
        float32 ``[length]``.
    """
    window = _window(n_fft)
    generator = torch.Generator().manual_seed(seed)
    bins, frames = magnitude.shape
    advance = 2 * math.pi * hop * torch.arange(bins, dtype=torch.float64)[:, None] / n_fft   # radians per frame
    phase = (advance * torch.arange(frames, dtype=torch.float64)[None]).remainder(2 * math.pi).float()
    phase = phase + 0.1 * math.pi * torch.rand(magnitude.shape, generator=generator)
    angles = torch.polar(torch.ones_like(phase), phase)
    magnitude = magnitude.float()
    previous = torch.zeros_like(angles)

    def inverse(phases: torch.Tensor) -> torch.Tensor:
        return torch.istft(magnitude * phases, n_fft, hop, window=window, center=True, length=length)

    for _ in range(iterations):
        rebuilt = torch.stft(inverse(angles), n_fft, hop, window=window, center=True, return_complex=True)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return inverse(angles).numpy()


__all__ = ["DESCRIPTION", "EmbeddedDecoder", "EmbeddedDecoderError", "FILE", "FORMAT_VERSION", "fit_tables",
           "frame_log_spectra", "griffin_lim"]
