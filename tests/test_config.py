"""Typed params: valid files load; every bad key, type or value is an error naming section.key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline import cli
from pipeline.config import SampleParams, load_params
from pipeline.errors import ParamsError

from conftest import REPO


def write(tmp_path, data) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_repo_params_file_loads_every_section():
    loaded = load_params(REPO / "params.yaml")
    assert isinstance(loaded["sample"], SampleParams)
    assert loaded["sample"].n_clips == yaml.safe_load((REPO / "params.yaml").read_text())["sample"]["n_clips"]


def test_valid_file_gives_typed_values_and_defaults(tmp_path):
    sample = load_params(write(tmp_path, {"sample": {"n_clips": 3, "seconds": 4}}))["sample"]
    assert sample.n_clips == 3
    assert sample.seconds == 4.0 and isinstance(sample.seconds, float)
    assert sample.fps == SampleParams().fps
    with pytest.raises(AttributeError):
        sample.n_clips = 5  # frozen


def test_misspelled_key_names_the_key_and_the_known_keys(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"sample": {"n_clip": 3}}))
    message = str(err.value)
    assert "'sample.n_clip'" in message
    assert "did you mean 'sample.n_clips'" in message
    assert "sample.seconds" in message  # the known keys are listed


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match="unknown key 'smaple'.*did you mean 'sample'"):
        load_params(write(tmp_path, {"smaple": {"n_clips": 3}}))


@pytest.mark.parametrize("key, value, expected", [
    ("seconds", "ten", "sample.seconds must be a number, got 'ten'"),
    ("n_clips", 2.5, "sample.n_clips must be an integer, got 2.5"),
    ("n_clips", True, "sample.n_clips must be an integer, got True"),
    ("motion_only", "yes", "sample.motion_only must be true or false"),
])
def test_wrong_type_names_the_key(tmp_path, key, value, expected):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"sample": {key: value}}))
    assert expected in str(err.value)


@pytest.mark.parametrize("key, value, expected", [
    ("fps", 1, "sample.fps must be >= 4, got 1"),
    ("n_clips", 0, "sample.n_clips must be >= 1"),
    ("sample_rate", 22050, "sample.sample_rate must be one of 32000, 44100, 48000"),
    ("width", 161, "sample.width: must be even"),
])
def test_out_of_range_value_names_the_key(tmp_path, key, value, expected):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"sample": {key: value}}))
    assert expected in str(err.value)


def test_cross_field_check_names_the_key(tmp_path):
    with pytest.raises(ParamsError, match="sample.bpm_min: must be <= sample.bpm_max"):
        load_params(write(tmp_path, {"sample": {"bpm_min": 150, "bpm_max": 90}}))


def test_loading_only_declared_sections_ignores_others(tmp_path):
    path = write(tmp_path, {"sample": {"n_clips": 2}})
    assert set(load_params(path, ["sample"])) == {"sample"}


def test_a_later_stage_typo_stops_the_first_stage(tmp_path):
    # the sample stage loads only `sample`, yet a typo in `train` is reported before any work
    path = write(tmp_path, {"sample": {"n_clips": 2}, "train": {"max_step": 10}})
    with pytest.raises(ParamsError, match="'train.max_step'.*did you mean 'train.max_steps'"):
        load_params(path, ["sample"])


def test_flow_size_that_the_motion_patch_does_not_divide_is_refused_at_load(tmp_path):
    path = write(tmp_path, {"features": {"motion": {"size": 112}}})
    with pytest.raises(ParamsError) as err:
        load_params(path, ["sample"])  # the first stage: before any flow is computed
    message = str(err.value)
    assert "features.motion.size 112" in message and "patch side 32 px" in message
    assert "model.motion_patch" in message and "e.g. 16 (7x7 patches)" in message
    fixed = write(tmp_path, {"features": {"motion": {"size": 112}}, "model": {"motion_patch": 16}})
    assert load_params(fixed, ["model"])["model"].motion_patch == 16
    ablation = write(tmp_path, {"features": {"motion": {"size": 112}}, "model": {"use_motion": False}})
    assert load_params(ablation, ["model"])["model"].use_motion is False  # no motion encoder, no patch
    with pytest.raises(ParamsError, match=r"features.motion.size 224 .* patch side 48 px \(model.motion_patch\)"):
        load_params(write(tmp_path, {"model": {"motion_patch": 48}}), ["model"])


def test_params_check_command_ok_and_error(tmp_path, capsys):
    good = write(tmp_path, {"sample": {"n_clips": 2}})
    cli.main(["params", "check", good])
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample:\n  secconds: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["params", "check", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "v2m: error:" in err and "'sample.secconds'" in err and "Traceback" not in err


def test_installed_console_script_exits_nonzero_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample:\n  fps: 2\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "params", "check", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"v2m: error: {bad}: sample.fps must be >= 4, got 2"]


def test_params_are_read_as_yaml_1_2_like_dvc_writes_them(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with `no` unquoted; YAML 1.1 would make it False."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  mixed_precision: no\n  lr: 3.5e-5\n")
    train = load_params(path, ["train"])["train"]
    assert train.mixed_precision == "no" and train.lr == 3.5e-5
