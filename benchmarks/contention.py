"""Speed that holds on a busy machine: each workload alone, then beside a busy loop that holds one core.

In one run, for the codes stage (clips/s: ``codes_table`` over 6 s clips with a random EnCodec 32 kHz),
the visual stage (frames/s: decode + preprocess + CLIP ViT-B/32 + Parquet, ``extract_tables``) and
training (steps/s: forward + backward + AdamW of the tiny model on the train stage's shapes, batch 8
x 4 s): the rate alone, then the rate while a busy-loop process this script starts (and stops)
spins on one core, and the ratio busy/alone. On 2 cores the fair share is 0.5; target >= 0.45.

Each measurement is a fresh worker process that goes through the stages' thread policy
(pipeline/threads.py: the OpenMP wait policy is set before torch loads, threads sized to the cores
free when it starts), so what is measured is what a stage does. ``--old-policy`` runs the workers
with ``V2M_THREADS=legacy`` (torch's defaults, spinning waits: the behaviour before the policy), for
the before figure.

Usage: python benchmarks/contention.py [--old-policy] [--only codes visual train] [--min-seconds 20]
       python benchmarks/contention.py --quick      # a tiny configuration: checks the script, not the machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = ("codes", "visual", "train")
UNITS = {"codes": "clips/s", "visual": "frames/s", "train": "steps/s"}
SPIN = "while True:\n    pass\n"


# ------------------------------------------------------------------------------------------ workers

def _timed(step, min_seconds: float, min_iterations: int) -> tuple[float, int]:
    """Run ``step`` (returns units done) until both minimums are met; (units per second, iterations)."""
    step()  # warm-up: first calls allocate and pick kernels
    done, iterations, start = 0.0, 0, time.perf_counter()
    while iterations < min_iterations or time.perf_counter() - start < min_seconds:
        done += step()
        iterations += 1
    return done / (time.perf_counter() - start), iterations


def worker(name: str, data: Path, min_seconds: float, quick: bool) -> dict:
    from pipeline import threads

    chosen = threads.apply()   # as every stage does in its user_errors wrapper
    import torch

    from pipeline.config import CodesFeatureParams, FeaturesParams, ModelParams, VisualFeatureParams
    from pipeline.features.extract import ClipInput, codes_table, extract_tables

    clips = json.loads((data / "clips.json").read_text())
    if name == "codes":
        from pipeline.features.codec import random_codec

        model = random_codec(seed=0).eval()
        ids = [c["video_id"] for c in clips]

        def step() -> float:
            rows = codes_table(ids, data / "audio", data / "codes.parquet", CodesFeatureParams(), model,
                               progress=False)
            return float(len(rows))
    elif name == "visual":
        from pipeline.features.visual import TransformersVisual, random_clip_model

        arch = dict(num_hidden_layers=2) if quick else {}
        model = TransformersVisual(random_clip_model(seed=0, **arch).eval())
        inputs = [ClipInput(c["video_id"], Path(c["path"]), c["seconds"]) for c in clips]
        params = VisualFeatureParams(model="random ViT-B/32", batch_size=32)

        def step() -> float:
            rows = extract_tables(inputs, visual=params, model=model, visual_out=data / "clip.parquet", progress=False)
            return float(sum(r["rows"] for r in rows))
    elif name == "train":
        from pipeline.features.recipe import StreamRates
        from pipeline.model.builder import build_model

        torch.manual_seed(0)
        model = build_model(ModelParams(size="tiny"), StreamRates.of(FeaturesParams())).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch, seconds = (2, 1.0) if quick else (8, 4.0)
        visual = torch.randn(batch, int(2 * seconds), 50, 768)
        motion = torch.rand(batch, int(4 * seconds), 224, 224)
        codes = torch.randint(0, 2048, (batch, 4, int(50 * seconds)))

        def step() -> float:
            loss = model(visual, motion, codes).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return 1.0
    else:
        raise SystemExit(f"contention: unknown workload {name!r}")
    rate, iterations = _timed(step, min_seconds, 1 if quick else 3)
    return {"workload": name, "rate": rate, "iterations": iterations, "threads": torch.get_num_threads(),
            "busy_cores_seen": round(chosen.busy_cores, 2), "policy": chosen.source,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


# ------------------------------------------------------------------------------------------ driver

def prepare(data: Path, clips: int, seconds: float) -> None:
    """v2m-synth clips (the visual stage's input) and their 32 kHz mono audio (the codes stage's)."""
    from pipeline import media
    from pipeline.config import SampleParams
    from pipeline.synth import read_labels, render_sample_set

    render_sample_set(data / "clips", SampleParams(n_clips=clips, seconds=seconds), progress=False)
    rows = read_labels(data / "clips")
    listing = []
    for row in rows:
        path = data / "clips" / row["video_file"]
        mono, _ = media.decode_audio(path, 32000, channels=1)
        media.write_wav(data / "audio" / f"{row['video_id']}.wav", mono, 32000)
        listing.append({"video_id": row["video_id"], "path": str(path), "seconds": seconds})
    (data / "clips.json").write_text(json.dumps(listing))


def run_worker(name: str, data: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    if args.old_policy:
        env["V2M_THREADS"] = "legacy"
    command = [sys.executable, __file__, "--worker", name, "--data", str(data), "--min-seconds", str(args.min_seconds)]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"contention: the {name} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-policy", action="store_true",
                        help="workers keep torch's default threads and spin-waits (V2M_THREADS=legacy): the before figure")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--min-seconds", type=float, default=20.0, help="timed seconds per measurement, at least")
    parser.add_argument("--clips", type=int, default=4, help="6 s v2m-synth clips per pass")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configuration (1 clip of 2 s, 2-layer CLIP, batch 2 x 1 s, 1 s timed): a smoke test")
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.min_seconds, args.quick)))
        return
    if args.quick:
        args.min_seconds, args.clips = min(args.min_seconds, 1.0), 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"contention: {cores} cores; policy {'old (V2M_THREADS=legacy)' if args.old_policy else 'v2m (pipeline/threads.py)'}; "
          f"load average before {os.getloadavg()[0]:.2f} (a figure is only meaningful on an otherwise quiet machine)")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        prepare(data, args.clips, 2.0 if args.quick else 6.0)
        for name in args.only:
            alone = run_worker(name, data, args)
            spinner = subprocess.Popen([sys.executable, "-c", SPIN])
            try:
                time.sleep(1.0)   # the busy loop is running before the worker looks at the load
                busy = run_worker(name, data, args)
            finally:
                spinner.kill()
                spinner.wait()
            ratio = busy["rate"] / alone["rate"]
            results.append(ratio)
            print(f"{name:<7} alone {alone['rate']:8.3f} {UNITS[name]} ({alone['threads']} threads), "
                  f"beside a busy core {busy['rate']:8.3f} {UNITS[name]} ({busy['threads']} threads): "
                  f"busy/alone = {ratio:.2f} (target >= 0.45)")
    print(f"worst ratio {min(results):.2f}; {'all' if min(results) >= 0.45 else 'NOT all'} >= 0.45")


if __name__ == "__main__":
    main()
