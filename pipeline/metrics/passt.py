"""PaSST-S, the AudioSet classifier behind the published KL divergence (shared docs/metrics.md).

audiocraft's ``PasstKLDivergenceMetric`` runs hear21passt's ``get_basic_model(mode='logits')``; for
music it uses the 20-second model (``config/solver/musicgen/default.yaml``: ``metrics.kld.passt.
pretrained_length: 20`` -> ``hear21passt.base20sec``; older audiocraft spelled it ``base_20sec``),
whose weights are the release file ``passt-s-f128-20sec-p16-s10-ap.474-swa.pt``. This module is our own
plain-torch rewrite of that inference path (no torchaudio, no timm, no hear21passt): the mel front
end, the transformer with the release file's key names, and the segmenting audiocraft applies.

Facts and where they come from ("hear21passt" = github.com/kkoutini/passt_hear21, read through
the code search; "PaSST repo" = github.com/kkoutini/PaSST):

Front end (``hear21passt/models/preprocess.py``, class ``AugmentMelSTFT``, built in
``hear21passt/base.py`` / ``base30sec.py`` as ``n_mels=128, sr=32000, win_length=800, hopsize=320,
n_fft=1024, fmin=0.0, fmax=None, fmin_aug_range=10, fmax_aug_range=2000``; ``base20sec.py`` itself
was not readable in the code index, so its front end is taken to be that of ``base.py`` and
``base30sec.py``, which agree, with ``get_model_passt(arch="passt_20sec", input_tdim=2000)`` as
third-party code calls it), eval mode:

- pre-emphasis: ``conv1d`` with kernel ``[-0.97, 1]`` and no padding, so ``y[n] = x[n+1] - 0.97 x[n]``
  and the signal loses one sample;
- ``torch.stft(n_fft=1024, hop_length=320, win_length=800, center=True, normalized=False,
  window=torch.hann_window(800, periodic=False))``: a symmetric Hann window, which torch.stft
  zero-pads to 1024 (112 zeros each side); the pad mode is torch.stft's default, ``reflect``;
- power spectrum ``re^2 + im^2`` (audiocraft wraps the call with ``return_complex=False``);
- mel banks ``torchaudio.compliance.kaldi.get_mel_banks(128, 1024, 32000, fmin, fmax,
  vtln_low=100, vtln_high=-500, vtln_warp_factor=1.0)`` (no warping at factor 1.0), padded with
  one zero column for the Nyquist bin. In eval, ``fmin = 0`` and ``fmax = sr // 2 -
  fmax_aug_range // 2 = 16000 - 1000 = 15000`` Hz (the random fmin/fmax jitter is training only);
- ``log(mel + 1e-5)``, then ``(x + 4.5) / 5`` ("fast normalization"); frequency/time masking is
  training only.

Hence ``T = 1 + (S - 1) // 320`` frames for ``S`` samples (one sample fewer after the
pre-emphasis, then a centered STFT): a 20 s segment (640000 samples) gives 2000 frames.

Kaldi mel banks (torchaudio's ``compliance.kaldi.get_mel_banks``, its port of Kaldi's, read as source):
``mel(f) = 1127 ln(1 + f / 700)``; ``n_mels`` triangles equally spaced in mel between ``mel(fmin)``
and ``mel(fmax)`` with ``delta = (mel(fmax) - mel(fmin)) / (n_mels + 1)``; bin ``m`` has left, centre
and right edges ``mel(fmin) + (m, m + 1, m + 2) * delta`` and weight
``max(0, min((mel - left) / (centre - left), (right - mel) / (right - centre)))`` at the FFT bins
``f_k = k * sr / n_fft`` for ``k < n_fft / 2`` (peak 1, no area normalisation).

Network (``hear21passt/models/passt.py`` and the PaSST repo's ``models/passt.py``, class ``PaSST``;
``passt_s_f128_20sec_p16_s10_ap474_swa`` builds it with ``patch_size=16, embed_dim=768, depth=12,
num_heads=12, distilled=True`` and ``get_model(arch="passt_20sec", input_tdim=2000, fstride=10,
tstride=10, input_fdim=128, n_classes=527)``; ``mlp_ratio=4, qkv_bias=True`` are the class defaults):

- ``patch_embed.proj``: Conv2d(1, 768, kernel 16, stride 10) over the ``[1, 128, T]`` mel image;
  12 frequency x ``(T - 16) // 10 + 1`` time patches;
- separate positional embeddings: ``freq_new_pos_embed [1, 768, 128 // 10, 1]`` and
  ``time_new_pos_embed [1, 768, 1, input_tdim // 10]`` (grid = size // stride, so 200 columns for
  the 20 s model, of which 199 are used by 2000 frames); at eval the time embedding is cut to the
  input's patch columns, which is what lets shorter clips through;
- patches flattened frequency-major, then ``[cls, dist, patches]`` with ``cls_token + new_pos_embed[:, 0]``
  and ``dist_token + new_pos_embed[:, 1]``;
- 12 pre-norm blocks (``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, GELU, mlp.fc2``), LayerNorm
  eps 1e-6 (``partial(nn.LayerNorm, eps=1e-6)``), then ``norm``;
- output: ``head(mean(cls, dist))`` where ``head = Sequential(LayerNorm(768), Linear(768, 527))``;
  note that LayerNorm has torch's default eps 1e-5. ``PaSST.forward`` returns ``(logits, features)``
  with ``features = (x[:, 0] + x[:, 1]) / 2`` and ``logits = self.head(features)``; hear21passt's
  ``PasstBasicWrapper`` in ``mode='logits'`` returns those logits. ``head_dist`` (Linear(768, 527))
  is in the checkpoint but unused at inference in both repositories (the averaging is of the two
  token features, not of two heads' logits).
- no dropout / drop-path / patchout at eval.

Checkpoint file (hear21passt ``default_cfgs['passt-s-f128-20sec-p16-s10-ap474-swa']``, url
``https://github.com/kkoutini/PaSST/releases/download/v0.0.5/passt-s-f128-20sec-p16-s10-ap.474-swa.pt``;
older PaSST-repo configs point at the same name under ``v0.0.3-audioset``): loaded by timm-style
``load_pretrained``: ``torch.load`` of the cached download (``<torch hub dir>/checkpoints/<file>``),
the PaSST filter (unwraps a ``'model'`` entry if any; the release files are flat state dicts, as
third-party code indexes ``torch.load(<10 s file>)['head.1.weight']`` directly), then
``model.load_state_dict(strict=True)``. So its key names and shapes are those of
``PaSST.state_dict()``; see :func:`official_key_shapes`. Size check: a third-party download table
lists the file at 344975942 bytes; this key list holds 86231326 float32 values = 344925304 bytes,
and ``torch.save`` of our full-size ``state_dict`` gives 344982679 bytes (the rest is zip/pickle
overhead, which depends on names and alignment). That rules out other layouts (a 3-channel patch
conv would add 1.5 MB) but cannot tell 200 from 199 time columns (3 KB): the 200 rests on the code
(``grid_size = img_size // stride``).

Our code differs only where it cannot matter for the numbers beyond float rounding: the mel banks
are computed in float64 then cast (torchaudio computes them in float32), attention uses
``scaled_dot_product_attention``, and audio at other rates is resampled with soxr, not julius.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.audio import mono_resampled
from pipeline.checkpoints import read_state_dict
from pipeline.errors import UserError

SAMPLE_RATE = 32_000
N_CLASSES = 527
CHECKPOINT_FILE = "passt-s-f128-20sec-p16-s10-ap.474-swa.pt"
CHECKPOINT_URL = f"https://github.com/kkoutini/PaSST/releases/download/v0.0.5/{CHECKPOINT_FILE}"
WHERE_FROM = (f"the KL divergence needs PaSST's 20-second AudioSet checkpoint {CHECKPOINT_FILE} "
              f"(a flat PyTorch state dict, ~345 MB) from {CHECKPOINT_URL} "
              "(https://github.com/kkoutini/PaSST/releases); nothing is downloaded here: copy it to this "
              "path, or to the torch hub cache where hear21passt keeps it")

# PaSST-S as released (paper size); see the module docstring for the source of each number.
PAPER_ARCH = dict(embed_dim=768, depth=12, heads=12, mlp_ratio=4.0, patch=16, stride=10, n_mels=128,
                  max_time_frames=2000, classes=N_CLASSES)

# AugmentMelSTFT in eval mode, as hear21passt builds it.
FRONT_END = dict(sample_rate=SAMPLE_RATE, n_fft=1024, win_length=800, hop=320, fmin=0.0, fmax=15_000.0,
                 preemphasis=0.97, log_offset=1e-5, shift=4.5, scale=5.0)


class PasstCheckpointError(UserError):
    """The PaSST checkpoint cannot be used: its keys or shapes are not the release file's."""


