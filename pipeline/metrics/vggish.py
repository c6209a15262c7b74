"""VGGish embeddings for FAD: Google's AudioSet VGGish in torch, fed the way Google's FAD tool feeds it.

Weights: the state dict of the widely used PyTorch port (harritaylor/torchvggish release file
``vggish-10086976.pth``, converted from Google's TensorFlow checkpoint), whose keys are
``features.{0,3,6,8,11,13}.{weight,bias}`` (the six 3x3 convolutions) and
``embeddings.{0,2,4}.{weight,bias}`` (the three fully connected layers). The embedding is the
128-d output of the last fully connected layer BEFORE its activation, with no PCA, as the FAD tool
reads it from the TF graph. Nothing is downloaded: the file comes from an explicit path.

Front end (the defaults, preset ``"google"``: Google's FAD tool), per clip:

1. mono, resampled to 16 kHz;
2. what audiocraft does when it writes the FAD tool's input files: peak-normalised to -1 dBFS,
   then 16-bit PCM;
3. what the tool does on reading them (scipy gives integer counts): divided by
   ``max(0.1, max(x))``, the positive peak, so the floor only matters for silence;
4. windows of 1 s every 0.5 s (``range(0, S - 16000 + 1, 8000)``: a 10 s clip gives 19);
5. per window, VGGish's log-mel: ``|STFT|`` with a 25 ms periodic Hann window, 10 ms hop, FFT
   length the next power of two (512), 64 HTK-mel bands from 125 to 7500 Hz built like
   ``mel_features.spectrogram_to_mel_matrix``, ``log(mel + 0.01)``; then 96-frame examples every
   96 frames (a 1 s window has 98 frames, so its one example is the first 96).

Preset ``"frechet_audio_distance"`` is the other published variant, torchvggish's own front end as
the frechet-audio-distance package (and fadtk) feed it: no normalisation or quantisation, one
log-mel over the whole clip cut into non-overlapping 0.96 s examples (torchvggish's
``waveform_to_examples``); ``benchmarks/fad_parity.py`` compares it with the package itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import read_state_dict
from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.audio import RESAMPLE_QUALITY, mono_resampled

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EMBEDDING_SIZE = 128

# Keyword sets for vggish_examples / embed, by ``evaluate.fad_preset``.
FRONT_END_PRESETS: dict[str, dict] = {
    "google": dict(window_seconds=1.0, window_step_seconds=0.5, example_hop_frames=EXAMPLE_FRAMES,
                     peak_dbfs=-1.0, quantize_bits=16, positive_peak_floor=0.1),
    "frechet_audio_distance": dict(window_seconds=None, window_step_seconds=None, example_hop_frames=EXAMPLE_FRAMES,
                                   peak_dbfs=None, quantize_bits=None, positive_peak_floor=None),
}

CHECKPOINT_SOURCE = (
    "expected torchvggish's release file vggish-10086976.pth (github.com/harritaylor/torchvggish, "
    "releases), a PyTorch state dict converted from Google's AudioSet VGGish; Google's TensorFlow "
    "checkpoint vggish_model.ckpt cannot be read here (no TensorFlow)")

# (in channels, out channels) of each 3x3 convolution, None = 2x2 max pooling: VGG configuration A, cut short.
_CONV_PLAN = [(1, 64), None, (64, 128), None, (128, 256), (256, 256), None, (256, 512), (512, 512), None]
_FC_PLAN = [(512 * 6 * 4, 4096), (4096, 4096), (4096, EMBEDDING_SIZE)]


class VGGishCheckpointError(UserError, FileNotFoundError):
    """A VGGish checkpoint that is missing or of the wrong kind; the message names the file."""


class VGGish(nn.Module):
    """VGGish with torchvggish's module layout, ending before the last activation.

    ``features``: conv-ReLU(-pool) stack on ``[N, 1, 96, 64]`` (time, mel) -> ``[N, 512, 6, 4]``;
    ``embeddings``: three fully connected layers -> ``[N, 128]``. The final ReLU of the port is
    left out: the FAD tool reads the embedding before it.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for step in _CONV_PLAN:
            if step is None:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(step[0], step[1], kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        (in0, out0), (in1, out1), (in2, out2) = _FC_PLAN
        self.embeddings = nn.Sequential(nn.Linear(in0, out0), nn.ReLU(inplace=True), nn.Linear(in1, out1),
                                        nn.ReLU(inplace=True), nn.Linear(in2, out2))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 96, 64]`` log-mel examples -> ``[N, 128]`` embeddings."""
        maps = self.features(examples)
        # The weights came from TF, which flattens channels-last (N, H, W, C).
        flat = maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1)
        return self.embeddings(flat)


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in torchvggish's ``vggish-10086976.pth``, in its order."""
    return {key: tuple(value.shape) for key, value in VGGish().state_dict().items()}


