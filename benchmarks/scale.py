"""The Ray engine's cost and scaling, in ONE run on the same clips.

(a) clip-seconds per wall-second of the feature stages (visual + motion) with ``compute.engine: local``
    and with ``engine: ray`` (Ray started on this machine, every CPU); the ratio ray/local
    (target >= 0.9 at 2 CPUs: the engine's overhead, bytes through the object store and per-clip
    CLIP batches, must stay small).
(b) the shard's wall time, download .. codes, on a loopback cluster whose head does no work
    (0 CPUs) with 1 and then 2 worker nodes of ``--node-cpus`` CPUs each. On one machine the
    nodes share its cores: the figure shows the engine's scaling only where the nodes are real.
Uses the full ViT-B/32 architecture (random weights, same cost), the embedded default's Demucs
size and a calibrated-size random EnCodec. Time it on a quiet machine.

The Ray engine pays a start-up cost per stage (fresh worker processes import torch and transformers,
the actor loads CLIP: ~3 s here) and ~20 ms per clip of task overhead in the motion stage; (a) is
therefore run on a shard-like number of clips by default (measured on 2 cores: ray/local 0.50 at 8
clips, 0.81 at 48, 0.95 at 160; a V2M shard has 2000).

Usage: python benchmarks/scale.py [--clips 160] [--shard-clips 8] [--seconds 6] [--node-cpus 1] [--skip-nodes]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import private_network  # noqa: E402

if __name__ == "__main__":
    # Ray's servers listen on every interface: the benchmark's clusters live in a loopback-only network.
    # First of all, so the heavy imports below run once, in the re-executed process.
    private_network.enter()

from pipeline.acquire.clip import clip_shard  # noqa: E402
from pipeline.acquire.download import download_shard  # noqa: E402
from pipeline.acquire.manifest import ManifestEntry, write_manifest  # noqa: E402
from pipeline.config import (ClipParams, CodesFeatureParams, ComputeParams, DownloadParams,  # noqa: E402
                             MotionFeatureParams, ModelActorParams, SampleParams, SeparateParams, VisualFeatureParams)
from pipeline.features.codec import random_codec  # noqa: E402
from pipeline.features.extract import codes_shard, motion_shard, visual_shard  # noqa: E402
from pipeline.features.visual import save_random_clip_model  # noqa: E402
from pipeline.separate import save_random_from_params, separate_shard  # noqa: E402
from pipeline.status import summary  # noqa: E402
from pipeline.synth import read_labels, render_sample_set  # noqa: E402
from tests.raycluster import LocalCluster  # noqa: E402


def feature_stages(clips: Path, out: Path, visual: VisualFeatureParams, flow: MotionFeatureParams,
                   compute: ComputeParams | None, workers: int) -> dict[str, float]:
    """Wall seconds of visual and of motion over ``clips``."""
    start = time.perf_counter()
    visual_shard(clips, out / "clip.parquet", visual, compute, progress=False)
    middle = time.perf_counter()
    motion_shard(clips, out / "flow.parquet", flow, compute, workers=workers, progress=False)
    return {"visual": middle - start, "motion": time.perf_counter() - middle}


def whole_shard(work: Path, manifest: Path, models: dict, clip: ClipParams, compute: ComputeParams) -> float:
    """Wall seconds of download .. codes of one shard."""
    start = time.perf_counter()
    raw, clips, separated = work / "raw", work / "clips", work / "separated"
    stages = {
        "download": download_shard(manifest, raw, DownloadParams(scratch=str(work / "scratch"), margin_seconds=0.5,
                                                                 file_roots=(str(manifest.parent / "sample"),)),
                                   seconds=clip.seconds, progress=False, compute=compute)}
    stages["clip"] = clip_shard(raw, clips, clip, progress=False, compute=compute)
    stages["separate"] = separate_shard(clips, separated, models["separate"], target_rate=clip.target_rate,
                                        progress=False, compute=compute)
    stages["visual"] = visual_shard(clips, work / "clip.parquet", models["visual"], compute, progress=False)
    stages["motion"] = motion_shard(clips, work / "flow.parquet", MotionFeatureParams(), compute, progress=False)
    stages["codes"] = codes_shard(separated, work / "codes.parquet", models["codes"], compute, progress=False)
    elapsed = time.perf_counter() - start
    # A time of work that failed would mean nothing.
    for stage, rows in stages.items():
        if not rows or any(row["status"] != "ok" for row in rows):
            failed = next((row for row in rows if row["status"] != "ok"), {})
            raise SystemExit(f"scale.py: stage {stage} did not finish every clip: {summary(rows)}; "
                             f"first: {failed.get('error_message')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=160, help="clips of (a)")
    parser.add_argument("--shard-clips", type=int, default=8, help="clips of (b), the first of (a)'s")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs of each worker node in (b)")
    parser.add_argument("--skip-nodes", action="store_true", help="only (a)")
    args = parser.parse_args()
    print(f"private network namespace: {private_network.state()}")
    import os

    import ray

    cpus = os.cpu_count() or 1
    # (a)'s Ray and (b)'s loopback cluster share this process, which keeps the auth mode of its first
    # ray.init: both run without token authentication (else (b)'s workers cannot fetch the driver's objects).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    with tempfile.TemporaryDirectory(prefix="v2m-scale-", dir="/tmp") as scratch_name:
        scratch = Path(scratch_name)
        sample = scratch / "sample"
        render_sample_set(sample, SampleParams(n_clips=args.clips, seconds=args.seconds + 0.5), progress=False)
        labels = read_labels(sample)
        entries = [ManifestEntry(r["video_id"], (sample / r["video_file"]).as_uri()) for r in labels]
        manifest = write_manifest(scratch / "s0001.csv", entries)
        clip = ClipParams(seconds=args.seconds, min_seconds=args.seconds)
        download_shard(manifest, scratch / "raw", DownloadParams(scratch=str(scratch / "dl"), file_roots=(str(sample),)),
                       seconds=clip.seconds, progress=False)
        clip_shard(scratch / "raw", scratch / "clips", clip, progress=False)
        save_random_clip_model(scratch / "clip-model", 0)
        visual = VisualFeatureParams(model=str(scratch / "clip-model"), device="cpu")
        flow = MotionFeatureParams()
        content = args.clips * args.seconds

        local = feature_stages(scratch / "clips", scratch / "local", visual, flow, None, workers=cpus)
        pool = ModelActorParams(actors=1, cpus=float(cpus), batch_size=4)
        here = ComputeParams(engine="ray", scratch=str(scratch / "engine"), visual=pool, motion_cpus=1.0)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)   # startup is not the stage's cost
        on_ray = feature_stages(scratch / "clips", scratch / "ray", visual, flow, here, workers=cpus)
        ray.shutdown()
        print(f"(a) feature stages (visual + motion), {args.clips} clips x {args.seconds:g} s, {cpus} CPUs:")
        for name, seconds in (("local", local), ("ray", on_ray)):
            total = sum(seconds.values())
            print(f"    {name:<6} {content / total:7.2f} clip-s/s   ({total:.1f} s: visual {seconds['visual']:.1f} s, "
                  f"motion {seconds['motion']:.1f} s)")
        print(f"    ray/local = {sum(local.values()) / sum(on_ray.values()):.3f}   (target >= 0.9); visual "
              f"{local['visual'] / on_ray['visual']:.3f}, motion {local['motion'] / on_ray['motion']:.3f}")
        if args.skip_nodes:
            return

        shard_manifest = write_manifest(scratch / "s0002.csv", entries[:args.shard_clips])
        separate = SeparateParams(repo=str(scratch / "demucs"), device="cpu")
        save_random_from_params(separate)
        random_codec(seed=0).save_pretrained(scratch / "codec")
        models = {"separate": separate, "visual": visual,
                  "codes": CodesFeatureParams(codec=str(scratch / "codec"), device="cpu")}
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="v2m-rc-", dir="/tmp")))
        node_pool = ModelActorParams(actors=1, cpus=float(args.node_cpus), batch_size=2)
        try:
            cluster.start_head(cpus=0)
            cluster.start_worker(cpus=args.node_cpus)
            times = {}
            for nodes in (1, 2):
                if nodes == 2:
                    ray.init(address=cluster.address, log_to_driver=False)
                    cluster.start_worker(cpus=args.node_cpus)
                    ray.shutdown()
                pools = dict(separate=dataclasses.replace(node_pool, actors=nodes), visual=dataclasses.replace(node_pool, actors=nodes),
                             codec=dataclasses.replace(node_pool, actors=nodes))
                compute = ComputeParams(engine="ray", ray_address=cluster.address, scratch=str(scratch / f"e{nodes}"),
                                        **pools)
                ray.init(address=cluster.address, log_to_driver=False)
                times[nodes] = whole_shard(scratch / f"shard{nodes}", shard_manifest, models, clip, compute)
                ray.shutdown()
                shutil.rmtree(scratch / f"shard{nodes}", ignore_errors=True)
        finally:
            ray.shutdown()
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        print(f"(b) shard download .. codes, {min(args.shard_clips, args.clips)} clips, worker nodes of {args.node_cpus} CPU(s), head 0 CPUs:")
        print(f"    1 node   {times[1]:7.1f} s")
        print(f"    2 nodes  {times[2]:7.1f} s   speedup {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
