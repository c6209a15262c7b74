"""Demucs separation speed (multiple of real time) and accompaniment SDR on synthetic clips.

Two random-weights configs: `tiny` (params.yaml defaults of separate.embedded, saved and loaded
through Demucs's folder format) and `full` (the released htdemucs architecture, 42 M parameters:
the real model's cost). CPU always, CUDA too when torch sees it. SDR here shows the plumbing only;
it means something only with real weights.

Usage: python benchmarks/separation.py [--clips N] [--seconds S] [--configs tiny full] [--shifts K]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from demucs.htdemucs import HTDemucs

from pipeline.config import EmbeddedSeparatorParams, SampleParams
from pipeline.separate import SOURCES, load_separator, save_random_htdemucs, separate_accompaniment
from pipeline.synth.music import render_stems
from pipeline.synth.spec import sample_clip_spec

# The kwargs of the released htdemucs (955717e8): HTDemucs defaults except these.
HTDEMUCS_RELEASE = dict(sources=list(SOURCES), audio_channels=2, samplerate=44100, segment=Fraction(39, 5),
                        channels=48, depth=4, nfft=4096, bottom_channels=512, dconv_mode=3, t_layers=5, t_heads=8)


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(sum(ref^2) / sum((ref - est)^2)) in dB, over all channels and samples."""
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - estimate) ** 2), 1e-20)))


def build(config: str, scratch: Path):
    if config == "tiny":
        init = EmbeddedSeparatorParams()
        repo = save_random_htdemucs(scratch / "tiny", "tiny", channels=init.channels, depth=init.depth,
                                    transformer_layers=init.transformer_layers, seed=init.seed)
        return load_separator(repo, "tiny", device="cpu")
    torch.manual_seed(0)
    return HTDemucs(**HTDEMUCS_RELEASE).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--configs", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--shifts", type=int, default=0)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    params = SampleParams(n_clips=args.clips, seconds=args.seconds)
    clips = [render_stems(sample_clip_spec(params, index)) for index in range(args.clips)]
    do_nothing = np.mean([sdr(acc, acc + vocals) for acc, vocals in clips])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for config in args.configs:
            model = build(config, Path(scratch))
            n_params = sum(p.numel() for p in model.parameters())
            for device in devices:
                model.to(device)
                # The first call builds kernels for the chunk shape (every chunk is padded to the same one).
                separate_accompaniment(model, clips[0][0][:, :44100], device=device)
                elapsed, scores = 0.0, []
                for accompaniment, vocals in clips:
                    start = time.perf_counter()
                    stems = separate_accompaniment(model, accompaniment + vocals, overlap=args.overlap,
                                                   shifts=args.shifts, device=device)
                    elapsed += time.perf_counter() - start
                    scores.append(sdr(accompaniment, stems.accompaniment))
                rows.append((config, n_params, device, args.clips * args.seconds / elapsed, float(np.mean(scores))))
                print(f"done: {config} on {device}", flush=True)
    print(f"\n{args.clips} synthetic clips x {args.seconds:g} s, overlap {args.overlap}, shifts {args.shifts}, "
          f"{torch.get_num_threads()} CPU threads; random weights everywhere.")
    print("SDR is meaningful only with real weights: with random ones it shows the plumbing runs.")
    print(f"reference: the unseparated mix as the accompaniment estimate scores {do_nothing:.2f} dB SDR")
    print(f"{'config':<6} {'params':>10} {'device':<6} {'x real time':>12} {'accomp. SDR dB':>15}")
    for config, n_params, device, speed, score in rows:
        print(f"{config:<6} {n_params:>10,} {device:<6} {speed:>12.2f} {score:>15.2f}")


if __name__ == "__main__":
    main()