def save_random_vggish(path: Path | str, seed: int = 0) -> Path:
    """A VGGish state dict of random weights under the official key names and shapes, atomically.

    For tests of the loading and embedding code only: random weights say nothing about audio.
    Weights are normal with standard deviation ``sqrt(2 / fan_in)`` (activations neither vanish
    nor explode through the ReLUs); biases are zero.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes().items():
        if key.endswith(".bias"):
            state[key] = torch.zeros(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=generator) * float(np.sqrt(2.0 / fan_in))
    with atomic_path(path) as temp:
        torch.save(state, temp)
    return Path(path)


def load_vggish(path: Path | str, device: str | torch.device = "cpu") -> VGGish:
    """VGGish with weights from a torchvggish state dict file, in eval mode.

    Keys ``pproc.*`` (the PCA postprocessor some saved models carry) are ignored: no PCA here.

    Raises:
        VGGishCheckpointError: no such file, a TensorFlow checkpoint, an unreadable file, or a
            state dict whose keys or shapes are not VGGish's.
    """
    path = Path(path)
    if path.suffix in {".ckpt", ".index", ".meta"} or ".ckpt." in path.name or ".data-" in path.name:
        raise VGGishCheckpointError(f"VGGish checkpoint {path}: named like a TensorFlow checkpoint; {CHECKPOINT_SOURCE}")
    state = read_state_dict(path, label="VGGish checkpoint", where_from=CHECKPOINT_SOURCE,
                            missing=VGGishCheckpointError, unreadable=VGGishCheckpointError)
    state = {key: value for key, value in state.items() if not key.startswith("pproc.")}
    expected = official_shapes()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {tuple(state[key].shape)} (expected {expected[key]})" for key in expected
             if key in state and tuple(state[key].shape) != expected[key]]
    if missing or unexpected or wrong:
        problems = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                         ("wrong shapes", wrong)) if items]
        raise VGGishCheckpointError(f"VGGish checkpoint {path}: not a VGGish state dict ({'; '.join(problems)}); "
                                    f"{CHECKPOINT_SOURCE}")
    model = VGGish()
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model.to(device).eval()


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_matrix(n_mels: int = NUM_MEL_BANDS, n_spectrogram_bins: int = 257, sample_rate: int = SAMPLE_RATE,
               fmin: float = MEL_MIN_HZ, fmax: float = MEL_MAX_HZ) -> np.ndarray:
    """VGGish's mel weights, built as ``mel_features.spectrogram_to_mel_matrix`` builds them.

    Band i is a triangle in mel between ``n_mels + 2`` equally spaced mel points from ``fmin`` to
    ``fmax``: 0 at points i and i+2, 1 at its centre, point i+1, evaluated at the mel value of each
    spectrogram bin's frequency (bins equally spaced from 0 Hz to Nyquist). The DC bin gets no
    weight, as in HTK. Triangles are not area-normalised.

    Returns:
        float64 ``[n_spectrogram_bins, n_mels]``: ``mel = magnitudes @ matrix``.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= fmin < fmax <= nyquist:
        raise ValueError(f"mel bands need 0 <= fmin < fmax <= Nyquist, got {fmin}, {fmax}, {nyquist}")
    bin_mels = hertz_to_mel(np.linspace(0.0, nyquist, n_spectrogram_bins))[:, None]
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels - lower) / (centre - lower)
    falling = (upper - bin_mels) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def mel_band_centres_hz(n_mels: int = NUM_MEL_BANDS, fmin: float = MEL_MIN_HZ, fmax: float = MEL_MAX_HZ) -> np.ndarray:
    """Centre frequency in Hz of each band of :func:`mel_matrix`, float64 ``[n_mels]``."""
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    return 700.0 * np.expm1(edges[1:-1] / 1127.0)


