"""CLIP ViT-B/32 visual tokens: every hidden state of the last layer, CLS + 7x7 patches (paper 3.1, 5.1).

A frame becomes ``[50, 768]``: token 0 is CLS, tokens 1..49 the 32x32-pixel patches row by row,
taken from ``CLIPVisionModel(...).last_hidden_state`` (before the post-layernorm, which only
touches the pooled CLS output). The preprocessing is CLIP's own, written here without
torchvision, and bit-identical to ``transformers``' PIL image processor.

Models load only from disk: a ``save_pretrained`` folder (``CLIPVisionModel``, or a full
``CLIPModel`` such as the openai repo, whose vision tower is taken) or a hub id already in the
Hugging Face cache. With no weights at hand, ``save_random_clip_model`` writes the real ViT-B/32
architecture with seeded random weights, so every code path but the weights is the real one.

Frames are uint8 ``[N, H, W, 3]`` RGB; pixels float32 ``[N, 3, 224, 224]``; tokens float16 ``[N, 50, 768]``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import PIL.Image
import torch
from huggingface_hub import constants as hub_constants
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.checkpoints import RANDOM_MARKER, is_random_stand_in, local_checkpoint
from pipeline.config import VisualFeatureParams
from pipeline.errors import UserError
from pipeline.device import resolve_device
from pipeline.files import atomic_path

if TYPE_CHECKING:
    from pipeline.features.open_clip_backend import OpenClipVisual

log = logging.getLogger("v2m.visual")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HIDDEN_STATE = "last_hidden_state"
TOKENS = 50    # 1 CLS + (224 / 32) ** 2 patches; code reads it from the model config
WIDTH = 768
HUB_ID = "openai/clip-vit-base-patch32"
# openai/clip-vit-base-patch32's vision_config, spelled out rather than trusting library defaults.
VIT_B32 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               patch_size=32, image_size=224, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
               projection_dim=512, initializer_factor=1.0, initializer_range=0.02, attention_dropout=0.0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Frames = np.ndarray | Sequence[np.ndarray]


def _lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 ``[3, 256]``: uint8 value -> normalised value per channel.

    The same arithmetic as the processor (``x.astype(float64) * (1/255)`` cast to float32, then
    ``(x - mean) / std`` in float32), so the table gives its values to the bit.
    """
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.asarray(mean, np.float32)[:, None], np.asarray(std, np.float32)[:, None]
    return (scaled[None] - mean32) / std32


def _resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ``[size, size, 3]``: shortest side to ``size`` (PIL bicubic), center crop."""
    height, width = frame.shape[:2]
    # transformers' get_resize_output_image_size: the long side is truncated, not rounded.
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if width <= height else (size, new_long)
    image = PIL.Image.fromarray(np.ascontiguousarray(frame))
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), resample=PIL.Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def preprocess(frames: Frames, image_size: int = 224, mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """CLIP's preprocessing, equal to ``CLIPImageProcessor``'s PIL path to the bit.

    Shortest side to ``image_size`` with PIL bicubic (smaller frames are upscaled), center crop
    ``image_size`` x ``image_size``, scale to [0, 1], normalise by CLIP's mean and std.

    Args:
        frames: uint8 RGB, ``[N, H, W, 3]`` or a sequence of ``[H, W, 3]`` (sizes may differ).

    Returns:
        float32 ``[N, 3, image_size, image_size]``.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise ValueError(f"frames must be [N, H, W, 3]; got one frame of shape {frames.shape} (add a batch axis)")
    out = np.empty((len(frames), 3, image_size, image_size), np.float32)
    lut = _lut(mean, std)
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i}: expected uint8 [H, W, 3] RGB, got {frame.dtype} {frame.shape}")
        crop = _resize_crop(frame, image_size)
        for c in range(3):
            out[i, c] = lut[c][crop[..., c]]
    return torch.from_numpy(out)


