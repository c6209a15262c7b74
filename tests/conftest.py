"""Shared fixtures: small rendered sample sets, made once per test session."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

import private_network
from pipeline.config import FeaturesParams, SampleParams
from pipeline.synth import read_labels, render_sample_set

REPO = Path(__file__).resolve().parents[1]
# Subprocesses (dvc, v2m) must find the same environment's programs as this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Before any test starts a server: the session goes on in a network of its own (loopback only)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    private_network.enter(before_exec=capture.stop_global_capturing if capture else None)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Six 6-second clips of the default kind: (folder, label rows)."""
    out = tmp_path_factory.mktemp("synth") / "set"
    render_sample_set(out, SampleParams(n_clips=6, seconds=6.0, seed=3), progress=False)
    return out, read_labels(out)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny exported V2M model (random weights; 2 s segments) whose recipe names a tiny random CLIP and codec."""
    from pipeline.features import codec as codec_lib   # torch: imported only by the tests that need it
    from pipeline.features.recipe import RECIPE_FILE, FeatureRecipe
    from pipeline.features.visual import save_random_clip_model
    from pipeline.model.builder import tiny_config
    from pipeline.model.v2m import V2MModel

    root = tmp_path_factory.mktemp("generator")
    clip = save_random_clip_model(root / "clip", seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2)
    codec = codec_lib.random_codec(0, codec_lib.encodec_32khz_config(
        num_filters=4, hidden_size=16, codebook_size=64, target_bandwidths=[1.2]))
    codec.save_pretrained(root / "codec")
    features = FeaturesParams()
    features = dataclasses.replace(
        features, visual=dataclasses.replace(features.visual, model=str(clip), batch_size=16),
        motion=dataclasses.replace(features.motion, size=64),
        codes=dataclasses.replace(features.codes, codec=str(root / "codec"), bandwidth=1.2))
    config = tiny_config(visual_in_dim=32, motion_size=64, motion_patch=16, codebook_size=64)
    model = V2MModel(config)
    model.save_pretrained(root / "v2m", extra_files={RECIPE_FILE: FeatureRecipe(features, segment_seconds=2.0).to_json()})
    return root / "v2m"


@pytest.fixture(scope="session")
def generator(model_dir):
    from pipeline.generate import Generator

    return Generator.load(model_dir, device="cpu")
