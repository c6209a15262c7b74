"""The DVC spine: stages declare exactly the params sections they read; `dvc repro` runs, then is a no-op."""

from __future__ import annotations

import html
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import media
from pipeline.acquire.manifest import ManifestEntry, append_shard_to_params, write_manifest
from pipeline.config import SampleParams
from pipeline.features.store import FeatureShard
from pipeline.status import read_status
from pipeline.synth import read_labels, render_sample_set
from pipeline.timing import read_timings

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


def run_cache_blind_keys() -> set[str]:
    """Key names DVC leaves out of its run-cache key at any depth (DVC 3: file ``size`` and ``nfiles``), so a
    param of that name inside a section a stage depends on as a whole would not tell two runs apart."""
    from dvc_data.hashfile.meta import Meta

    return {Meta.PARAM_SIZE, Meta.PARAM_NFILES}


def nested_keys(value, prefix: str):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from nested_keys(inner, f"{prefix}.{key}")
    else:
        yield prefix


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_params_named_like_file_sizes_are_declared_by_their_full_name(name):
    # `dvc exp run -S features.motion.size=112` restored the 224 px flow maps from the run cache: a key
    # named `size` under a declared section is not hashed. Declared by its full name, it is.
    body = dvc_stages()[name].get("do", dvc_stages()[name])
    declared = [p for p in body.get("params", []) if isinstance(p, str)]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    blind = run_cache_blind_keys()
    missing = []
    for entry in declared:
        value = params
        for part in entry.split("."):
            value = value[part]
        missing += [key for key in nested_keys(value, entry)
                    if key != entry and key.rsplit(".", 1)[-1] in blind and key not in declared]
    assert not missing, f"stage {name}: declare {missing} in dvc.yaml's params beside their section"


def test_a_size_param_declared_by_full_name_reruns_the_stage(tmp_path):
    """The workaround above, with the installed DVC: a section plus its `size` by full name."""
    (tmp_path / "params.yaml").write_text("flow:\n  size: 224\n  fps: 4\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"flow": {
        "cmd": "python -c \"import yaml; print(yaml.safe_load(open('params.yaml'))['flow']['size'])\" > out.txt",
        "params": ["flow", "flow.size"], "outs": ["out.txt"]}}}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "repro"], tmp_path)
    (tmp_path / "params.yaml").write_text("flow:\n  size: 112\n  fps: 4\n")
    assert ran(run(["dvc", "repro"], tmp_path)) == {"flow"}
    assert (tmp_path / "out.txt").read_text().strip() == "112"
    (tmp_path / "params.yaml").write_text("flow:\n  size: 224\n  fps: 4\n")
    run(["dvc", "repro"], tmp_path)   # the run cache may restore this one: it is the right one
    assert (tmp_path / "out.txt").read_text().strip() == "224"


