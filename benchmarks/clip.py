"""Clip stage cost: wall seconds per clip to cut the first N seconds exactly (video + both audio rates).

Usage: python benchmarks/clip.py [--clips 4] [--source-seconds 35] [--seconds 30] [--width 640 --height 360]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.acquire.clip import clip_one
from pipeline.config import ClipParams, SampleParams
from pipeline.synth import read_labels, render_sample_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--source-seconds", type=float, default=35.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=24, help="frame rate of the source videos")
    args = parser.parse_args()
    params = ClipParams(seconds=args.seconds, min_seconds=args.seconds)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        render_sample_set(scratch / "src", SampleParams(n_clips=args.clips, seconds=args.source_seconds,
                                                        width=args.width, height=args.height, fps=args.fps),
                          progress=False)
        times = []
        for row in read_labels(scratch / "src"):
            start = time.perf_counter()
            result = clip_one(scratch / "src" / row["video_file"], scratch, row["video_id"], params)
            times.append(time.perf_counter() - start)
            assert result["status"] == "ok", result
    mean = sum(times) / len(times)
    print(f"clip: {args.clips} sources of {args.source_seconds:g} s at {args.width}x{args.height} {args.fps} fps -> "
          f"{args.seconds:g} s clips at {params.fps} fps, max height {params.max_height}: "
          f"{mean:.2f} s per clip (min {min(times):.2f}, max {max(times):.2f}), "
          f"{args.seconds / mean:.1f}x real time")


if __name__ == "__main__":
    main()
