"""Embedded decoder speed: multiple of real time of ``EmbeddedDecoder.decode`` (spectral lookup + Griffin-Lim).

The issue's target is >= 20x real time on 2 CPU cores. With ``--codec DIR`` (a codec_init folder,
e.g. models/encodec-calibrated) the fitted decoder there is timed; without it, tables of the full
size (4 x 2048 x 1025) with random values, which cost the same. Codes are random. Time it on a
quiet machine: a busy one gives a floor, not the figure.

Usage: python benchmarks/decoder.py [--codec DIR] [--seconds S] [--repeats N] [--threads T ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline.features.embedded_decoder import N_FFT, EmbeddedDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", help="a codec folder holding embedded_decoder.npz (default: random full-size tables)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per decode")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes per thread count (best and median kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    args = parser.parse_args()
    if args.codec:
        decoder = EmbeddedDecoder.load(args.codec)
        if decoder is None:
            parser.error(f"{args.codec}: no embedded_decoder.npz (written by the codec_init stage)")
    else:
        rng = np.random.default_rng(0)
        decoder = EmbeddedDecoder(0.3 * rng.standard_normal((4, 2048, N_FFT // 2 + 1)).astype(np.float32),
                                  rng.standard_normal(N_FFT // 2 + 1).astype(np.float32) - 4.0)
    frames = int(round(args.seconds * decoder.sample_rate / decoder.hop))
    codes = np.random.default_rng(1).integers(0, decoder.tables.shape[1], (decoder.tables.shape[0], frames))
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        decoder.decode(codes[:, :50])   # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decoder.decode(codes)
            times.append(time.perf_counter() - start)
        audio_seconds = frames * decoder.hop / decoder.sample_rate
        results.append({"threads": threads, "audio_seconds": audio_seconds, "best_seconds": round(min(times), 4),
                        "median_seconds": round(float(np.median(times)), 4),
                        "realtime_factor_best": round(audio_seconds / min(times), 1),
                        "realtime_factor_median": round(audio_seconds / float(np.median(times)), 1),
                        "griffin_lim_iterations": decoder.iterations})
        print(json.dumps(results[-1]))


if __name__ == "__main__":
    main()
