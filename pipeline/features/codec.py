"""EnCodec 32 kHz audio tokens (paper 3.5, 5.1): 4 codebooks of 2048 entries at 50 Hz, as MusicGen uses.

The codec is ``transformers.EncodecModel`` with ``facebook/encodec_32khz``'s configuration: 32 kHz
mono in, a 640-sample hop (upsampling ratios 8 * 5 * 4 * 4) so 50 frames per second, and a
4-layer residual vector quantizer, since 2.2 kbps / (50 Hz * 11 bits) = 4 codebooks.

Models load only from disk: a ``save_pretrained`` folder of an ``EncodecModel``, a
``facebook/musicgen-small``-style folder (its ``audio_encoder`` is the codec), or a hub id already
in the Hugging Face cache. With no weights at hand, ``save_calibrated_random_codec`` writes the real
architecture with seeded random weights. A random EnCodec's codebooks are all zeros, so every frame
gets code 0; ``calibrate_codebooks`` fits them by residual k-means on encoder frames of real audio,
which makes the codes informative tokens. Its own decoder stays random (its audio is noise), so
``codec_init`` also fits an embedded decoder from the same audio and codes
(:mod:`pipeline.features.embedded_decoder`: a spectral lookup plus Griffin-Lim, not EnCodec's
decoder), saved in the codec folder; ``load_codec`` attaches it and ``decode`` uses it. A real codec
keeps its real decoder.

Audio is float32 ``[1, S]`` at 32 kHz; codes are int16 ``[K, T]`` with ``T = ceil(S / 640)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from huggingface_hub import constants as hub_constants
from tqdm import tqdm
from transformers import EncodecConfig, EncodecModel
from transformers.models.encodec.modeling_encodec import EncodecLSTM

from pipeline import audiocraft_format
from pipeline.checkpoints import (RANDOM_MARKER, audiocraft_file, is_random_stand_in, load_part, local_checkpoint,
                                  read_audiocraft_package)
from pipeline.config import CodecCalibrationParams
from pipeline.errors import UserError
from pipeline.device import resolve_device
from pipeline.features.embedded_decoder import DESCRIPTION as EMBEDDED_DESCRIPTION
from pipeline.features.embedded_decoder import FILE as EMBEDDED_FILE
from pipeline.features.embedded_decoder import EmbeddedDecoder
from pipeline.files import atomic_path

log = logging.getLogger("v2m.codec")

HUB_ID = "facebook/encodec_32khz"
MUSICGEN_HUB_ID = "facebook/musicgen-small"
CALIBRATION_KEY = "v2m_calibration"    # config.json key holding the calibration recipe and stats
EMBEDDED_ATTR = "v2m_embedded_decoder"  # the loaded model's attribute holding its EmbeddedDecoder
# codec_init runs the encoder over every calibration clip; it keeps those encoder frames in the codec folder,
# so the codes stage quantizes them instead of running the encoder again on the same audio (on a 2-core
# AVX2 machine the encoder is ~1.3 s per 6 s clip: the codes stage's whole cost).
LATENTS_FILE = "calibration_latents.npz"
LATENTS_ATTR = "v2m_calibration_latents"  # the loaded model's attribute: {(device, audio digest): [D, T]}
# facebook/encodec_32khz's config.json, spelled out rather than trusting library defaults (which are
# the 24 kHz model's). Its SEANet has identity skips (use_conv_shortcut False, audiocraft's true_skip).
# codebook_dim (128 there) is left to follow hidden_size, as EncodecConfig does, so tiny test codecs stay valid.
ENCODEC_32KHZ = dict(
    sampling_rate=32_000, audio_channels=1, target_bandwidths=[2.2], codebook_size=2048, hidden_size=128,
    num_filters=64, num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm",
    kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False,
    pad_mode="reflect", compress=2, num_lstm_layers=2, trim_right_ratio=1.0, normalize=False,
    chunk_length_s=None, overlap=None, use_conv_shortcut=False,
)


def encodec_32khz_config(**overrides) -> EncodecConfig:
    """``facebook/encodec_32khz``'s ``EncodecConfig`` (MusicGen's audio_encoder): hop 640, 50 Hz, 4 x 2048 codes.

    ``overrides`` replace keys (tests use tiny codecs); unknown keys raise.
    """
    known = {*ENCODEC_32KHZ, "codebook_dim"}
    if set(overrides) - known:
        raise ValueError(f"unknown EnCodec config keys {sorted(set(overrides) - known)}; known: {sorted(known)}")
    return EncodecConfig(**{**ENCODEC_32KHZ, **overrides})


def num_codebooks(model: EncodecModel, bandwidth: float | None = None) -> int:
    """Codebooks used at ``bandwidth`` kbps (None = all the quantizer has): 4 at 2.2 for the 32 kHz model."""
    return model.quantizer.get_num_quantizers_for_bandwidth(bandwidth)


# ----------------------------------------------------------------------------------------------- loading

def _where_from() -> str:
    return (f"expected a folder with config.json + model.safetensors of an EncodecModel (e.g. {HUB_ID}) or a "
            f"{MUSICGEN_HUB_ID} folder (its audio_encoder is the codec), or such a hub id already in the "
            f"Hugging Face cache ({hub_constants.HF_HUB_CACHE}); nothing is downloaded. On a machine with internet: "
            f"EncodecModel.from_pretrained('{HUB_ID}').save_pretrained(DIR), then copy DIR here. The embedded "
            "default's calibrated random codec is written by the codec_init stage; audiocraft's "
            f"{audiocraft_format.CODEC_FILE} (the file, or a folder holding it) also loads")


def load_audiocraft_codec(path: Path) -> EncodecModel:
    """An ``EncodecModel`` from audiocraft's ``compression_state_dict.bin``: sizes from its ``xp.cfg``
    (``facebook/encodec_32khz``'s where it is silent), weights mapped by :mod:`pipeline.audiocraft_format`."""
    state, cfg = read_audiocraft_package(path, label="codec", where_from=_where_from())
    config = encodec_32khz_config(**audiocraft_format.encodec_config_overrides(cfg, source=str(path)))
    model = EncodecModel(config)
    model.load_state_dict(audiocraft_format.codec_state_to_transformers(state, model.state_dict(), source=str(path)))
    return model


def load_codec(path: str | Path, device: str = "auto", cache_dir: str | Path | None = None) -> EncodecModel:
    """Load an EnCodec in eval mode, from disk only (``local_files_only=True``).

    Args:
        path: a ``save_pretrained`` folder of an ``EncodecModel``, or of a ``MusicgenForConditionalGeneration``
            (config.json's model_type ``musicgen``: its ``audio_encoder`` is taken), else a hub id of either
            kind already in the Hugging Face cache (``cache_dir``, default the standard one), or audiocraft's
            ``compression_state_dict.bin`` (the file, or a folder holding it and no config.json).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        FileNotFoundError: no such folder with config.json and weights, and no such hub id in the cache.
        UserError: the checkpoint lacks EnCodec weights (from_pretrained would leave them silently random).
    """
    audiocraft = audiocraft_file(path, audiocraft_format.CODEC_FILE)
    if audiocraft is not None:
        model = load_audiocraft_codec(audiocraft)
    else:
        folder = local_checkpoint(path, label="codec", where_from=_where_from(), cache_dir=cache_dir)
        # A composite goes through MusicgenForConditionalGeneration: straight into EncodecModel it would
        # also fall back to the 24 kHz default config.
        model = load_part(folder, part="audio_encoder", standalone=EncodecModel, standalone_type="encodec",
                          weights="EnCodec", where_from=_where_from())
    if is_random_stand_in(model.config):
        known = _load_latents(folder)
        if known:
            setattr(model, LATENTS_ATTR, known)
        try:
            embedded = EmbeddedDecoder.load(folder)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if embedded is not None:
            setattr(model, EMBEDDED_ATTR, embedded)
            log.warning("%s is an EnCodec with RANDOM weights (codebooks calibrated by codec_init): decoding uses its "
                        "%s (%s); use %s or %s for EnCodec's real audio", path, EMBEDDED_DESCRIPTION, EMBEDDED_FILE,
                        HUB_ID, MUSICGEN_HUB_ID)
        else:
            log.warning("%s is an EnCodec with RANDOM weights (codebooks calibrated by the codec_init stage) and no "
                        "%s: its codes are usable tokens, but its decoder is random, so decoded audio is not music "
                        "(rerun codec_init to fit the embedded decoder); use %s or %s for real codes and audio",
                        path, EMBEDDED_FILE, HUB_ID, MUSICGEN_HUB_ID)
    return model.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------------------------- coding

def is_random_codec(path: str | Path) -> bool:
    """True when ``path`` is one of our random-weight codecs (``codec_init``): its own decoder makes noise, not music."""
    config = Path(path) / "config.json"
    return config.is_file() and is_random_stand_in(json.loads(config.read_text()))


def has_embedded_decoder(path: str | Path) -> bool:
    """True when the codec folder ``path`` holds a fitted embedded decoder (random codecs from ``codec_init``)."""
    return (Path(path) / EMBEDDED_FILE).is_file()


def audio_digest(audio: np.ndarray) -> str:
    """sha256 of a clip's float32 samples and shape: which audio a stored encoder frame sequence belongs to."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    return hashlib.sha256(repr(audio.shape).encode() + audio.tobytes()).hexdigest()


def _save_latents(folder: Path, audios: Sequence[np.ndarray], frames: np.ndarray, per_clip: Sequence[int],
                  device: torch.device) -> None:
    """``frames`` float32 ``[N, D]`` (every clip's encoder frames, stacked) -> ``folder/LATENTS_FILE``."""
    np.savez(folder / LATENTS_FILE, frames=frames, lengths=np.asarray(per_clip, np.int64),
             digests=np.asarray([audio_digest(a) for a in audios]), device=np.asarray(device.type))


def _load_latents(folder: Path) -> dict[tuple[str, str], torch.Tensor]:
    """``{(device type, audio digest): float32 [D, T]}`` from ``folder/LATENTS_FILE`` (empty without the file)."""
    path = Path(folder) / LATENTS_FILE
    if not path.is_file():
        return {}
    with np.load(path) as stored:
        frames = torch.from_numpy(stored["frames"])
        chunks = torch.split(frames, stored["lengths"].tolist())
        device = str(stored["device"])
        return {(device, digest): chunk.t() for digest, chunk in zip(stored["digests"].tolist(), chunks)}


def _stored_latents(model: EncodecModel, audios: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor | None:
    """The encoder frames ``[1, D, T]`` codec_init computed for exactly this one clip (``audios`` ``[1, 1, S]``
    or a list of one ``[1, S]``) on this device type in float32, else None: the same numbers the encoder
    would give here. A codec without stored frames returns at once (no hashing on that path)."""
    known = getattr(model, LATENTS_ATTR, None)
    if not known or model.dtype != torch.float32 or len(audios) != 1:
        return None
    latents = known.get((model.device.type, audio_digest(audios[0])))
    return None if latents is None else latents[None].to(model.device)


def _as_batch(audios: np.ndarray | Sequence[np.ndarray], model: EncodecModel) -> torch.Tensor:
    """float ``[B, 1, S]`` (or a list of ``[1, S]``) -> tensor ``[B, 1, S]`` on the model's device and dtype."""
    batch = np.asarray(audios, dtype=np.float32) if not isinstance(audios, np.ndarray) else audios
    channels = model.config.audio_channels
    if batch.ndim != 3 or batch.shape[1] != channels or batch.shape[2] == 0:
        raise ValueError(f"audio must be [{channels}, S] per clip (S > 0) at {model.config.sampling_rate} Hz, "
                         f"got {tuple(batch.shape[1:]) if batch.ndim == 3 else batch.shape}")
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(model.device, model.dtype)


def encode_batch(model: EncodecModel, audios: np.ndarray | Sequence[np.ndarray],
                 bandwidth: float = 2.2) -> np.ndarray:
    """Codes of equal-length clips in one forward: for GPUs (on 2 CPU cores, 16 clips of 8 s took
    15 s batched against 9-11 s one by one).

    Batched float math can flip a near-tie between two entries, so a clip's codes may differ from
    ``encode``'s in rare frames; use one of the two consistently.

    Args:
        audios: float32 ``[B, 1, S]`` or a list of ``[1, S]``, at ``model.config.sampling_rate``.
        bandwidth: kbps, one of ``model.config.target_bandwidths``; 2.2 gives 4 codebooks.

    Returns:
        int16 ``[B, K, T]``, ``T = ceil(S / hop)`` (hop 640): transformers pads the last partial hop
        (reflect padding in its convolutions), so a partial hop still gets a frame.
    """
    if model.config.codebook_size > 2 ** 15:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit int16 codes")
    batch = _as_batch(audios, model)
    stored = _stored_latents(model, audios)
    with torch.inference_mode():
        if stored is not None:
            return _quantize(model, stored, bandwidth)[None]
        codes = model.encode(batch, bandwidth=bandwidth).audio_codes                    # [1, B, K, T]
    return codes[0].to(torch.int16).cpu().numpy()


def _quantize(model: EncodecModel, hidden: torch.Tensor, bandwidth: float) -> np.ndarray:
    """One clip's encoder output ``[1, D, T]`` -> its int16 codes ``[K, T]`` (the quantizer's half of ``encode``)."""
    return model.quantizer.encode(hidden, bandwidth)[:, 0].to(torch.int16).cpu().numpy()       # [K, 1, T] -> [K, T]


def encode(model: EncodecModel, audio: np.ndarray, bandwidth: float = 2.2) -> np.ndarray:
    """Codes of one clip: float32 ``[1, S]`` at 32 kHz -> int16 ``[K, T]``, ``T = ceil(S / 640)``, K = 4 at 2.2 kbps.

    ``S = 640 * 50 * seconds`` gives exactly ``50 * seconds`` frames.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio must be [C, S] (mono: [1, S]), got shape {audio.shape}")
    return encode_batch(model, audio[None], bandwidth)[0]


def encode_clips(model: EncodecModel, audios: Sequence[np.ndarray], bandwidth: float = 2.2) -> list[np.ndarray]:
    """Codes of several clips, each as :func:`encode` gives it: float32 ``[1, S_i]`` -> int16 ``[K, T_i]``.

    Clips whose encoder frames codec_init stored are quantized from them; the others go through
    :func:`encoder_outputs` (the encoder's LSTM batched over clips of equal length), unless the codec
    normalises or chunks its input (24/48 kHz EnCodec), which ``model.encode`` does clip by clip.
    """
    if model.config.normalize or model.config.chunk_length is not None:
        return [encode(model, audio, bandwidth) for audio in audios]
    if model.config.codebook_size > 2 ** 15:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit int16 codes")
    codes: list[np.ndarray | None] = [None] * len(audios)
    fresh = []
    with torch.inference_mode():
        for index, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 2:
                raise ValueError(f"audio must be [C, S] (mono: [1, S]), got shape {audio.shape}")
            stored = _stored_latents(model, [audio])
            if stored is not None:
                codes[index] = _quantize(model, stored, bandwidth)
            else:
                fresh.append(index)
        for index, hidden in zip(fresh, encoder_outputs(model, [audios[i] for i in fresh])):
            codes[index] = _quantize(model, hidden[None], bandwidth)
    return codes


def decode(model: EncodecModel, codes: np.ndarray) -> np.ndarray:
    """Audio of codes: int ``[K, T]`` -> float32 ``[1, T * hop]`` at ``model.config.sampling_rate``.

    A random-weights codec loaded with its embedded decoder (``load_codec``) decodes with that
    (a fitted spectral lookup plus Griffin-Lim); any other codec with its own EnCodec decoder.
    """
    codes = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=model.device)
    if codes.ndim != 2 or codes.shape[0] > len(model.quantizer.layers):
        raise ValueError(f"codes must be [K, T] with K <= {len(model.quantizer.layers)}, got {tuple(codes.shape)}")
    embedded = getattr(model, EMBEDDED_ATTR, None)
    if embedded is not None:
        return embedded.decode(codes.cpu().numpy())
    with torch.inference_mode():
        audio = model.decode(codes[None, None], [None]).audio_values  # [1, 1, S]
    return audio[0].float().cpu().numpy()


def codebook_usage(codes: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """How much of each codebook a set of codes uses.

    Args:
        codes: int ``[K, T]``, or a list of ``[K, T_i]`` (pooled).

    Returns:
        ``(used, entropy)``: int64 ``[K]`` distinct entries seen, float64 ``[K]`` entropy in nats of the
        code histogram (ln 2048 = 7.62 at most for 2048 entries).
    """
    pooled = np.concatenate([np.asarray(c) for c in codes], axis=1) if not isinstance(codes, np.ndarray) else codes
    used, entropy = [], []
    for row in pooled.astype(np.int64):
        counts = np.bincount(row)
        p = counts[counts > 0] / row.size
        used.append(p.size)
        entropy.append(float(-(p * np.log(p)).sum()))
    return np.asarray(used, np.int64), np.asarray(entropy, np.float64)


# ----------------------------------------------------------------------------------------------- calibration

# Clips whose LSTM (and the layers after it) run as one batch in encoder_outputs: on 2 CPU cores the
# 32 kHz encoder's LSTM took 0.36 s per 6 s clip alone and 0.14 s in batches of 16, while its
# convolutions are no faster batched (measured slower), so only the tail is batched.
ENCODER_TAIL_BATCH = 16


def encoder_outputs(model: EncodecModel, audios: Sequence[np.ndarray], desc: str | None = None) -> list[torch.Tensor]:
    """The encoder's output of each clip, float ``[D, T_i]`` on the model's device, in clip order.

    The encoder's layers up to its LSTM run clip by clip, the LSTM and the layers after it on up to
    ``ENCODER_TAIL_BATCH`` clips of equal frame count at once: the encoder's output, up to the float
    rounding of batched matrix products.

    Args:
        audios: float32 ``[1, S_i]`` clips at ``model.config.sampling_rate``; ``T_i = ceil(S_i / hop)``.
        desc: a progress bar's label (None: no bar).
    """
    layers = list(model.encoder.layers)
    split = next((i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM)), len(layers))
    head, tail = layers[:split], layers[split:]
    outputs: list[torch.Tensor | None] = [None] * len(audios)
    pending: dict[int, list[tuple[int, torch.Tensor]]] = {}   # frame count -> (clip index, [1, C, T]) waiting for the tail

    def run_tail(waiting: list[tuple[int, torch.Tensor]]) -> None:
        hidden = torch.cat([h for _, h in waiting])                                       # [B, C, T]
        for layer in tail:
            hidden = layer(hidden)                                                        # -> [B, D, T]
        for (index, _), clip in zip(waiting, hidden):
            outputs[index] = clip

    with torch.inference_mode():
        for index, audio in enumerate(tqdm(audios, desc=desc, unit="clip", leave=False, disable=desc is None)):
            hidden = _as_batch(np.asarray(audio, dtype=np.float32)[None], model)         # [1, 1, S]
            for layer in head:
                hidden = layer(hidden)
            waiting = pending.setdefault(hidden.shape[-1], [])
            waiting.append((index, hidden))
            if len(waiting) == ENCODER_TAIL_BATCH:
                run_tail(pending.pop(hidden.shape[-1]))
        for waiting in pending.values():
            run_tail(waiting)
    return outputs


def encoder_frames(model: EncodecModel, audios: Sequence[np.ndarray]) -> torch.Tensor:
    """Encoder outputs before quantization, every clip's frames stacked: float32 ``[N, D]`` on the CPU
    (:func:`encoder_outputs`).

    Args:
        audios: float32 ``[1, S_i]`` clips at ``model.config.sampling_rate``; N = sum of ceil(S_i / hop).
    """
    return torch.cat([hidden.t().float().cpu() for hidden in encoder_outputs(model, audios, "codec_init: encoder frames")])


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest centroid for each row of ``x`` ``[N, D]``: int64 ``[N]``.

    The arithmetic of ``EncodecEuclideanCodebook.quantize``, in row chunks so that no ``[N, C]``
    distance matrix of the whole set is ever held.
    """
    c_sq = centroids.pow(2).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, x.shape[0], chunk):
        rows = x[start:start + chunk]
        dist = -(rows.pow(2).sum(1, keepdim=True) - 2 * rows @ centroids.t() + c_sq)
        out[start:start + chunk] = dist.max(dim=-1).indices
    return out


def _kmeans(x: torch.Tensor, size: int, *, init_frames: int, iterations: int,
            generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of ``x`` ``[N, D]`` into ``size`` centroids ``[size, D]``, seeded through ``generator``."""
    n = x.shape[0]
    # Noise far below the data's spread: duplicated seeds (fewer frames than entries) split apart
    # in the first iteration instead of staying identical forever.
    jitter = 1e-4 * float(x.std()) + 1e-12

    def noise(rows: int) -> torch.Tensor:
        return jitter * torch.randn(rows, x.shape[1], generator=generator)

    pool = x[torch.randperm(n, generator=generator)[:init_frames]]
    pick = (torch.randperm(len(pool), generator=generator)[:size] if len(pool) >= size
            else torch.randint(len(pool), (size,), generator=generator))
    centroids = pool[pick] + noise(size)
    for _ in range(iterations):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=size)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = sums / counts.clamp(min=1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            centroids[empty] = x[torch.randint(n, (len(empty),), generator=generator)] + noise(len(empty))
    return centroids


def _outside(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` points ``[count, D]`` at 4 radii from the centre of ``x`` ``[N, D]``, in random directions.

    Every frame of ``x``, and so every centroid (a mean of frames), lies within one radius of the
    centre: a frame is at most 2 radii from any centroid and at least 3 from these points, so no
    frame of ``x`` is ever quantized to them.
    """
    centre = x.mean(0)
    radius = max(float((x - centre).norm(dim=1).max()), 1e-6)
    directions = torch.randn(count, x.shape[1], generator=generator)
    return centre + 4 * radius * directions / directions.norm(dim=1, keepdim=True)


def calibrate_codebooks(model: EncodecModel, audios: Sequence[np.ndarray], *, init_frames: int = 2048,
                        iterations: int = 8, seed: int = 0, min_frames_per_entry: int = 4,
                        bandwidth: float | None = None) -> dict:
    """Fit the RVQ codebooks by residual k-means on the encoder frames of ``audios``, in place.

    Codebook k is Lloyd's k-means (``iterations`` passes over all frames, empty entries re-seeded
    from random frames) of what codebooks 1..k-1 leave, initialised from ``init_frames`` sampled
    frames; the quantized vectors are then subtracted for the next one. The buffers are written the
    way EnCodec's EMA codebook keeps them: ``embed`` the centroids, ``cluster_size`` the frame counts,
    ``embed_avg = embed * cluster_size``, ``inited = 1``.

    At most N / ``min_frames_per_entry`` entries are fitted: with fewer frames per entry, k-means gives
    single frames their own entry, their residual is exactly zero, and the next codebooks end up
    quantizing float rounding noise (measured: 3200 frames into 2048 entries left codebook 4's codes
    99% different between batched and one-by-one encoding). The entries left over are placed outside
    the frames' reach (``_outside``), so they stay unused but decode to audio of sane magnitude.

    Args:
        audios: float32 ``[1, S_i]`` clips at ``model.config.sampling_rate``.
        min_frames_per_entry: 1 fits every entry whenever N >= codebook_size.
        bandwidth: kbps whose codebooks are fitted; None = every quantizer layer (4 for 32 kHz).

    Returns:
        ``frames`` N, ``codebook_size``, ``entries_fitted``, and per codebook ``entries_used`` and
        ``entropy_nats`` of the code histogram over the N frames, and ``residual_variance``: the share
        of the frames' variance that codebooks 1..k leave.
    """
    return _calibrate(model, audios, init_frames=init_frames, iterations=iterations, seed=seed,
                      min_frames_per_entry=min_frames_per_entry, bandwidth=bandwidth)[0]


def _calibrate(model: EncodecModel, audios: Sequence[np.ndarray], *, init_frames: int, iterations: int, seed: int,
               min_frames_per_entry: int, bandwidth: float | None) -> tuple[dict, list[np.ndarray], np.ndarray]:
    """:func:`calibrate_codebooks`, also returning each clip's codes int64 ``[K, T_i]`` as the fit assigned them
    and the encoder frames float32 ``[N, D]`` it fitted them on."""
    if not len(audios):
        raise ValueError("no audio to calibrate the codebooks on")
    x = encoder_frames(model, audios)
    frames = x.numpy().copy()   # x becomes the k-means residual below
    generator = torch.Generator().manual_seed(seed)
    size = int(model.config.codebook_size)
    fitted = max(1, min(size, x.shape[0] // min_frames_per_entry))
    variance = max(float((x - x.mean(0)).pow(2).sum()), 1e-30)
    residual = x  # updated in place: x is ours
    codes, left = [], []
    layers = model.quantizer.layers[:num_codebooks(model, bandwidth)]
    for k, layer in enumerate(tqdm(layers, desc="codec_init: k-means", unit="codebook", leave=False)):
        centroids = _kmeans(residual, fitted, init_frames=init_frames, iterations=iterations, generator=generator)
        assign = _nearest(residual, centroids)
        embed = torch.cat([centroids, _outside(residual, size - fitted, generator)])
        counts = torch.bincount(assign, minlength=size).float()
        book = layer.codebook
        with torch.no_grad():
            book.embed.copy_(embed)
            book.cluster_size.copy_(counts)
            book.embed_avg.copy_(embed * counts[:, None])
            book.inited.fill_(1.0)
        residual -= centroids[assign]
        codes.append(assign.numpy())
        left.append(float(residual.pow(2).sum()) / variance)
        log.info("codebook %d: %d of %d fitted entries used, %.4f of the variance left",
                 k + 1, int((counts > 0).sum()), fitted, left[-1])
    used, entropy = codebook_usage(np.stack(codes))
    stats = dict(frames=int(x.shape[0]), codebook_size=size, entries_fitted=fitted, entries_used=used.tolist(),
                 entropy_nats=[round(e, 4) for e in entropy.tolist()],
                 residual_variance=[round(e, 5) for e in left])
    hop = int(np.prod(model.config.upsampling_ratios))
    per_clip = [math.ceil(np.shape(audio)[-1] / hop) for audio in audios]
    if sum(per_clip) != x.shape[0]:
        raise RuntimeError(f"the encoder gave {x.shape[0]} frames, not ceil(S / {hop}) per clip")
    return stats, np.split(np.stack(codes).astype(np.int64), np.cumsum(per_clip)[:-1], axis=1), frames


def random_codec(seed: int, config: EncodecConfig | None = None) -> EncodecModel:
    """An ``EncodecModel`` of seeded random weights (eval), ``encodec_32khz_config()`` unless ``config``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EncodecModel(config or encodec_32khz_config()).eval()


def save_calibrated_random_codec(folder: Path | str, audios: Sequence[np.ndarray], *, seed: int = 0,
                                 init_frames: int = 2048, iterations: int = 8, min_frames_per_entry: int = 4,
                                 config: EncodecConfig | None = None) -> dict:
    """Write a random-weights EnCodec with calibrated codebooks, and its embedded decoder, to ``folder``
    (``save_pretrained`` + ``embedded_decoder.npz``, atomically), with the clips' encoder frames
    (``calibration_latents.npz``): ``load_codec`` attaches them, so ``encode`` of exactly one of these clips
    quantizes its stored frames instead of running the encoder again (the same codes, without the cost).

    Its config.json carries ``v2m_random_weights: true`` (``load_codec`` warns) and ``v2m_calibration``
    (the recipe, ``calibrate_codebooks``' stats and the embedded decoder's fit under ``decoder``).
    The embedded decoder (:mod:`pipeline.features.embedded_decoder`) is fitted on the same audio
    and the codes the calibration assigned to it. Same seed and audio, same weights.

    Args:
        audios: float32 ``[1, S_i]`` clips at 32 kHz (the sample set's train-split accompaniment).
        config: architecture; default ``encodec_32khz_config()`` (tests use tiny ones).

    Returns:
        The calibration stats (see ``calibrate_codebooks``).
    """
    model = random_codec(seed, config)
    stats, codes, frames = _calibrate(model, audios, init_frames=init_frames, iterations=iterations, seed=seed,
                              min_frames_per_entry=min_frames_per_entry, bandwidth=None)
    decoder = EmbeddedDecoder.fit(codes, audios, int(model.config.codebook_size),
                                  sample_rate=int(model.config.sampling_rate))
    stats["decoder"] = {"file": EMBEDDED_FILE, **decoder.stats}
    log.info("embedded decoder fitted on %d frames: %.3f of the log spectra's variance explained",
             decoder.stats["frames"], decoder.stats["explained"][-1])
    setattr(model.config, RANDOM_MARKER, True)
    setattr(model.config, CALIBRATION_KEY, dict(seed=seed, init_frames=init_frames, iterations=iterations,
                                                min_frames_per_entry=min_frames_per_entry, clips=len(audios), **stats))
    with atomic_path(folder) as temp:
        model.save_pretrained(temp)
        decoder.save(temp)
        _save_latents(temp, audios, frames, [c.shape[1] for c in codes], model.device)
    return stats


def calibrate_embedded_codec(folder: Path | str, audios: Sequence[np.ndarray],
                             calibration: CodecCalibrationParams) -> dict:
    """The embedded default's codec from ``features.codes.calibration``: what the codec_init stage and the
    learning benchmark both call. ``audios``: float32 ``[1, S_i]`` train-split clips at 32 kHz."""
    return save_calibrated_random_codec(folder, audios, seed=calibration.seed, init_frames=calibration.init_frames,
                                        iterations=calibration.iterations,
                                        min_frames_per_entry=calibration.min_frames_per_entry,
                                        config=encodec_32khz_config(num_filters=calibration.num_filters))
