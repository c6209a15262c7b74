"""The ``open_clip`` backend of the visual features (``features.visual.backend: open_clip``): open_clip's
ViT-B-32 from a local weights file, its own preprocessing, its per-frame tokens; and the conversion of
the same weights to transformers' ``CLIPVisionModel`` (the ``transformers`` backend).

open_clip_torch (with the torchvision matched to torch that it needs) is installed by ``setup.sh``; it is
imported only when this backend is used, so the ``transformers`` backend never pays for it.

The tokens are what the visual stage caches from transformers: ``[N, 50, 768]``, CLS + 49 patches
of the last transformer block's output, before ``ln_post`` and the projection (transformers'
``last_hidden_state``, before its ``post_layernorm``).

Key mapping, open_clip ``model.visual`` -> ``CLIPVisionModel``'s vision transformer (``vm``: its
``vision_model`` in transformers 4, the model itself in transformers 5; ``i`` a block):

=============================================  =====================================================
``conv1.weight`` ``[768, 3, 32, 32]``          ``vm.embeddings.patch_embedding.weight``
``class_embedding`` ``[768]``                  ``vm.embeddings.class_embedding``
``positional_embedding`` ``[50, 768]``         ``vm.embeddings.position_embedding.weight``
``ln_pre.*``                                   ``vm.pre_layrnorm.*`` (transformers' spelling)
``transformer.resblocks.i.ln_1.*``             ``vm.encoder.layers.i.layer_norm1.*``
``transformer.resblocks.i.attn.in_proj_*``     ``vm.encoder.layers.i.self_attn.{q,k,v}_proj.*``
``[2304, 768]`` / ``[2304]`` (rows q, k, v)
``transformer.resblocks.i.attn.out_proj.*``    ``vm.encoder.layers.i.self_attn.out_proj.*``
``transformer.resblocks.i.ln_2.*``             ``vm.encoder.layers.i.layer_norm2.*``
``transformer.resblocks.i.mlp.c_fc.*``         ``vm.encoder.layers.i.mlp.fc1.*``
``transformer.resblocks.i.mlp.c_proj.*``       ``vm.encoder.layers.i.mlp.fc2.*``
``ln_post.*``                                  ``vm.post_layernorm.*``
``proj`` ``[768, 512]``                        dropped: after the tokens (``CLIPVisionModel`` has none)
=============================================  =====================================================

The activation differs by weights: openai's CLIP uses QuickGELU, open_clip's ``ViT-B-32`` config
(LAION weights) plain GELU; the converted config takes the model's own.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.checkpoints import RANDOM_MARKER, checkpoint_file
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.features.visual import DTYPES, VIT_B32, Frames
from pipeline.files import atomic_path

log = logging.getLogger("v2m.visual")

ARCHITECTURE = "ViT-B-32"
# what open_clip's hub repositories (laion/CLIP-ViT-B-32-*) name their files
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
WHERE_FROM = ("expected an open_clip ViT-B-32 state dict (openai or LAION weights): a file, or a folder or cached "
              f"hub id holding {' or '.join(WEIGHT_FILES)} (e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K); nothing is "
              "downloaded. The embedded default's random-weights one is written by the visual_init stage when "
              "features.visual.backend is open_clip")

_BLOCK = r"transformer\.resblocks\.(\d+)\."
_LAYER = r"encoder.layers.\1."
_RULES = tuple((re.compile(p + r"\Z"), t) for p, t in (
    (r"conv1\.weight", "embeddings.patch_embedding.weight"),
    (r"class_embedding", "embeddings.class_embedding"),
    (r"positional_embedding", "embeddings.position_embedding.weight"),
    (r"ln_pre\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"ln_post\.(weight|bias)", r"post_layernorm.\1"),
    (_BLOCK + r"ln_1\.(weight|bias)", _LAYER + r"layer_norm1.\2"),
    (_BLOCK + r"ln_2\.(weight|bias)", _LAYER + r"layer_norm2.\2"),
    (_BLOCK + r"attn\.out_proj\.(weight|bias)", _LAYER + r"self_attn.out_proj.\2"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)", _LAYER + r"mlp.fc1.\2"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)", _LAYER + r"mlp.fc2.\2"),
))
_IN_PROJ = re.compile(_BLOCK + r"attn\.in_proj_(weight|bias)\Z")
DROPPED = ("proj",)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise UserError(f"features.visual.backend: open_clip needs the open_clip_torch package ({exc}); "
                        "`bash setup.sh` installs it") from None
    return open_clip


def weights_file(model: str | Path) -> Path:
    """The open_clip weights file named by ``features.visual.model`` (a file, a folder or a cached hub id)."""
    return checkpoint_file(model, names=WEIGHT_FILES, label="open_clip model", where_from=WHERE_FROM)


def load_open_clip(path: Path | str, device: str = "cpu") -> Any:
    """open_clip's ViT-B-32 from a local weights file (``create_model_and_transforms(pretrained=PATH)``).

    Returns:
        ``(model, preprocess)``: the eval-mode ``open_clip.CLIP`` and its own image transform.
    """
    open_clip = _open_clip()
    if not Path(path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint {path}: no such file; {WHERE_FROM}")
    model, _, preprocess = open_clip.create_model_and_transforms(ARCHITECTURE, pretrained=str(path), device=device)
    return model.eval(), preprocess


class OpenClipVisual:
    """The ``open_clip`` backend: an open_clip CLIP and open_clip's own image transform (PIL: shortest side
    to 224 bicubic, center crop, CLIP's mean and std). Tokens: :func:`open_clip_tokens`."""

    backend = "open_clip"

    def __init__(self, model: Any, transform: Any):
        self.model, self.transform = model, transform

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def tokens(self) -> int:
        return int(self.model.visual.positional_embedding.shape[0])

    @property
    def width(self) -> int:
        return int(self.model.visual.conv1.weight.shape[0])

    def preprocess(self, frames: Frames) -> torch.Tensor:
        """uint8 RGB ``[N, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float32 ``[N, 3, 224, 224]``."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            raise ValueError(f"frames must be [N, H, W, 3]; got one frame of shape {frames.shape} (add a batch axis)")
        if len(frames) == 0:
            return torch.zeros((0, 3, self.image_size, self.image_size))
        return torch.stack([self.transform(PIL.Image.fromarray(np.ascontiguousarray(frame))) for frame in frames])

    def encode(self, pixels: torch.Tensor | np.ndarray, batch_size: int) -> np.ndarray:
        """float32 ``[N, 3, 224, 224]`` -> float16 ``[N, 50, 768]``, in batches of ``batch_size``."""
        pixels = torch.as_tensor(pixels)
        parameter = next(self.model.parameters())
        out = np.empty((pixels.shape[0], self.tokens, self.width), np.float16)
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(parameter.device, parameter.dtype)
            out[start:start + batch.shape[0]] = open_clip_tokens(self.model, batch).to(torch.float16).cpu().numpy()
        return out


def load_open_clip_visual(model: str | Path, device: str = "auto", dtype: str = "float32") -> OpenClipVisual:
    """The ``open_clip`` backend for ``features.visual.model`` (warns when it is the random stand-in)."""
    path = weights_file(model)
    clip, transform = load_open_clip(path, device=str(resolve_device(device)))
    clip = clip.to(DTYPES[dtype])
    config = path.parent / CONFIG_FILE
    if config.is_file() and json.loads(config.read_text()).get(RANDOM_MARKER):
        log.warning("%s has RANDOM weights (visual_init's open_clip stand-in): its tokens carry no semantics", path)
    return OpenClipVisual(clip, transform)


def open_clip_token_shape(model: str | Path) -> tuple[int, int]:
    """``(tokens per frame, width)`` of open_clip's ViT-B-32 (50, 768), after checking the weights file exists."""
    weights_file(model)
    vision = _open_clip().get_model_config(ARCHITECTURE)["vision_cfg"]
    return (vision["image_size"] // vision["patch_size"]) ** 2 + 1, vision["width"]


def save_random_open_clip(folder: Path | str, seed: int) -> Path:
    """open_clip's ViT-B-32 with seeded random weights, as ``folder/open_clip_pytorch_model.bin`` beside an
    ``open_clip_config.json`` that carries the random-weights marker; written atomically. Returns ``folder``."""
    open_clip = _open_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCHITECTURE)
    with atomic_path(folder) as temp:
        Path(temp).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(temp) / "open_clip_pytorch_model.bin")
        (Path(temp) / CONFIG_FILE).write_text(json.dumps({"model_name": ARCHITECTURE, RANDOM_MARKER: True}) + "\n")
    return Path(folder)


