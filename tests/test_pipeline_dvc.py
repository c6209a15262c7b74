"""The DVC spine: stages declare exactly the params sections they read; `dvc repro` runs, then is a no-op."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.synth import read_labels

from conftest import REPO


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict):
    command = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
    assert command.startswith("python -m stages."), command
    return importlib.import_module(command.split()[2])


def declared_sections(stage: dict) -> set[str]:
    body = stage["do"] if "foreach" in stage else stage
    return {p.split(".")[0] for p in body.get("params", []) if isinstance(p, str)}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_reads_exactly_the_sections_it_declares(name):
    stage = dvc_stages()[name]
    module = stage_module(stage)
    assert set(module.SECTIONS) == declared_sections(stage)


def test_every_stage_module_is_in_the_pipeline():
    used = {stage_module(s).__name__ for s in dvc_stages().values()}
    modules = {f"stages.{p.stem}" for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert modules == used


def test_dvc_analytics_off_in_repo_config():
    assert "analytics = false" in (REPO / ".dvc" / "config").read_text()


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.slow
def test_repro_renders_then_is_a_no_op(tmp_path):
    """A copy of the tracked tree, small params: repro renders the set; a second repro does nothing."""
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("data/", "metrics/", "models/")) and not name.endswith(".gitignore"):
            continue
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sample"].update(n_clips=2, seconds=3.0)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    (work / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], work)
    first = run(["dvc", "repro"], work)
    assert "Running stage 'sample'" in first
    rows = read_labels(work / "data" / "sample")
    assert len(rows) == 2 and all((work / "data" / "sample" / r["video_file"]).is_file() for r in rows)
    second = run(["dvc", "repro"], work)
    assert "Running stage" not in second
    assert "up to date" in second
    params["sample"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert "Running stage 'sample'" in run(["dvc", "repro"], work)
