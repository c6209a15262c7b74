"""benchmarks/gpu.sh refuses, with one clear line and before anything slow, where it cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.sh"


def run(python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the suite would run")
def test_without_cuda_it_refuses_with_one_line():
    done = run(sys.executable)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("benchmarks/gpu.sh: no CUDA GPU visible to torch (") and torch.__version__ in lines[0]


def test_without_the_project_packages_it_says_what_to_install(tmp_path):
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no interpreter without torch on this machine")
    done = run(bare)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmarks/gpu.sh: missing Python packages: torch")
    assert "pip install -r requirements.lock" in lines[0]
