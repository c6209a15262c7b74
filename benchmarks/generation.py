"""Generation speed, and what our compact conditioning saves over VidMuse-style conditioning.

1. Sampling speed as a multiple of real time (seconds of music per second of compute; > 1 is faster
   than real time), with classifier-free guidance (a doubled batch) and the KV cache, for the model
   presets on random weights (same cost as trained ones): ``tiny`` and ``small`` (musicgen-small's
   decoder). On CUDA when available (bf16), else CPU with the thread rule of ``v2m generate``.
2. End to end on CPU for the embedded default (``--model``, default models/v2m if it exists): a 30 s
   video through ``generate_music`` (decode, CLIP, flow, windowed sampling, codec decoding, loudness).
3. On CPU, the faster sampling options against float32: the static KV cache (``generate.static_kv_cache``:
   same numbers) and the int8 decoder (``generate.cpu_quantize``), with the int8 decoder's fidelity on the
   same inputs and seed (per-token agreement and held-out CE difference, teacher-forced: see
   ``pipeline.model.sampling.sampling_fidelity``); float32 stays the default where CE moves more than
   0.01 nats/token.
4. In one run, at equal decoder size: our condition (N_v * P = 60 x 2 = 120 cross-attention tokens for
   a 30 s window) against a VidMuse-style one (all 50 CLIP tokens of 60 frames = 3000), per-step
   sampling time and ratio.

Usage: python benchmarks/generation.py [--sizes tiny small] [--seconds 30] [--small-seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

import pipeline  # noqa: F401  (first: the thread policy's OpenMP wait setting must precede torch)
import torch  # noqa: E402

from pipeline import threads
from pipeline.config import FeaturesParams, GenerateParams, ModelParams
from pipeline.device import torch_threads
from pipeline.generate import SMALL_DECODER_WIDTH
from pipeline.features.recipe import StreamRates
from pipeline.model.builder import build_model
from pipeline.model.sampling import generate_codes, quantize_decoder, sampling_fidelity


def sampling_seconds(model, tokens: int, steps: int, device: str, cfg: float = 3.0, static_cache: bool = False) -> float:
    """Wall time of sampling ``steps`` code frames with a condition of ``tokens`` rows."""
    z = torch.randn(1, tokens, model.config.decoder_dim, device=device) * 0.1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    threads = 1 if device == "cpu" and model.config.decoder_dim < SMALL_DECODER_WIDTH else 0
    with torch_threads(threads), autocast:
        generate_codes(model, z, 4, cfg=cfg, generator=torch.Generator().manual_seed(0),
                       static_cache=static_cache)    # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate_codes(model, z, steps, cfg=cfg, generator=torch.Generator().manual_seed(0), static_cache=static_cache)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def fast_paths(model, size: str, seconds: float, steps: int, float32_seconds: float) -> None:
    """CPU: the static KV cache and the int8 decoder (generate.static_kv_cache, generate.cpu_quantize):
    speed against float32 with the dynamic cache, and the int8 decoder's fidelity on the same inputs and seed."""
    tokens = int(2 * 30) * model.config.tokens_per_frame
    static = sampling_seconds(model, tokens, steps, "cpu", static_cache=True)
    print(f"  static KV cache: {seconds / static:.3f}x real time ({1000 * static / steps:.1f} ms/step; "
          f"{float32_seconds / static:.2f}x the dynamic cache's speed; same numbers)")
    fast = quantize_decoder(copy.deepcopy(model))
    for label, static_cache in (("int8 decoder", False), ("int8 decoder + static KV cache", True)):
        quantized = sampling_seconds(fast, tokens, steps, "cpu", static_cache=static_cache)
        print(f"  {label}: {seconds / quantized:.3f}x real time ({1000 * quantized / steps:.1f} ms/step; "
              f"{float32_seconds / quantized:.2f}x float32's speed)")
    # Fidelity: the same condition and held-out codes (float32's own CFG sample, seed 0) through both.
    z = torch.randn(1, tokens, model.config.decoder_dim, generator=torch.Generator().manual_seed(1)) * 0.1
    held_out = generate_codes(model, z, steps, cfg=3.0, generator=torch.Generator().manual_seed(0))
    f = sampling_fidelity(model, fast, z, held_out, cfg=3.0, top_k=250, seed=0)
    verdict = ("within 0.01: cpu_quantize could be the default at this size" if abs(f["ce_difference"]) <= 0.01
               else "more than 0.01: float32 stays the default at this size")
    print(f"  int8 fidelity vs float32 ({steps} steps, CFG 3, top-k 250, seed 0): per-token agreement "
          f"{f['token_agreement']:.4f} (greedy {f['greedy_agreement']:.4f}); held-out CE {f['ce_fast']:.4f} vs "
          f"{f['ce_reference']:.4f} nats/token, difference {f['ce_difference']:+.4f} ({verdict}); random weights "
          f"at {size}: re-check on trained weights")


def end_to_end(model_dir: Path, seconds: float) -> None:
    from pipeline import media
    from pipeline.generate import Generator, generate_music

    generator = Generator.load(model_dir, device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        video = Path(scratch) / "video.mp4"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        media.write_mp4(video, (np.roll(base, 3 * i, axis=1) for i in range(int(seconds * 12))), 12)
        start = time.perf_counter()
        music = generate_music(generator, video, GenerateParams(), progress=False)
        elapsed = time.perf_counter() - start
    print(f"end to end (embedded default {model_dir}, CPU): {seconds:.0f} s video, {len(music.windows)} windows, "
          f"{elapsed:.1f} s -> {seconds / elapsed:.2f}x real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seconds", type=float, default=30.0, help="music per measurement (tiny, and CUDA)")
    parser.add_argument("--small-seconds", type=float, default=2.0, help="music per measurement for small on CPU")
    parser.add_argument("--model", type=Path, default=Path("models/v2m"), help="exported model for the end-to-end run")
    args = parser.parse_args()
    threads.apply()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}")

    for size in args.sizes:
        model = build_model(ModelParams(size=size), StreamRates.of(FeaturesParams())).to(device).eval()
        seconds = args.small_seconds if size == "small" and device == "cpu" else args.seconds
        steps = int(seconds * 50)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        ours = sampling_seconds(model, int(2 * 30) * model.config.tokens_per_frame, steps, device)
        vidmuse = sampling_seconds(model, 50 * 60, steps, device)
        print(f"{size} ({n_params:.1f}M params), {seconds:.0f} s of music with CFG 3: "
              f"{ours:.2f} s -> {seconds / ours:.2f}x real time ({1000 * ours / steps:.1f} ms/step)")
        print(f"  conditioning at equal decoder size: ours 120 tokens {1000 * ours / steps:.2f} ms/step, "
              f"VidMuse-style 3000 tokens {1000 * vidmuse / steps:.2f} ms/step: VidMuse-style / ours = "
              f"{vidmuse / ours:.2f}x")
        if device == "cpu":
            fast_paths(model, size, seconds, steps, ours)
        del model
    if device == "cpu" and (args.model / "features.json").is_file():
        end_to_end(args.model, args.seconds)
    elif device == "cpu":
        print(f"end to end: skipped ({args.model}/features.json missing; run `dvc repro train` first)")


if __name__ == "__main__":
    main()
