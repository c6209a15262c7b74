"""compute.engine: ray against a real two-node Ray cluster on loopback (a head and a worker node, 1 CPU each)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.acquire.clip import clip_shard
from pipeline.acquire.download import download_shard
from pipeline.acquire.manifest import ManifestEntry, write_manifest
from pipeline.acquire.proxies import SharedProxyPool, redact
from pipeline.config import (ClipParams, CodesFeatureParams, ComputeParams, DownloadParams, MotionFeatureParams,
                             ModelActorParams, ParamsError, SampleParams, SeparateParams, VisualFeatureParams,
                             load_params)
from pipeline.device import torch_threads
from pipeline.engine import Journal, RayEngine, Work, fingerprint, journal_for
from pipeline.features.codec import encodec_32khz_config, random_codec
from pipeline.features.extract import (FEATURE_STATUS, FRAME_FEATURE_STATUS, clip_inputs, codes_shard, flow_task,
                                       motion_shard, visual_shard, write_feature_status)
from pipeline.features.visual import save_random_clip_model
from pipeline.files import file_sha256
from pipeline.separate import save_random_htdemucs, separate_shard
from pipeline.status import read_status
from pipeline.synth import read_labels, render_sample_set

from netservers import VideoServer, black_hole, dead_port, forwarding_proxy, status_proxy
from conftest import REPO
from raycluster import LocalCluster
import private_network

PASSWORD = "r4y-s3cr3t"
VOLATILE = {"fetched_at", "node"}   # differ between any two runs


@pytest.fixture(scope="module")
def cluster():
    if private_network.state() != "yes":
        pytest.fail("the Ray test cluster runs only in a private network namespace (Ray's servers listen on every "
                    f"interface); this session has none ({private_network.state()}); see tests/private_network.py")
    # Ray's unix socket paths must stay short: a short temp folder, not pytest's.
    root = Path(tempfile.mkdtemp(prefix="v2m-ray-", dir="/tmp"))
    cluster = LocalCluster(root)
    try:
        cluster.start_head(cpus=1)
        cluster.start_worker(cpus=1)
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny real architectures with random weights: Demucs, CLIP, EnCodec."""
    root = tmp_path_factory.mktemp("models")
    save_random_htdemucs(root / "demucs", "tiny", channels=8, depth=2, transformer_layers=1, seed=0)
    save_random_clip_model(root / "clip", 0, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2)
    random_codec(seed=0, config=encodec_32khz_config(num_filters=4, hidden_size=16, codebook_size=16,
                                                     num_lstm_layers=1)).save_pretrained(root / "codec")
    return {"demucs": root / "demucs", "clip": root / "clip", "codec": root / "codec"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("sample") / "set"
    render_sample_set(folder, SampleParams(n_clips=3, seconds=3.0, seed=11), progress=False)
    rows = read_labels(folder)
    return folder, rows


def ray_compute(cluster: LocalCluster, scratch: Path, **overrides) -> ComputeParams:
    pool = ModelActorParams(actors=1, cpus=1.0, batch_size=2)
    values = dict(engine="ray", ray_address=cluster.address, scratch=str(scratch), download_cpus=0.5,
                  separate=pool, visual=pool, codec=pool, max_retries=2)
    return ComputeParams(**{**values, **overrides})


def manifest(sample, path: Path) -> Path:
    folder, rows = sample
    return write_manifest(path, [ManifestEntry(r["video_id"], (folder / r["video_file"]).resolve().as_uri())
                                 for r in rows])


def run_shard(work: Path, sample, models, compute: ComputeParams | None) -> dict[str, Path]:
    """download .. codes of shard s0001 into ``work``, as the stages do."""
    shard = "s0001"
    clip = ClipParams(seconds=2.0, min_seconds=2.0)
    raw, clips, separated = work / "raw" / shard, work / "clips" / shard, work / "separated" / shard
    features = work / "features"
    download_shard(manifest(sample, work / f"{shard}.csv"), raw,
                   DownloadParams(scratch=str(work / "scratch"), margin_seconds=0.5, file_roots=(str(sample[0]),)),
                   seconds=clip.seconds, progress=False, compute=compute)
    clip_shard(raw, clips, clip, progress=False, compute=compute)
    separate_shard(clips, separated, SeparateParams(repo=str(models["demucs"]), model="tiny", device="cpu"),
                   target_rate=clip.target_rate, progress=False, compute=compute)
    visual = VisualFeatureParams(model=str(models["clip"]), device="cpu", batch_size=3)
    rows = {"clip": visual_shard(clips, features / "clip.parquet", visual, compute, progress=False),
            "flow": motion_shard(clips, features / "flow.parquet", MotionFeatureParams(size=32), compute, progress=False),
            "codes": codes_shard(separated, features / "codes.parquet",
                                 CodesFeatureParams(codec=str(models["codec"]), device="cpu"), compute, progress=False)}
    for table, table_rows in rows.items():
        write_feature_status(features / f"{table}.status.parquet", table_rows,
                             FEATURE_STATUS if table == "codes" else FRAME_FEATURE_STATUS)
    return {"raw": raw, "clips": clips, "separated": separated, "features": features}


@pytest.fixture(scope="module")
def local(tmp_path_factory, sample, models) -> dict[str, Path]:
    """The shard through the local engine, with torch on one thread like the cluster's 1-CPU actors
    (float sums in another order could move a sample by one LSB)."""
    with torch_threads(1):
        return run_shard(tmp_path_factory.mktemp("local"), sample, models, None)


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def listening_tcp_ports() -> dict[int, str]:
    """Listening TCP sockets of this network namespace (IPv4 and IPv6): port -> local address (hex as in /proc)."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                address, port = fields[1].split(":")
                ports[int(port, 16)] = address
    return ports


def test_the_cluster_is_reachable_on_loopback_only(cluster):
    """Ray's GCS listens on every interface of its network, and that network has only loopback."""
    ports = listening_tcp_ports()
    assert cluster.port in ports, f"the GCS port {cluster.port} is not listening in this namespace: {ports}"
    assert private_network.interfaces() == ["lo"]


def test_shard_on_the_cluster_equals_the_local_engine(tmp_path, cluster, sample, models, local):
    remote = run_shard(tmp_path / "ray", sample, models, ray_compute(cluster, tmp_path / "engine"))
    nodes = set()
    for stage in ("raw", "clips", "separated"):
        a, b = read_status(local[stage]), read_status(remote[stage])
        assert stable(a) == stable(b) and all(r["status"] == "ok" for r in a), stage
        assert {r["node"] for r in a} == {"local"}
        nodes |= {r["node"] for r in b}
        files = sorted(p.name for p in local[stage].iterdir())
        assert files == sorted(p.name for p in remote[stage].iterdir())
        for name in files:
            if name != "status.parquet":
                assert (local[stage] / name).read_bytes() == (remote[stage] / name).read_bytes(), name
    for table in ("clip", "flow", "codes"):
        a = pq.read_table(local["features"] / f"{table}.parquet")
        b = pq.read_table(remote["features"] / f"{table}.parquet")
        assert a.num_rows > 0 and a.equals(b), table
        assert a.schema.metadata == b.schema.metadata, table      # same model, params and clip index
        rows = pq.read_table(remote["features"] / f"{table}.status.parquet").to_pylist()
        nodes |= {r["node"] for r in rows}
    assert len(nodes) == 2 and "local" not in nodes, nodes       # both nodes of the cluster did videos
    assert not any((tmp_path / "engine").rglob("*.pkl")), "journals are dropped once a shard is written"


def test_resume_takes_finished_videos_from_the_journal(tmp_path, cluster, local):
    """A killed run's finished videos (in the journal) are not redone: their rows keep the earlier node."""
    work = local
    compute = ray_compute(cluster, tmp_path / "engine")
    flow = MotionFeatureParams(size=32)
    clips = clip_inputs(work["clips"])
    journal = journal_for(compute, "motion", work["clips"].name)
    first = clips[0]
    request = fingerprint(dataclasses.asdict(flow), first.seconds, file_sha256(first.path))
    journal.put(first.video_id, request, "earlier-run",
                flow_task(first.path.name, first.path.read_bytes(), first.seconds, str(first.path), flow))
    rows = motion_shard(work["clips"], tmp_path / "flow.parquet", flow, compute, progress=False)
    by_id = {r["video_id"]: r for r in rows}
    assert by_id[first.video_id]["node"] == "earlier-run"
    assert all(r["status"] == "ok" for r in rows) and {r["node"] for r in rows} - {"earlier-run"}
    assert pq.read_table(tmp_path / "flow.parquet").equals(pq.read_table(work["features"] / "flow.parquet"))


def test_killing_the_worker_node_mid_shard_loses_nothing(tmp_path, cluster, local):
    work = local
    compute = ray_compute(cluster, tmp_path / "engine", clip_cpus=1.0)
    journal = Journal(Path(compute.scratch) / "clip" / work["raw"].name)
    killed = threading.Event()

    def kill_when_one_is_done():
        deadline = time.monotonic() + 120
        while not any(journal.folder.glob("*.pkl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.kill("worker-1")
        killed.set()

    killer = threading.Thread(target=kill_when_one_is_done, daemon=True)
    killer.start()
    try:
        rows = clip_shard(work["raw"], tmp_path / "clips", ClipParams(seconds=2.0, min_seconds=2.0), progress=False,
                          compute=compute)
        killer.join(timeout=150)
        assert killed.is_set()
        assert stable(rows) == stable(read_status(work["clips"]))
        assert all(r["status"] == "ok" for r in rows)
        for row in rows:
            for suffix in (".mp4", ".32k.wav", ".44k.wav"):
                assert (tmp_path / "clips" / f"{row['video_id']}{suffix}").read_bytes() == \
                    (work["clips"] / f"{row['video_id']}{suffix}").read_bytes()
    finally:
        cluster.start_worker(cpus=1)


def test_a_video_whose_worker_dies_on_every_try_is_lost_after_the_retries(tmp_path, cluster):
    """Ray retries a task whose worker dies compute.max_retries times; then the video is Lost, with the cause."""
    engine = RayEngine(ray_compute(cluster, tmp_path / "engine", max_retries=1))
    journal = Journal(tmp_path / "journal")
    lost = engine.tasks(os._exit, [Work("crash000001", "r", lambda: (1,))], journal, cpus=1.0, desc="crash",
                        progress=False)
    assert list(lost) == ["crash000001"] and "worker lost after 1 retries" in lost["crash000001"].cause
    assert journal.get("crash000001", "r") is None


def test_proxy_rotation_and_cooldowns_hold_across_workers(tmp_path, cluster, sample):
    folder, labels = sample
    params = DownloadParams(backoff_base=0.0, socket_timeout=1.0, proxy_cooldown=60.0, max_attempts=6,
                            scratch=str(tmp_path / "scratch"), margin_seconds=0.5)
    with VideoServer(folder).running() as server, forwarding_proxy("alice", PASSWORD) as live, \
            black_hole() as hole, status_proxy(403) as blocked, status_proxy(429) as throttled:
        proxies = tmp_path / "proxies.txt"
        proxies.write_text("\n".join([dead_port(), hole, blocked, throttled, live]) + "\n")
        shard = write_manifest(tmp_path / "s0002.csv",
                               [ManifestEntry(Path(r["video_file"]).stem, server.url(r["video_file"])) for r in labels])
        rows = download_shard(shard, tmp_path / "out", params, seconds=2.0, proxies=proxies, progress=False,
                              compute=ray_compute(cluster, tmp_path / "engine", download_cpus=0.25))
        assert all(server.proxied), "a request bypassed the proxies"
    assert all(r["status"] == "ok" and r["proxy"] == redact(live) for r in rows)
    # One pool for the cluster: each bad proxy failed once, then rested (60 s) for every worker.
    assert sum(r["attempts"] for r in rows) == len(rows) + 4
    assert {r["video_id"] for r in read_status(tmp_path / "out")} == {r["video_id"] for r in rows}
    logs = [p for p in cluster.root.rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if PASSWORD.encode() in p.read_bytes()], "a password reached Ray's files"


@pytest.mark.parametrize("values, expected", [
    ({"engine": "spark"}, "compute.engine must be one of 'local', 'ray', got 'spark'"),
    ({"ray_address": "http://head:6379"}, "compute.ray_address: must be '', 'auto', HOST:PORT or ray://HOST:PORT"),
    ({"visual": {"gpu": 1}}, "unknown key 'compute.visual.gpu' (did you mean 'compute.visual.gpus'?)"),
    ({"max_retries": -1}, "compute.max_retries must be >= 0"),
])
def test_compute_params_are_checked(tmp_path, values, expected):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"compute": values}))
    with pytest.raises(ParamsError) as err:
        load_params(path, ["compute"])
    assert expected in str(err.value)