def test_dvc_analytics_off_in_repo_config():
    assert "analytics = false" in (REPO / ".dvc" / "config").read_text()


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def copy_repo(target: Path) -> Path:
    """The tracked (and untracked, not ignored) files of the repo, without DVC outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("data/", "metrics/", "models/")) and not name.endswith(".gitignore"):
            continue
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    (target / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    # A clone has commits; DVCLive reads the current revision.
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "copy"], target)
    return target


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
def test_repro_runs_the_pipeline_then_is_a_no_op_and_new_shards_run_alone(tmp_path):
    """Small params: repro runs every stage; again, nothing; a new shard runs only its own stages."""
    work = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sample"].update(n_clips=6, seconds=3.0)
    params["download"]["file_roots"] = ["data/sample", "extra"]  # the extra shard below is read from extra/
    params["clip"].update(seconds=2.0, min_seconds=2.0)
    params["separate"]["embedded"].update(train_steps=2, train_batch=2, train_segment_seconds=1.0)
    params["split"].update(val_fraction=0.3, test_fraction=0.3)
    params["train"].update(segment_seconds=2.0, batch_size=2, max_steps=4, warmup_steps=1, eval_every=2,
                           log_every=2, checkpoint_every=2)
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    first = run(["dvc", "repro"], work)
    assert ran(first) == {"sample", "download@s0000", "clip@s0000", "separator_init", "separate@s0000",
                          "visual_init", "codec_init", "visual@s0000", "motion@s0000", "codes@s0000", "train",
                          "generate", "evaluate", "report"}
    rows = read_labels(work / "data" / "sample")
    assert len(rows) == 6
    assert [r["status"] for r in read_status(work / "data" / "raw" / "s0000")] == ["ok"] * 6
    assert [r["status"] for r in read_status(work / "data" / "clips" / "s0000")] == ["ok"] * 6
    separated = read_status(work / "data" / "separated" / "s0000")
    assert [r["status"] for r in separated] == ["ok"] * 6
    audio, rate = media.read_wav(work / "data" / "separated" / "s0000" / f"{separated[0]['video_id']}.wav")
    assert (audio.shape, rate) == ((1, 2 * 32000), 32000)

    clip_table = FeatureShard(work / "data" / "features" / "visual" / "s0000.parquet")
    assert clip_table[rows[0]["video_id"]]["tokens"].shape == (4, 50, 768)  # 2 s at 2 fps
    assert FeatureShard(work / "data" / "features" / "codes" / "s0000.parquet")[rows[0]["video_id"]]["codes"].shape == (100, 4)

    figures = json.loads((work / "metrics" / "learning.json").read_text())
    assert figures["steps"] == 4 and {"ce_true", "ce_shuffled", "video_info_gain", "event_gain", "sync_gain"} <= set(figures)
    assert (work / "models" / "v2m" / "model.safetensors").is_file()
    assert (work / "metrics" / "train" / "plots" / "metrics" / "loss.tsv").is_file()

    # The music of the test split, scored against the separated references, and the report.
    generated = [r for r in read_status(work / "data" / "generated") if r["status"] == "ok"]
    assert generated and all(r["video_id"] in {x["video_id"] for x in rows} for r in generated)
    for row in generated:
        assert media.probe(work / "data" / "generated" / f"{row['video_id']}.mp4").duration == pytest.approx(2.0, abs=0.05)
    evaluation = json.loads((work / "metrics" / "eval.json").read_text())
    assert evaluation["pairs"] == len(generated) and 0.0 <= evaluation["chroma_cosine"] <= 1.0
    assert evaluation["fad"] is None and "VGGish" in evaluation["fad_reason"]
    assert evaluation["kld_both"] is None and "PaSST" in evaluation["kld_reason"]
    # The stage passes the clips as videos: AV-Align for every pair, the reference's beside it.
    assert evaluation["av_align_videos"] == len(generated) and evaluation["av_align_reason"] is None
    assert evaluation["beat_f1"] is not None and evaluation["fd_passt"] is None
    assert (work / "metrics" / "eval" / "plots" / "distributions.png").is_file()
    page = html.unescape((work / "metrics" / "report" / "index.html").read_text())   # the text a reader sees
    assert "NOT EnCodec's decoder" in page and "chroma_cosine" in page and "av_align" in page
    # Every stage recorded its wall time, outside DVC's outputs (the no-op repro below shows DVC ignores
    # it), and the report, which runs last, shows the others'.
    timings = {row["stage"]: row for row in read_timings(work / ".cache" / "v2m" / "timings")}
    assert set(timings) == ran(first)
    assert all(row["status"] == "ok" and row["seconds"] >= row["startup_seconds"] > 0 for row in timings.values())
    assert 'id="timings"' in page and 'data-stage="train"' in page and 'data-stage="report"' not in page

    second = run(["dvc", "repro"], work)
    assert ran(second) == set() and "up to date" in second

    # Separating again gives the same bytes, status table included (no wall-clock column), so
    # nothing downstream of it (codec_init, codes, train...) reruns.
    assert ran(run(["dvc", "repro", "--force", "--single-item", "separate@s0000"], work)) == {"separate@s0000"}
    assert ran(run(["dvc", "repro"], work)) == set()

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["features"]["motion"]["winsize"] = 13
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran(run(["dvc", "repro"], work)) == {"motion@s0000", "train", "generate", "evaluate", "report"}

    extra = work / "extra"
    render_sample_set(extra, SampleParams(n_clips=1, seconds=3.0, seed=5), progress=False)
    row = read_labels(extra)[0]
    write_manifest(work / "data" / "manifests" / "s0001.csv",
                   [ManifestEntry(row["video_id"], f"file:extra/{row['video_file']}")])
    append_shard_to_params(work / "params.yaml", "s0001")
    third = run(["dvc", "repro"], work)
    assert ran(third) == {"download@s0001", "clip@s0001", "separate@s0001", "visual@s0001", "motion@s0001",
                          "codes@s0001", "train", "generate", "evaluate", "report"}
    assert [r["video_id"] for r in read_status(work / "data" / "clips" / "s0001")] == [row["video_id"]]

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sample"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert {"sample", "download@s0000", "clip@s0000", "separate@s0000", "codec_init"} <= ran(run(["dvc", "repro"], work))