def open_clip_tokens(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Per-frame tokens of an open_clip CLIP: ``[N, 3, 224, 224]`` -> ``[N, 50, 768]``.

    The output of ``model.visual.transformer`` (the last block, before ``ln_post`` and the
    projection), caught with a forward hook while ``model.visual`` runs, so the rest of open_clip's
    forward is its own.
    """
    caught: list[torch.Tensor] = []
    handle = model.visual.transformer.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        with torch.inference_mode():
            model.visual(pixels)
    finally:
        handle.remove()
    tokens = caught[-1]
    # older open_clip ran its transformer sequence-first ([L, N, D])
    return tokens if getattr(model.visual.transformer, "batch_first", False) else tokens.permute(1, 0, 2)


def _activation(visual: Any) -> str:
    act = type(visual.transformer.resblocks[0].mlp.gelu).__name__
    if act == "QuickGELU":
        return "quick_gelu"
    if act == "GELU":
        return "gelu"
    raise UserError(f"open_clip activation {act} has no transformers counterpart here")


def to_clip_vision(model: Any) -> CLIPVisionModel:
    """The same ViT weights as a transformers ``CLIPVisionModel`` (eval), by the mapping above.

    Raises:
        UserError: a visual weight neither mapped nor dropped, or one the transformers model lacks.
    """
    visual = model.visual
    width = visual.conv1.weight.shape[0]
    config = CLIPVisionConfig(**{**VIT_B32, "hidden_act": _activation(visual),
                                 "num_hidden_layers": len(visual.transformer.resblocks),
                                 "hidden_size": width, "patch_size": visual.conv1.weight.shape[-1]})
    target = CLIPVisionModel(config).eval()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in visual.state_dict().items():
        if key in DROPPED:
            continue
        match = _IN_PROJ.match(key)
        if match:
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                mapped[f"encoder.layers.{match.group(1)}.self_attn.{name}.{match.group(2)}"] = (
                    tensor[j * width:(j + 1) * width].clone())
            continue
        for pattern, template in _RULES:
            match = pattern.match(key)
            if match:
                mapped[match.expand(template)] = tensor
                break
        else:
            raise UserError(f"open_clip visual weight {key!r} has no CLIPVisionModel counterpart")
    vit = getattr(target, "vision_model", target)
    missing = sorted(k for k in vit.state_dict().keys() - mapped.keys() if "position_ids" not in k)
    if missing:
        raise UserError(f"the open_clip model lacks CLIPVisionModel weights (e.g. {missing[0]})")
    unexpected = vit.load_state_dict(mapped, strict=False).unexpected_keys
    if unexpected:
        raise UserError(f"open_clip visual weight mapped to {unexpected[0]!r}, which CLIPVisionModel lacks")
    return target
