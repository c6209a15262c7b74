"""From params.yaml's ``model`` section to a model: the only place that reads :class:`ModelParams`.

Sizes come from a preset (``model.size``; the table is :data:`pipeline.config.MODEL_PRESETS`, so
params checks need no torch):

- ``tiny``: CPU-sized. Decoder 3 layers x 128 wide, 4 heads, FFN 512; encoders 128 wide, 1 layer,
  4 heads; motion patches of 32 pixels (7 x 7 at 224).
- ``small``: the paper's Model-S. Decoder = facebook/musicgen-small's (24 layers x 1024, 16 heads,
  FFN 4096), so ``model.pretrained_decoder`` can load it; encoders 768 wide (CLIP's width), 2 layers,
  12 heads; motion patches of 32 pixels.

``model.motion_patch`` overrides the preset's patch side (a cheaper 112 px flow keeps 7 x 7
patches with 16).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pipeline.config import MODEL_PRESETS, ModelParams, motion_patch
from pipeline.errors import UserError
from pipeline.features.recipe import StreamRates
from pipeline.model.v2m import V2MConfig, V2MModel, load_pretrained_decoder

def preset_config(size: str, **overrides: Any) -> V2MConfig:
    """The :class:`V2MConfig` of preset ``size`` (``tiny`` or ``small``), with ``overrides`` applied.

    Raises:
        ValueError: unknown preset or unknown config key.
    """
    if size not in MODEL_PRESETS:
        raise ValueError(f"unknown model size {size!r}; presets: {', '.join(MODEL_PRESETS)}")
    known = {f.name for f in dataclasses.fields(V2MConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown V2MConfig keys {unknown}; known: {sorted(known)}")
    return V2MConfig(**{**MODEL_PRESETS[size], **overrides})


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
                             motion_size=rates.motion_size, motion_patch=motion_patch(params),
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
