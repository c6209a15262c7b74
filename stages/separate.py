"""Stage `separate@<shard>`: Demucs vocal removal; data/separated/<shard>/<id>.wav is the 32 kHz mono target."""

import logging
import sys
import time
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.separate import separate_shard
from pipeline.status import summary

SECTIONS = ("separate", "clip", "compute")


def main(shard: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with user_errors(f"stage separate@{shard}"):
        params = load_params(sections=SECTIONS)
        start = time.perf_counter()
        rows = separate_shard(Path("data/clips") / shard, Path("data/separated") / shard, params["separate"],
                              target_rate=params["clip"].target_rate, compute=params["compute"])
        audio_seconds = sum(row.get("seconds") or 0.0 for row in rows)
        print(f"separate {shard}: {summary(rows)}; {audio_seconds:.0f} s of audio at "
              f"{audio_seconds / (time.perf_counter() - start):.1f}x real time (model load included)")


if __name__ == "__main__":
    main(sys.argv[1])
