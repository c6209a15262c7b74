"""The GPU figures, in one run of a few minutes on one CUDA GPU (run it through benchmarks/gpu.sh).

1. Training at the paper's size: the musicgen-small-sized model (``model.size: small``), bf16
   autocast, 30 s segments (60 CLIP frames x 50 tokens x 768, 120 flow maps 224x224, codes
   [B, 4, 1500]), AdamW; the largest batch of 64, 32, 16, ... that fits. Audio tokens/s (B x K x T per
   step) and model FLOPs utilisation: (6 x params + 12 x layers x width x T) FLOPs per position
   (dense weights plus self-attention) over the GPU's dense bf16 peak (``--peak-tflops``).
2. Generation at small size: 30 s of music with CFG 3 and the KV cache (bf16 autocast), as a multiple
   of real time (seconds of music per second of compute), with the dynamic and the static cache.
3. CLIP ViT-B/32 (random weights, same cost): frames/s through ``encode_frames`` in float32 (the
   stage's default ``features.visual.dtype``) and float16.
4. Demucs with htdemucs's architecture (48 channels, depth 4, 5 transformer layers, dconv_mode 3,
   bottom_channels 512, 4 sources, 7.8 s segments: 41.98M parameters; random weights): ``apply_model`` on 60 s of stereo 44.1 kHz
   audio, overlap 0.25, no shifts: x real time.
5. EnCodec 32 kHz encoding (random weights): 16 clips of 30 s in one batch, x real time.

Every figure is measured after a warm-up, with ``torch.cuda.synchronize`` around the timed part.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import numpy as np

import pipeline  # noqa: F401  (first: the thread policy's OpenMP wait setting must precede torch)
import torch  # noqa: E402

from pipeline.config import FeaturesParams, ModelParams
from pipeline.features.recipe import StreamRates
from pipeline.model.builder import build_model
from pipeline.model.sampling import generate_codes

DEVICE = "cuda"   # "cpu" only under --smoke


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1, warm_up=None) -> float:
    """Seconds per call of ``fn`` after one warm-up call (of ``warm_up`` when given: a shorter one)."""
    (warm_up or fn)()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def autocast():
    return torch.autocast(DEVICE, dtype=torch.bfloat16)


def training(seconds: float, steps: int, peak_tflops: float, batches: list[int], size: str = "small") -> None:
    model = build_model(ModelParams(size=size), StreamRates.of(FeaturesParams())).to(DEVICE).train()
    config = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=3.5e-5)
    params = sum(p.numel() for p in model.parameters())
    t = int(config.codes_rate * seconds)
    for batch in batches:
        try:
            visual = torch.randn(batch, int(config.visual_fps * seconds), 50, 768, device=DEVICE)
            motion = torch.rand(batch, int(config.motion_fps * seconds), 224, 224, device=DEVICE)
            codes = torch.randint(0, config.codebook_size, (batch, config.num_codebooks, t), device=DEVICE)

            def step() -> None:
                with autocast():
                    loss = model(visual, motion, codes).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            per_step = timed(step, steps)
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            visual = motion = codes = None
            torch.cuda.empty_cache()
            print(f"training: batch {batch} x {seconds:g} s does not fit; trying a smaller one")
            continue
        positions = batch * t
        flops = (6 * params + 12 * config.decoder_layers * config.decoder_dim * t) * positions
        memory = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
        print(f"training ({size}, {params / 1e6:.0f}M params, bf16, {seconds:g} s segments): largest batch {batch}; "
              f"{per_step:.3f} s/step; {batch * config.num_codebooks * t / per_step:,.0f} audio tokens/s "
              f"({positions / per_step:,.0f} positions/s); MFU {flops / per_step / (peak_tflops * 1e12):.1%} "
              f"of {peak_tflops:g} TFLOPS; peak memory {memory:.1f} GiB")
        break
    else:
        print("training: no batch size fitted")


def generation(seconds: float, size: str = "small") -> None:
    model = build_model(ModelParams(size=size), StreamRates.of(FeaturesParams())).to(DEVICE).eval()
    config = model.config
    z = torch.randn(1, int(config.visual_fps * seconds) * config.tokens_per_frame, config.decoder_dim, device=DEVICE)
    steps = int(config.codes_rate * seconds)
    for static in (False, True):
        def sample(count: int = steps) -> None:
            with autocast():
                generate_codes(model, z, count, cfg=3.0, generator=torch.Generator().manual_seed(0),
                               static_cache=static)
        per_run = timed(sample, warm_up=lambda: sample(20))
        print(f"generation ({size}, CFG 3, {'static' if static else 'dynamic'} KV cache, bf16): {seconds:g} s of "
              f"music in {per_run:.1f} s = {seconds / per_run:.2f}x real time ({1000 * per_run / steps:.1f} ms/step)")


def clip_frames(frames: int, batches: tuple[int, int] = (256, 512)) -> None:
    from pipeline.features.visual import encode_frames, random_clip_model

    pixels = torch.randn(frames, 3, 224, 224)
    for dtype, batch in zip((torch.float32, torch.float16 if DEVICE == "cuda" else torch.bfloat16), batches):
        model = random_clip_model(seed=0).to(DEVICE, dtype).eval()
        per_run = timed(lambda: encode_frames(model, pixels, batch))
        print(f"CLIP ViT-B/32 ({str(dtype).split('.')[-1]}, batch {batch}): {frames / per_run:,.0f} frames/s "
              f"(host-to-device copy and float16 tokens back to the CPU included)")


def demucs_rtf(seconds: float) -> None:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # htdemucs's training config (demucs/grids/mmi.py): depth 4, 5 transformer layers, dconv_mode 3,
        # bottom_channels 512; 41.98M parameters, as the released 955717e8 checkpoint.
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100,
                         segment=Fraction(39, 5), depth=4, t_layers=5, dconv_mode=3, bottom_channels=512).eval()
    mix = torch.randn(1, 2, int(44100 * seconds)) * 0.1
    with torch.inference_mode():
        per_run = timed(lambda: apply_model(model, mix, shifts=0, split=True, overlap=0.25, device=DEVICE,
                                            progress=False))
    params = sum(p.numel() for p in model.parameters())
    print(f"Demucs htdemucs architecture ({params / 1e6:.1f}M params, float32): {seconds:g} s stereo in "
          f"{per_run:.2f} s = {seconds / per_run:.1f}x real time")


def encodec_rtf(clips: int, seconds: float) -> None:
    from pipeline.features import codec as codec_lib

    model = codec_lib.random_codec(seed=0).to(DEVICE).eval()
    audio = (np.random.default_rng(0).standard_normal((clips, 1, int(32000 * seconds))) * 0.1).astype(np.float32)
    per_run = timed(lambda: codec_lib.encode_batch(model, audio, bandwidth=2.2))
    print(f"EnCodec 32 kHz encode (float32, {clips} clips x {seconds:g} s in one batch): "
          f"{clips * seconds / per_run:,.0f}x real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16 peak for MFU (H100/H200 SXM: 989; A100: 312)")
    parser.add_argument("--seconds", type=float, default=30.0, help="training segment and generated music length")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 32, 16, 8, 4, 2, 1],
                        help="training batch sizes to try, largest first")
    parser.add_argument("--smoke", action="store_true",
                        help="check the code paths on the CPU at tiny sizes (no meaningful figures; for development)")
    parser.add_argument("--only", nargs="+", choices=("train", "generate", "clip", "demucs", "encodec"),
                        default=["train", "generate", "clip", "demucs", "encodec"])
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        print("SMOKE RUN on the CPU at tiny sizes: checks the code paths, the figures mean nothing")
        steps = {"train": lambda: training(1.0, 1, args.peak_tflops, [2], size="tiny"),
                 "generate": lambda: generation(0.5, size="tiny"),
                 "clip": lambda: clip_frames(4, (2, 2)),
                 "demucs": lambda: demucs_rtf(2.0),
                 "encodec": lambda: encodec_rtf(2, 1.0)}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py: no CUDA device visible to torch; the GPU suite needs one")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
        steps = {"train": lambda: training(args.seconds, args.steps, args.peak_tflops, args.batches),
                 "generate": lambda: generation(args.seconds),
                 "clip": lambda: clip_frames(2048),
                 "demucs": lambda: demucs_rtf(60.0),
                 "encodec": lambda: encodec_rtf(16, 30.0)}
    start = time.perf_counter()
    failed = []
    for key in args.only:
        try:
            steps[key]()   # its models are freed when it returns
        except Exception as exc:  # one broken part must not cost the other figures
            failed.append(key)
            print(f"{key}: FAILED: {type(exc).__name__}: {exc}")
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    print(f"GPU suite: {time.perf_counter() - start:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