def _where_from() -> str:
    return (f"expected a folder with config.json + model.safetensors of a CLIPVisionModel (a full CLIPModel "
            f"folder works too), or the hub id {HUB_ID!r} already in the Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}); nothing is downloaded. On a machine with internet: "
            f"CLIPVisionModel.from_pretrained('{HUB_ID}').save_pretrained(DIR), then copy DIR here. "
            "The embedded default's random-weights model is written by the visual_init stage")


def load_clip_model(model: str | Path, device: str = "auto", dtype: str = "float32",
                    cache_dir: str | Path | None = None) -> CLIPVisionModel:
    """Load a CLIP vision tower in eval mode, from disk only (``local_files_only=True``).

    Args:
        model: a ``save_pretrained`` folder (CLIPVisionModel or full CLIPModel), else a hub id
            in the Hugging Face cache (``cache_dir``, default the standard one).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Raises:
        FileNotFoundError: no such folder with weights, and no such hub id in the cache.
        UserError: the checkpoint lacks CLIP vision weights (they would be silently random).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    folder = local_checkpoint(model, label="CLIP model", where_from=_where_from(), cache_dir=cache_dir)
    vision, info = CLIPVisionModel.from_pretrained(folder, local_files_only=True, dtype=DTYPES[dtype],
                                                   output_loading_info=True)
    if info["missing_keys"]:
        raise UserError(f"{model}: the checkpoint lacks {len(info['missing_keys'])} CLIP vision weights "
                        f"(e.g. {sorted(info['missing_keys'])[0]}); it is not a CLIPVisionModel/CLIPModel checkpoint")
    if is_random_stand_in(vision.config):
        log.warning("%s has RANDOM weights (pipeline.features.visual.save_random_clip_model): its tokens carry no "
                    "semantics; use %s for real features", model, HUB_ID)
    return vision.to(resolve_device(device)).eval()


def random_clip_model(seed: int, **arch) -> CLIPVisionModel:
    """A ``CLIPVisionModel`` of seeded random weights, ViT-B/32 unless ``arch`` overrides ``VIT_B32`` keys.

    ViT-B/32 has 87,456,000 parameters here: openai's often-quoted 87.8M adds the 768x512 visual
    projection, which ``CLIPVisionModel`` does not have (the tokens come before it).
    """
    unknown = set(arch) - set(VIT_B32)
    if unknown:
        raise ValueError(f"unknown CLIP architecture keys {sorted(unknown)}; known: {sorted(VIT_B32)}")
    config = CLIPVisionConfig(**{**VIT_B32, **arch})
    setattr(config, RANDOM_MARKER, True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModel(config).eval()


def save_random_clip_model(folder: Path | str, seed: int, **arch) -> Path:
    """Write ``random_clip_model(seed, **arch)`` with ``save_pretrained`` (safetensors) to ``folder``, atomically.

    The config carries ``v2m_random_weights: true`` so ``load_clip_model`` warns. Same seed, same weights.

    Returns:
        ``folder``.
    """
    model = random_clip_model(seed, **arch)
    with atomic_path(folder) as temp:
        model.save_pretrained(temp, safe_serialization=True)
    return Path(folder)


def token_shape(config: CLIPVisionConfig) -> tuple[int, int]:
    """``(tokens per frame, width)`` of a CLIP vision config: CLS + ``(image / patch) ** 2`` patches, hidden size."""
    return (config.image_size // config.patch_size) ** 2 + 1, config.hidden_size


def encode_frames(model: CLIPVisionModel, pixels: torch.Tensor | np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``last_hidden_state`` of every frame, in batches of ``batch_size``, in the model's device and dtype.

    Args:
        pixels: float ``[N, 3, 224, 224]`` from ``preprocess``.

    Returns:
        float16 ``[N, 50, 768]`` on the CPU (``[N, 1 + (image / patch) ** 2, hidden]`` in general).
    """
    config = model.config
    tokens, width = token_shape(config)
    pixels = torch.as_tensor(pixels)
    expected = (config.num_channels, config.image_size, config.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(f"pixels must be [N, {', '.join(map(str, expected))}], got {tuple(pixels.shape)}")
    out = np.empty((pixels.shape[0], tokens, width), np.float16)
    with torch.inference_mode():
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(model.device, model.dtype)
            hidden = model(pixel_values=batch).last_hidden_state
            out[start:start + batch.shape[0]] = hidden.to(torch.float16).cpu().numpy()
    return out


class TransformersVisual:
    """The ``transformers`` backend (``features.visual.backend``): a ``CLIPVisionModel`` and our
    preprocessing (bit-identical to ``CLIPImageProcessor``). Tokens: ``last_hidden_state``."""

    backend = "transformers"

    def __init__(self, model: CLIPVisionModel):
        self.model = model

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def tokens(self) -> int:
        return token_shape(self.model.config)[0]

    @property
    def width(self) -> int:
        return token_shape(self.model.config)[1]

    def preprocess(self, frames: Frames) -> torch.Tensor:
        """uint8 RGB ``[N, H, W, 3]`` -> float32 ``[N, 3, 224, 224]``."""
        return preprocess(frames, image_size=self.image_size)

    def encode(self, pixels: torch.Tensor | np.ndarray, batch_size: int) -> np.ndarray:
        """float32 ``[N, 3, 224, 224]`` -> float16 ``[N, 50, 768]``."""
        return encode_frames(self.model, pixels, batch_size)


def load_visual_model(visual: VisualFeatureParams, device: str | None = None) -> "TransformersVisual | OpenClipVisual":
    """The CLIP of ``visual`` (``features.visual``) by its ``backend``: a :class:`TransformersVisual`, or an
    :class:`~pipeline.features.open_clip_backend.OpenClipVisual`. Both give the same tokens for the same
    weights (``tests/test_open_clip_backend.py``). ``device`` overrides ``visual.device``."""
    device = visual.device if device is None else device
    if visual.backend == "open_clip":
        from pipeline.features.open_clip_backend import load_open_clip_visual

        return load_open_clip_visual(visual.model, device=device, dtype=visual.dtype)
    return TransformersVisual(load_clip_model(visual.model, device=device, dtype=visual.dtype))


def visual_token_shape(visual: VisualFeatureParams) -> tuple[int, int]:
    """``(tokens per frame, width)`` of ``visual``'s CLIP, read from its config without loading the weights
    (a missing checkpoint fails here, before any work)."""
    if visual.backend == "open_clip":
        from pipeline.features.open_clip_backend import open_clip_token_shape

        return open_clip_token_shape(visual.model)
    folder = local_checkpoint(visual.model, label="CLIP model", where_from=_where_from())
    return token_shape(CLIPVisionConfig.from_pretrained(folder, local_files_only=True))


class ClipModelEncoder:
    """A loaded CLIP (either backend) and a batch size: frames in, tokens out, batched across whatever
    clips it is given.

    Safe to call from one worker thread while others decode (torch and PIL release the GIL); calls
    from several threads take turns, since concurrent forwards would only fight over the cores.
    """

    def __init__(self, model: "TransformersVisual | OpenClipVisual", batch_size: int = 32):
        self.model, self.batch_size = model, batch_size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, visual: VisualFeatureParams, *, device: str | None = None) -> "ClipModelEncoder":
        return cls(load_visual_model(visual, device=device), visual.batch_size)

    @property
    def tokens(self) -> int:
        return self.model.tokens

    @property
    def width(self) -> int:
        return self.model.width

    def encode(self, frames: Frames) -> np.ndarray:
        """uint8 RGB ``[N, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float16 ``[N, 50, 768]``."""
        pixels = self.model.preprocess(frames)
        with self._lock:
            return self.model.encode(pixels, self.batch_size)
