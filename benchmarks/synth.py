"""Rendering speed of v2m-synth: clip-seconds rendered per wall-second, split into audio, frames and encoding.

Usage: python benchmarks/synth.py [--clips N] [--seconds S]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import media
from pipeline.config import SampleParams
from pipeline.synth.music import render_stems
from pipeline.synth.scene import render_frames
from pipeline.synth.spec import sample_clip_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    params = SampleParams(n_clips=args.clips, seconds=args.seconds)
    timings = {"audio": 0.0, "frames": 0.0, "encode": 0.0}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.clips):
            spec = sample_clip_spec(params, index)
            start = time.perf_counter()
            accompaniment, vocals = render_stems(spec)
            timings["audio"] += time.perf_counter() - start
            start = time.perf_counter()
            frames = list(render_frames(spec))
            timings["frames"] += time.perf_counter() - start
            start = time.perf_counter()
            media.write_mp4(Path(scratch) / "clip.mp4", frames, spec.fps, accompaniment + vocals, spec.sample_rate)
            timings["encode"] += time.perf_counter() - start
    total = sum(timings.values())
    content = args.clips * args.seconds
    for name, seconds in timings.items():
        print(f"{name:<7} {seconds:6.2f} s  ({content / seconds:7.1f} clip-s per s)")
    print(f"total   {total:6.2f} s for {args.clips} x {args.seconds:g} s clips "
          f"({params.width}x{params.height} @ {params.fps} fps): {content / total:.1f} clip-seconds per second")


if __name__ == "__main__":
    main()
