"""Training throughput: audio tokens per second (K x T per segment) for the model presets.

Times forward + backward + AdamW step on random inputs of the real shapes (CLIP tokens [B, 2L, 50, 768],
flow maps [B, 4L, 224, 224], codes [B, 4, 50L]) after warm-up steps; on CUDA when available (bf16
autocast there), else CPU. Also prints model FLOPs utilisation on CUDA against the given peak.

Usage: python benchmarks/training.py [--sizes tiny small] [--batch 8] [--seconds 4] [--steps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from pipeline.config import FeaturesParams, ModelParams
from pipeline.features.recipe import StreamRates
from pipeline.model.builder import build_model


def measure(size: str, batch: int, seconds: float, steps: int, device: str) -> tuple[float, float, int]:
    model = build_model(ModelParams(size=size), StreamRates.of(FeaturesParams())).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_v, n_m, t = int(2 * seconds), int(4 * seconds), int(50 * seconds)
    visual = torch.randn(batch, n_v, 50, 768, device=device)
    motion = torch.rand(batch, n_m, 224, 224, device=device)
    codes = torch.randint(0, 2048, (batch, 4, t), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = model(visual, motion, codes).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    params = sum(p.numel() for p in model.parameters())
    return batch * 4 * t / elapsed, elapsed, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak, for MFU")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for size in args.sizes:
        batch = args.batch if size == "tiny" or device == "cuda" else 1
        tokens_per_s, seconds_per_step, params = measure(size, batch, args.seconds, args.steps, device)
        line = (f"{size:<5} {params / 1e6:7.1f}M params, batch {batch} x {args.seconds:g} s on {device} "
                f"({torch.get_num_threads()} threads): {seconds_per_step:.3f} s/step, {tokens_per_s:,.0f} audio tokens/s")
        if device == "cuda":
            # 6 x params x tokens per step: the usual dense-transformer estimate (the decoder dominates).
            flops = 6 * params * (batch * 50 * args.seconds) / seconds_per_step
            line += f", MFU {flops / (args.peak_tflops * 1e12):.1%}"
        print(line)


if __name__ == "__main__":
    main()