def test_local_engine_default_never_imports_ray(tmp_path):
    """The embedded default (engine local) runs the stages without importing Ray."""
    code = ("import sys; from pipeline.config import load_params; import stages.download, stages.clip, "
            "stages.separate, stages.visual, stages.motion, stages.codes; "
            "from pipeline.engine import open_engine; "
            "assert load_params(sections=['compute'])['compute'].engine == 'local'; "
            "assert open_engine(load_params(sections=['compute'])['compute']) is None; "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_shared_pool_tries_an_unproven_proxy_on_one_worker_at_a_time(tmp_path):
    """The cluster's pool (plain class here): a new proxy goes to one worker until it works; then it is
    shared; a failed one rests for every worker."""
    now = [0.0]
    listing = tmp_path / "proxies.txt"
    listing.write_text("http://a:1\nhttp://b:2\n")
    pool = SharedProxyPool(str(listing), cooldown=10.0, clock=lambda: now[0])
    first, second = pool.lease(), pool.lease()
    assert [first[0], second[0]] == [0, 1]
    assert pool.lease()[0] == -1                 # both on trial: ask again later
    pool.failed(1)
    assert pool.lease()[0] == -1                 # b rests, a still on trial
    pool.succeeded(0)
    assert [pool.lease()[0] for _ in range(3)] == [0, 0, 0]   # a works: shared
    now[0] = 11.0                                # b is back from its rest, on trial again
    assert {pool.lease()[0] for _ in range(2)} == {0, 1}