def log_mel_spectrogram(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, *,
                        window_seconds: float = STFT_WINDOW_SECONDS, hop_seconds: float = STFT_HOP_SECONDS,
                        n_mels: int = NUM_MEL_BANDS, fmin: float = MEL_MIN_HZ, fmax: float = MEL_MAX_HZ,
                        log_offset: float = LOG_OFFSET) -> np.ndarray:
    """VGGish's log-mel features of a mono signal (``mel_features.log_mel_spectrogram``).

    Frames are taken without padding: ``T = 1 + (S - window) // hop`` (0 when ``S < window``).
    Each frame is multiplied by a periodic Hann window, zero-padded to the next power of two, and
    its ``|rfft|`` (magnitude, not power) is mapped to mel bands; then ``log(mel + log_offset)``.

    Args:
        samples: float ``[S]``.

    Returns:
        float64 ``[T, n_mels]``.
    """
    window_length = int(round(sample_rate * window_seconds))
    hop_length = int(round(sample_rate * hop_seconds))
    fft_length = 2 ** int(np.ceil(np.log2(window_length)))
    samples = np.asarray(samples, dtype=np.float64)
    matrix = mel_matrix(n_mels, fft_length // 2 + 1, sample_rate, fmin, fmax)
    if samples.shape[0] < window_length:
        return np.empty((0, n_mels))
    frames = np.lib.stride_tricks.sliding_window_view(samples, window_length)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window_length) / window_length)
    magnitudes = np.abs(np.fft.rfft(frames * window, n=fft_length, axis=1))
    return np.log(magnitudes @ matrix + log_offset)


def _examples_of(log_mel: np.ndarray, hop_frames: int) -> np.ndarray:
    """``[T, 64]`` -> ``[K, 96, 64]``: 96-frame examples every ``hop_frames``, the tail dropped."""
    if log_mel.shape[0] < EXAMPLE_FRAMES:
        return np.empty((0, EXAMPLE_FRAMES, log_mel.shape[1]))
    return np.lib.stride_tricks.sliding_window_view(log_mel, EXAMPLE_FRAMES, axis=0)[::hop_frames].transpose(0, 2, 1)


