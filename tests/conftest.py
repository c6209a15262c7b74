"""Shared fixtures: small rendered sample sets, made once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline.config import SampleParams
from pipeline.synth import read_labels, render_sample_set

REPO = Path(__file__).resolve().parents[1]
# Subprocesses (dvc, v2m) must find the same environment's programs as this interpreter.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Six 6-second clips of the default kind: (folder, label rows)."""
    out = tmp_path_factory.mktemp("synth") / "set"
    render_sample_set(out, SampleParams(n_clips=6, seconds=6.0, seed=3), progress=False)
    return out, read_labels(out)
