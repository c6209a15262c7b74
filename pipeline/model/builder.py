"""From params.yaml's ``model`` section to a model: the only place that reads :class:`ModelParams`.

Sizes come from a preset (``model.size``):

- ``tiny``: CPU-sized. Decoder 3 layers x 128 wide, 4 heads, FFN 512; encoders 128 wide, 1 layer,
  4 heads; motion patches of 32 pixels (7 x 7 at 224).
- ``small``: the paper's Model-S. Decoder = facebook/musicgen-small's (24 layers x 1024, 16 heads,
  FFN 4096), so ``model.pretrained_decoder`` can load it; encoders 768 wide (CLIP's width), 2 layers,
  12 heads; motion patches of 32 pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pipeline.config import ModelParams
from pipeline.errors import UserError
from pipeline.features.recipe import StreamRates
from pipeline.model.v2m import V2MConfig, V2MModel, load_pretrained_decoder

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        visual_dim=128, visual_layers=1, visual_heads=4,
        motion_dim=128, motion_layers=1, motion_heads=4, motion_patch=32, fusion_heads=4,
        decoder_dim=128, decoder_layers=3, decoder_heads=4, decoder_ffn=512,
    ),
    "small": dict(
        visual_dim=768, visual_layers=2, visual_heads=12,
        motion_dim=768, motion_layers=2, motion_heads=12, motion_patch=32, fusion_heads=12,
        decoder_dim=1024, decoder_layers=24, decoder_heads=16, decoder_ffn=4096,
    ),
}


def preset_config(size: str, **overrides: Any) -> V2MConfig:
    """The :class:`V2MConfig` of preset ``size`` (``tiny`` or ``small``), with ``overrides`` applied.

    Raises:
        ValueError: unknown preset or unknown config key.
    """
    if size not in PRESETS:
        raise ValueError(f"unknown model size {size!r}; presets: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(V2MConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown V2MConfig keys {unknown}; known: {sorted(known)}")
    return V2MConfig(**{**PRESETS[size], **overrides})


def tiny_config(**overrides: Any) -> V2MConfig:
    """The ``tiny`` preset with ``overrides`` (tests pass e.g. ``motion_size=64, motion_patch=16``)."""
    return preset_config("tiny", **overrides)


def model_config(params: ModelParams, rates: StreamRates) -> V2MConfig:
    """``ModelParams`` + the feature cache's :class:`StreamRates` (the flow maps' side and the
    streams' rates, which the encoders' input size and temporal codes must match) -> :class:`V2MConfig`."""
    try:
        return preset_config(params.size, use_motion=params.use_motion, tokens_per_frame=params.tokens_per_frame,
                             condition_dropout=params.condition_dropout, aligned_condition=params.aligned_condition,
                             aligned_motion_rank=params.aligned_motion_rank,
                             aligned_motion_energy=params.aligned_motion_energy,
                             motion_size=rates.motion_size,
                             visual_fps=float(rates.visual_fps), motion_fps=float(rates.motion_fps),
                             codes_rate=float(rates.code_rate))
    except ValueError as exc:
        raise UserError(f"model: {exc}") from None


def build_model(params: ModelParams, rates: StreamRates) -> V2MModel:
    """A fresh model for training: seeded weights (``params.seed``), the pretrained decoder when
    ``params.pretrained_decoder`` names one, and a frozen decoder when ``params.train_decoder`` is false.

    The global RNG is left as it was.
    """
    config = model_config(params, rates)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = V2MModel(config)
    if params.pretrained_decoder:
        load_pretrained_decoder(model, params.pretrained_decoder)
    if not params.train_decoder:
        model.freeze_decoder()
    return model