def prepare_waveform(audio: np.ndarray, sample_rate: int, *, peak_dbfs: float | None = -1.0,
                     quantize_bits: int | None = 16, positive_peak_floor: float | None = 0.1,
                     resample_quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Steps 1-3 of the front end: 16 kHz mono, peak-normalised, quantised, divided by its positive peak.

    Args:
        audio: float ``[C, S]`` or ``[S]`` at ``sample_rate``.
        peak_dbfs: scale so that ``max|x|`` is this level (audiocraft's ``strategy="peak"`` with 1 dB
            headroom); None = no scaling. A silent clip stays silent.
        quantize_bits: round to signed integers of this many bits as audiocraft's ``i16_pcm``
            (``round(x * 2**15)``, or ``round(x * (2**15 - 1))`` where that would clip), kept in
            integer counts as the tool's wav reader returns them; None = keep floats.
        positive_peak_floor: divide by ``max(floor, max(x))`` in the units of the previous step
            (the FAD tool's ``normalize``); None = no division.

    Returns:
        float64 ``[S']`` at 16 kHz.
    """
    signal = mono_resampled(audio, sample_rate, SAMPLE_RATE, quality=resample_quality)
    if peak_dbfs is not None:
        peak = np.abs(signal).max() if signal.size else 0.0
        if peak > 0:
            signal = signal * (10.0 ** (peak_dbfs / 20.0) / peak)
    if quantize_bits is not None:
        full_scale = 2.0 ** (quantize_bits - 1)
        clipped = np.clip(signal, -1.0, 1.0)
        counts = np.round(clipped * full_scale)
        if counts.size and counts.max() >= full_scale:
            counts = np.round(clipped * (full_scale - 1))
        signal = counts
    if positive_peak_floor is not None and signal.size:
        signal = signal / max(positive_peak_floor, float(signal.max()))
    return signal


def vggish_examples(audio: np.ndarray, sample_rate: int, *, window_seconds: float | None = 1.0,
                    window_step_seconds: float | None = 0.5, example_hop_frames: int = EXAMPLE_FRAMES,
                    peak_dbfs: float | None = -1.0, quantize_bits: int | None = 16,
                    positive_peak_floor: float | None = 0.1,
                    resample_quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """The log-mel examples VGGish embeds, one per window (defaults: Google's FAD tool).

    Args:
        audio: float ``[C, S]`` or ``[S]`` at ``sample_rate``.
        window_seconds: audio window cut before the log-mel (the tool's 1 s); None = one log-mel over
            the whole clip (preset ``"frechet_audio_distance"``).
        window_step_seconds: step between audio windows (the tool's ``step_size`` 8000 samples).
        example_hop_frames: hop between 96-frame examples within a window (or the whole clip).
        peak_dbfs, quantize_bits, positive_peak_floor, resample_quality: see :func:`prepare_waveform`.

    Returns:
        float32 ``[N, 96, 64]``; N = 0 for a clip shorter than one window. With the defaults,
        ``N = 1 + (S16k - 16000) // 8000``.
    """
    signal = prepare_waveform(audio, sample_rate, peak_dbfs=peak_dbfs, quantize_bits=quantize_bits,
                              positive_peak_floor=positive_peak_floor, resample_quality=resample_quality)
    if window_seconds is None:
        examples = _examples_of(log_mel_spectrogram(signal), example_hop_frames)
    else:
        if window_step_seconds is None:
            raise ValueError("window_step_seconds is needed when window_seconds is set")
        window = int(round(window_seconds * SAMPLE_RATE))
        step = int(round(window_step_seconds * SAMPLE_RATE))
        per_window = [_examples_of(log_mel_spectrogram(signal[start:start + window]), example_hop_frames)
                      for start in range(0, signal.shape[0] - window + 1, step)]
        examples = np.concatenate(per_window) if per_window else np.empty((0, EXAMPLE_FRAMES, NUM_MEL_BANDS))
    return np.ascontiguousarray(examples, dtype=np.float32)


def embed(model: VGGish, audio: np.ndarray, sample_rate: int, *, batch_size: int = 64, **front_end) -> np.ndarray:
    """VGGish embeddings of every example of a clip.

    Args:
        model: from :func:`load_vggish`.
        audio: float ``[C, S]`` or ``[S]`` at ``sample_rate``.
        batch_size: examples per forward pass (changes speed, and numbers only by float rounding).
        front_end: keywords of :func:`vggish_examples` (e.g. ``**FRONT_END_PRESETS["frechet_audio_distance"]``).

    Returns:
        float32 ``[N, 128]``; ``[0, 128]`` for a clip shorter than one window.
    """
    examples = vggish_examples(audio, sample_rate, **front_end)
    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for start in range(0, examples.shape[0], batch_size):
            batch = torch.from_numpy(examples[start:start + batch_size]).unsqueeze(1).to(device)
            outputs.append(model(batch).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.empty((0, EMBEDDING_SIZE), dtype=np.float32)
