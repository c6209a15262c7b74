"""Stage wall times (pipeline/timing.py) and the CPU thread policy (pipeline/threads.py), through the
one wrapper every stage runs in (``user_errors("stage ...")``), in real subprocesses: the wait
policy only works when it is set before torch loads, so an in-process test could not see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from pipeline import threads, timing
from pipeline.report import build_report

STAGE_SCRIPT = """
import os, sys
from pipeline.errors import UserError, user_errors
import torch
with user_errors("stage demo@s0001"):
    print(torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY"), flush=True)
    if len(sys.argv) > 1:
        raise UserError("bad input, said clearly")
"""


def run_stage(tmp_path, *args, **env):
    environment = {**os.environ, "PYTHONPATH": str(REPO), "V2M_TIMINGS": str(tmp_path / "timings"), **env}
    environment.pop("OMP_NUM_THREADS", None)
    environment.pop("OMP_WAIT_POLICY", None)
    return subprocess.run([sys.executable, "-c", STAGE_SCRIPT, *args], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_a_stage_logs_one_wall_time_line_and_records_its_row(tmp_path):
    done = run_stage(tmp_path, V2M_THREADS="3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "PASSIVE"]       # fixed count; passive wait set before torch loaded
    lines = [line for line in done.stderr.splitlines() if line.startswith("demo@s0001: ")]
    assert len(lines) == 1 and "s wall" in lines[0] and "start-up" in lines[0]
    row = json.loads((tmp_path / "timings" / "demo@s0001.json").read_text())
    assert row["status"] == "ok" and row["threads"] == 3
    # From the process start: importing torch is in it, and in the start-up part.
    assert row["seconds"] >= row["startup_seconds"] > 0.05
    assert timing.read_timings(tmp_path / "timings") == [row]


def test_a_failed_stage_keeps_its_one_line_error_and_records_failed(tmp_path):
    done = run_stage(tmp_path, "fail", V2M_THREADS="1")
    assert done.returncode == 2
    assert "stage demo@s0001: error: bad input, said clearly" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads((tmp_path / "timings" / "demo@s0001.json").read_text())["status"] == "failed"


def test_legacy_keeps_torchs_defaults_and_a_bad_value_is_one_line(tmp_path):
    done = run_stage(tmp_path, V2M_THREADS="legacy")
    assert done.returncode == 0, done.stderr
    count, policy = done.stdout.split()
    assert int(count) == (os.cpu_count() or 1) and policy == "None"
    bad = run_stage(tmp_path, V2M_THREADS="lots")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[0] == ("stage demo@s0001: error: V2M_THREADS='lots': expected a positive thread "
                                          "count, 'auto' or 'legacy'")


def test_busy_cores_sees_a_busy_loop():
    cores = threads.allowed_cores()
    idle = threads.busy_cores(cores, 0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = threads.busy_cores(cores, 0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.0 <= idle <= len(cores) and busy <= len(cores) + 1e-6
    # The loop holds one core for the whole window (others' load may add to it, never hide it).
    assert busy >= 0.8


def test_auto_plan_leaves_the_busy_cores(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "_USER_OMP_THREADS", "")
    monkeypatch.setattr(threads, "allowed_cores", lambda: [0, 1, 2, 3])
    for busy, expected in ((0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (4.0, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda cores, seconds, b=busy: b)
        assert threads.plan().threads == expected
    monkeypatch.setattr(threads, "_USER_OMP_THREADS", "2")
    assert (threads.plan().threads, threads.plan().source) == (2, "OMP_NUM_THREADS")


def test_the_report_shows_the_timing_table(tmp_path):
    rows = [{"stage": "codes@s0000", "status": "ok", "seconds": 96.0, "startup_seconds": 4.5, "threads": 1,
             "busy_cores": 1.0, "max_rss_mb": 812.0, "finished": "2026-12-01T20:00:00+00:00"},
            {"stage": "train", "status": "failed", "seconds": 3.0, "startup_seconds": 2.0, "threads": 2,
             "busy_cores": 0.0, "max_rss_mb": 400.0, "finished": "2026-12-01T20:01:00+00:00"}]
    for row in rows:
        timing.write_row(row, tmp_path / "timings")
    read = timing.read_timings(tmp_path / "timings")
    assert [r["stage"] for r in read] == ["codes@s0000", "train"]
    index = build_report(tmp_path / "report", eval_summary={"pairs": 0}, clip_rows=[], learning=None, plots=[],
                         media=[], notice=None, timings=read)
    page = index.read_text()
    assert '<table id="timings">' in page and 'data-stage="codes@s0000"' in page and 'data-stage="train"' in page
    assert "total of the ok rows 96.0 s" in page
    assert "total (ok)" in timing.format_table(read) and "96.0" in timing.format_table(read)


FREED_MEMORY_SCRIPT = """
import numpy as np
import pipeline  # the policy is set on import
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
block = np.ones(256 * 2**20 // 8)   # 256 MiB, far over glibc's largest mmap threshold (32 MiB)
del block
print(round(resident_mib()))
"""


def resident_after_free(**env) -> int:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for key in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        if key not in env:
            environment.pop(key, None)
    done = subprocess.run([sys.executable, "-c", FREED_MEMORY_SCRIPT], capture_output=True, text=True,
                          env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator policy")
def test_freed_memory_is_kept_for_reuse_unless_legacy_or_glibc_knobs_are_set():
    # With the policy a freed 256 MiB block stays in the heap for the next tensor; glibc's default
    # (what legacy and a user's own MALLOC_ knobs keep) unmaps it, and the next one faults in afresh.
    kept = resident_after_free()
    assert kept > 256, kept
    assert resident_after_free(V2M_THREADS="legacy") < kept - 200
    assert resident_after_free(MALLOC_MMAP_MAX_="65536") < kept - 200
