"""The embedded default's model stand-in stages build only what the params use; with real weights they skip in a second."""

from __future__ import annotations

import subprocess
import sys

import yaml

from pipeline.embedded import SKIPPED_FILE, skipped_reason, uses_stand_in

from conftest import REPO


def run_stage(name: str, cwd) -> subprocess.CompletedProcess:
    """Run stage ``name`` in ``cwd`` and report whether torch got imported (it must not, to skip)."""
    code = (f"import sys, stages.{name} as s; s.main(); "
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'demucs') if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": ""})


def test_with_real_weights_and_data_the_stand_in_stages_only_write_why(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["shards"] = ["s0001"]
    params["separate"]["repo"] = "/weights/demucs"
    params["separate"]["model"] = "htdemucs"
    params["features"]["visual"]["model"] = "/weights/clip-vit-base-patch32"
    params["features"]["codes"]["codec"] = "/weights/encodec_32khz"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    expected = {"separator_init": ("models/demucs-v2m", "separate.repo is /weights/demucs"),
                "visual_init": ("models/visual-random", "features.visual.model is /weights/clip-vit-base-patch32"),
                "codec_init": ("models/encodec-calibrated", "features.codes.codec is /weights/encodec_32khz")}
    for stage, (folder, why) in expected.items():
        result = run_stage(stage, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "skipped" in result.stdout and why in result.stdout, result.stdout
        assert "heavy: []" in result.stdout, f"{stage} imported heavy libraries only to skip: {result.stdout}"
        assert [p.name for p in (tmp_path / folder).iterdir()] == [SKIPPED_FILE]
        assert why in skipped_reason(tmp_path / folder)


def test_the_stand_in_folders_are_recognised_however_they_are_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert uses_stand_in("models/visual-random", tmp_path / "models" / "visual-random")
    assert uses_stand_in("./models/../models/visual-random", tmp_path / "models" / "visual-random")
    assert not uses_stand_in("models/clip-vit-b32", tmp_path / "models" / "visual-random")
    assert skipped_reason(tmp_path) is None
