"""open_clip's ViT-B-32 beside transformers' CLIPVisionModel: its per-frame tokens, and the weight conversion.

Feasibility code for issue 19's open_clip backend; open_clip_torch is not a project dependency (it
needs torchvision, which does not load beside the CPU torch 2.13.0 of ``setup.sh``), so it is
imported only inside these functions, from whatever environment has it.

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

import re
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.errors import UserError
from pipeline.features.visual import VIT_B32

ARCHITECTURE = "ViT-B-32"

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


def load_open_clip(path: Path | str, device: str = "cpu") -> Any:
    """open_clip's ViT-B-32 from a local weights file (``create_model_and_transforms(pretrained=PATH)``).

    Returns:
        ``(model, preprocess)``: the eval-mode ``open_clip.CLIP`` and its own image transform.
    """
    import open_clip

    if not Path(path).is_file():
        raise FileNotFoundError(f"open_clip checkpoint {path}: no such file; expected a ViT-B-32 state dict "
                                "(openai or LAION), e.g. open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32-*")
    model, _, preprocess = open_clip.create_model_and_transforms(ARCHITECTURE, pretrained=str(path), device=device)
    return model.eval(), preprocess


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