class PasstCheckpointMissing(PasstCheckpointError, FileNotFoundError):
    """No PaSST checkpoint at the given path (nothing is ever downloaded)."""


# ----------------------------------------------------------------------------------------- front end

def hz_to_kaldi_mel(freq):
    """Kaldi's mel scale ``1127 ln(1 + f / 700)`` (natural log), for floats or arrays."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_to_hz(mel):
    """Inverse of :func:`hz_to_kaldi_mel`: ``700 (exp(mel / 1127) - 1)``."""
    return 700.0 * np.expm1(np.asarray(mel, dtype=np.float64) / 1127.0)


def kaldi_mel_banks(n_mels: int = 128, n_fft: int = 1024, sample_rate: int = SAMPLE_RATE,
                    fmin: float = 0.0, fmax: float = 15_000.0) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi-style triangular mel filters over the ``n_fft // 2 + 1`` power-spectrum bins.

    Triangles are equally spaced in Kaldi mel between ``fmin`` and ``fmax`` (``n_mels + 2`` edge
    points), peak 1 at their centre, and are evaluated at ``f_k = k * sample_rate / n_fft`` for
    ``k < n_fft / 2``; the Nyquist bin's column is zero (hear21passt pads torchaudio's
    ``[n_mels, n_fft / 2]`` banks with one zero column).

    Returns:
        ``(weights float64 [n_mels, n_fft // 2 + 1], centre frequencies in Hz float64 [n_mels])``.
    """
    if n_fft % 2 or n_mels < 4:
        raise ValueError(f"need an even n_fft and at least 4 mel bins, got n_fft={n_fft}, n_mels={n_mels}")
    nyquist = sample_rate / 2
    if not 0.0 <= fmin < fmax <= nyquist:
        raise ValueError(f"need 0 <= fmin < fmax <= {nyquist}, got fmin={fmin}, fmax={fmax}")
    mel_lo, mel_hi = float(hz_to_kaldi_mel(fmin)), float(hz_to_kaldi_mel(fmax))
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    index = np.arange(n_mels, dtype=np.float64)[:, None]
    left, centre, right = (mel_lo + (index + k) * delta for k in (0.0, 1.0, 2.0))
    fft_mel = hz_to_kaldi_mel(np.arange(n_fft // 2, dtype=np.float64) * sample_rate / n_fft)[None, :]
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights = np.concatenate([weights, np.zeros((n_mels, 1))], axis=1)
    return weights, kaldi_mel_to_hz(centre[:, 0])


def frame_count(n_samples: int, hop: int = 320) -> int:
    """Mel frames the front end gives for ``n_samples``: ``1 + (S - 1) // hop`` (pre-emphasis drops one)."""
    return 1 + (int(n_samples) - 1) // hop


class MelFrontEnd(nn.Module):
    """hear21passt's ``AugmentMelSTFT`` in eval mode: 32 kHz audio ``[B, S]`` -> ``[B, n_mels, T]``.

    ``T = 1 + (S - 1) // hop``. Holds no weights: the window and mel banks are fixed,
    non-persistent buffers, so the model's ``state_dict`` stays the checkpoint's.
    """

    def __init__(self, n_mels: int = 128, sample_rate: int = SAMPLE_RATE, n_fft: int = 1024,
                 win_length: int = 800, hop: int = 320, fmin: float = 0.0, fmax: float = 15_000.0,
                 preemphasis: float = 0.97, log_offset: float = 1e-5, shift: float = 4.5, scale: float = 5.0):
        super().__init__()
        self.n_mels, self.sample_rate, self.n_fft = n_mels, sample_rate, n_fft
        self.win_length, self.hop, self.fmin, self.fmax = win_length, hop, fmin, fmax
        self.preemphasis, self.log_offset, self.shift, self.scale = preemphasis, log_offset, shift, scale
        # Symmetric Hann (periodic=False), as AugmentMelSTFT builds it.
        n = torch.arange(win_length, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (win_length - 1))
        self.register_buffer("window", window.float(), persistent=False)
        banks, _ = kaldi_mel_banks(n_mels, n_fft, sample_rate, fmin, fmax)
        self.register_buffer("mel_banks", torch.from_numpy(banks).float(), persistent=False)

    def power_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``|STFT|^2`` ``[B, n_fft // 2 + 1, 1 + L // hop]`` of ``[B, L]`` (centered, reflect-padded)."""
        spec = torch.stft(audio, self.n_fft, hop_length=self.hop, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True)
        return spec.real.square() + spec.imag.square()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"audio must be [B, S], got shape {tuple(audio.shape)}")
        audio = audio[:, 1:] - self.preemphasis * audio[:, :-1]
        power = self.power_spectrogram(audio)
        mel = torch.matmul(self.mel_banks, power)
        return (torch.log(mel + self.log_offset) + self.shift) / self.scale


# ------------------------------------------------------------------------------------------- network

class _PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=stride)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)   # rows: q | k | v, each heads x head_dim (timm layout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)   # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(nn.Module):
    """PaSST-S with its mel front end: 32 kHz mono ``[B, S]`` -> AudioSet logits ``[B, classes]``.

    Parameter names and shapes are those of the released checkpoints (``state_dict`` holds nothing
    else). Inference only: no dropout, drop-path or patchout.

    Args:
        embed_dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP width ratio.
        patch, stride: square patch size and stride over the mel image (in mel bins and frames).
        n_mels: mel bins of the front end (the image height).
        max_time_frames: frames the time positional embedding was made for (``input_tdim``); it has
            ``max_time_frames // stride`` columns and inputs may use up to that many patch columns.
        classes: output classes (527 AudioSet labels).
        random_init: initialise weights (truncated normal, std 0.02, as PaSST does but with a
            non-zero head). ``False`` leaves them uninitialised, for loading a checkpoint.
    """

    def __init__(self, embed_dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 patch: int = 16, stride: int = 10, n_mels: int = 128, max_time_frames: int = 2000,
                 classes: int = N_CLASSES, random_init: bool = True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        if n_mels < patch:
            raise ValueError(f"n_mels {n_mels} is smaller than the patch {patch}")
        self.arch = dict(embed_dim=embed_dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, patch=patch,
                         stride=stride, n_mels=n_mels, max_time_frames=max_time_frames, classes=classes)
        self.sample_rate = SAMPLE_RATE
        self.mel = MelFrontEnd(n_mels=n_mels, **FRONT_END)
        self.patch_embed = _PatchEmbed(embed_dim, patch, stride)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.empty(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.empty(1, embed_dim, n_mels // stride, 1))
        self.time_new_pos_embed = nn.Parameter(torch.empty(1, embed_dim, 1, max_time_frames // stride))
        self.blocks = nn.Sequential(*(_Block(embed_dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, classes))
        self.head_dist = nn.Linear(embed_dim, classes)   # in the checkpoint; unused at inference
        if random_init:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random weights: truncated normal (std 0.02, cut at +-2) for tokens, embeddings and Linear
        weights, zero biases, unit LayerNorms, torch's default for the patch conv."""
        for param in self.parameters(recurse=False):
            nn.init.trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                module.reset_parameters()

    @property
    def max_patch_columns(self) -> int:
        return self.time_new_pos_embed.shape[-1]

    def logits_from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of a normalised mel image ``[B, n_mels, T]`` (T >= patch)."""
        return self.head(self.embedding_from_mel(mel))

    def embedding_from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """PaSST's features ``[B, embed_dim]`` (``(x[:, 0] + x[:, 1]) / 2``, the mean of the cls and dist
        tokens after the last norm, what ``PaSST.forward`` returns beside the logits) of a mel image."""
        x = self.patch_embed.proj(mel.unsqueeze(1))                    # [B, E, F', T']
        columns = x.shape[-1]
        if columns > self.max_patch_columns:
            raise ValueError(f"{mel.shape[-1]} mel frames give {columns} patch columns, more than the "
                             f"{self.max_patch_columns} of the time positional embedding; cut the audio "
                             f"into shorter segments")
        x = x + self.time_new_pos_embed[..., :columns]
        x = x + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)                               # [B, F' * T', E], frequency-major
        batch = x.shape[0]
        cls = self.cls_token.expand(batch, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(batch, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat((cls, dist, x), dim=1)))
        return (x[:, 0] + x[:, 1]) / 2

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of 32 kHz mono audio ``[B, S]``."""
        return self.logits_from_mel(self.mel(audio))


def official_key_shapes(arch: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """The release checkpoint's ``{key: shape}``, spelled out from PaSST's module layout.

    With the default (paper) architecture this is the content of
    ``passt-s-f128-20sec-p16-s10-ap.474-swa.pt`` (see the module docstring for the sources).
    """
    a = {**PAPER_ARCH, **(arch or {})}
    d, c, p, hidden = a["embed_dim"], a["classes"], a["patch"], int(a["embed_dim"] * a["mlp_ratio"])
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "dist_token": (1, 1, d), "new_pos_embed": (1, 2, d),
        "freq_new_pos_embed": (1, d, a["n_mels"] // a["stride"], 1),
        "time_new_pos_embed": (1, d, 1, a["max_time_frames"] // a["stride"]),
        "patch_embed.proj.weight": (d, 1, p, p), "patch_embed.proj.bias": (d,),
    }
    for i in range(a["depth"]):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (hidden, d), b + "mlp.fc1.bias": (hidden,),
            b + "mlp.fc2.weight": (d, hidden), b + "mlp.fc2.bias": (d,),
        })
    shapes.update({
        "norm.weight": (d,), "norm.bias": (d,),
        "head.0.weight": (d,), "head.0.bias": (d,), "head.1.weight": (c, d), "head.1.bias": (c,),
        "head_dist.weight": (c, d), "head_dist.bias": (c,),
    })
    return shapes


# ------------------------------------------------------------------------------------ checkpoints

def default_checkpoint_path() -> Path:
    """Where hear21passt's download would have cached the 20 s checkpoint: ``<torch hub>/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_FILE


def _arch_from_state(state: Mapping[str, torch.Tensor], path: Path, stride: int) -> dict:
    """Architecture sizes that the tensors' shapes fix (heads, stride and n_mels are not recorded)."""
    needed = ("cls_token", "time_new_pos_embed", "freq_new_pos_embed", "patch_embed.proj.weight",
              "blocks.0.mlp.fc1.weight", "head.1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        found = ", ".join(sorted(state)[:5]) or "nothing"
        raise PasstCheckpointError(f"{path}: not a PaSST checkpoint, it lacks {', '.join(missing)} "
                                   f"(found {found}{', ...' if len(state) > 5 else ''}); {WHERE_FROM}")
    embed_dim = int(state["cls_token"].shape[-1])
    return dict(
        embed_dim=embed_dim,
        depth=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        patch=int(state["patch_embed.proj.weight"].shape[-1]),
        max_time_frames=int(state["time_new_pos_embed"].shape[-1]) * stride,
        classes=int(state["head.1.weight"].shape[0]),
    )


def load_passt(path: str | Path | None = None, **arch) -> PaSST:
    """PaSST in eval mode with the weights of a checkpoint file (never downloads).

    Args:
        path: the release file (``passt-s-f128-20sec-p16-s10-ap.474-swa.pt``) or one written by
            :func:`save_random_passt`; ``None`` looks in the torch hub cache
            (:func:`default_checkpoint_path`).
        **arch: sizes the file cannot tell (``heads``, ``stride``, ``n_mels``); defaults: the
            paper's stride 10 and 128 mel bins, and ``heads = embed_dim // 64`` (PaSST-S: 768 / 64 = 12).

    Raises:
        PasstCheckpointMissing: no file at ``path`` (a ``UserError`` and a ``FileNotFoundError``).
        PasstCheckpointError: unreadable, or keys / shapes other than PaSST's.
    """
    path = Path(path) if path is not None else default_checkpoint_path()
    # PaSST's checkpoint filter accepts DeiT-style {'model': state_dict}, as read_state_dict does
    state = read_state_dict(path, label="PaSST checkpoint", where_from=WHERE_FROM, missing=PasstCheckpointMissing,
                            unreadable=PasstCheckpointError)
    stride = int(arch.get("stride", PAPER_ARCH["stride"]))
    sizes = {**_arch_from_state(state, path, stride), **arch}
    sizes.setdefault("heads", max(1, sizes["embed_dim"] // 64))
    try:
        model = PaSST(**sizes, random_init=False)
    except (TypeError, ValueError) as exc:
        raise PasstCheckpointError(f"{path}: cannot build PaSST with {sizes}: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (PaSST: {expected[k]})"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        problems = [f"{len(found)} {what} (e.g. {found[0]})"
                    for what, found in (("missing", missing), ("unexpected", unexpected),
                                        ("with other shapes", shapes)) if found]
        raise PasstCheckpointError(f"{path}: keys do not match PaSST-S's: {'; '.join(problems)}; {WHERE_FROM}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def save_random_passt(path: str | Path, seed: int = 0, **arch) -> Path:
    """Write a PaSST checkpoint of seeded random weights in the release file's format.

    The file is a flat ``torch.save``'d state dict with the official key names (nothing else), so
    :func:`load_passt` reads it like the real one. Random weights test the code path only: their
    class probabilities mean nothing.

    Args:
        path: file to write (parents are created).
        seed: torch seed for the weights.
        **arch: :class:`PaSST` arguments (tests use a tiny width and depth); default: paper size.
            ``heads`` defaults to ``embed_dim // 64`` (12 at 768), the rule :func:`load_passt`
            assumes; pass the same ``heads`` to both when it differs.
    """
    from pipeline.files import atomic_path

    sizes = {**PAPER_ARCH, **arch}
    if "heads" not in arch:
        sizes["heads"] = max(1, sizes["embed_dim"] // 64)   # the rule load_passt assumes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaSST(**sizes)
    path = Path(path)
    with atomic_path(path) as temp:
        torch.save(model.state_dict(), temp)
    return path


# ----------------------------------------------------------------------------------- segmenting

def split_segments(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, segment_seconds: float = 20.0,
                   min_seconds: float = 0.15) -> list[np.ndarray]:
    """audiocraft's cut: consecutive non-overlapping segments of ``segment_seconds``, no padding;
    a segment of ``min_seconds`` or less (only the last can be) is dropped.

    audiocraft: ``torch.split(wav, int(20 * 32000))`` and keeps ``s.size(-1) > int(0.15 * 32000)``.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono [S], got shape {audio.shape}")
    length, shortest = round(segment_seconds * sample_rate), round(min_seconds * sample_rate)
    if length <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    pieces = (audio[start:start + length] for start in range(0, audio.shape[0], length))
    return [piece for piece in pieces if piece.shape[0] > shortest]


def segment_probabilities(model: PaSST, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                          segment_seconds: float = 20.0, min_seconds: float = 0.15) -> np.ndarray:
    """AudioSet class probabilities of each segment of a clip, as audiocraft's PaSST KLD computes them.

    The clip is resampled to 32 kHz (soxr; audiocraft uses julius), cut by :func:`split_segments`
    and each segment classified on its own (no padding); each row is ``softmax`` over the logits.
    ``min_seconds = 0.15`` is the shortest input the network takes: 4801 samples give 16 frames,
    one patch column.

    Args:
        model: from :func:`load_passt`.
        audio: float mono ``[S]`` (``[C, S]`` is averaged to mono first).
        sample_rate: rate of ``audio`` in Hz.

    Returns:
        float64 ``[N_segments, classes]``, rows summing to 1; ``[0, classes]`` for a clip of
        ``min_seconds`` or less.
    """
    return _per_segment(model, audio, sample_rate, segment_seconds, min_seconds, embeddings=False)


def segment_embeddings(model: PaSST, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
                       segment_seconds: float = 20.0, min_seconds: float = 0.15) -> np.ndarray:
    """PaSST embeddings (:meth:`PaSST.embedding_from_mel`) of each segment of a clip, segmented exactly as
    :func:`segment_probabilities`: float64 ``[N_segments, embed_dim]`` (``[0, embed_dim]`` for a clip too short)."""
    return _per_segment(model, audio, sample_rate, segment_seconds, min_seconds, embeddings=True)


def _per_segment(model: PaSST, audio: np.ndarray, sample_rate: int, segment_seconds: float, min_seconds: float,
                 embeddings: bool) -> np.ndarray:
    wav = mono_resampled(audio, sample_rate, model.sample_rate).astype(np.float32)
    segments = split_segments(wav, model.sample_rate, segment_seconds, min_seconds)
    width = model.head[1].in_features if embeddings else model.head[1].out_features
    if not segments:
        return np.zeros((0, width))
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for segment in segments:
            mel = model.mel(torch.from_numpy(np.ascontiguousarray(segment))[None].to(device))
            if embeddings:
                rows.append(model.embedding_from_mel(mel).double()[0].cpu().numpy())
            else:
                rows.append(torch.softmax(model.logits_from_mel(mel).double(), dim=-1)[0].cpu().numpy())
    return np.stack(rows)
