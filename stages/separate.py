"""Stage `separate@<shard>`: Demucs vocal removal; data/separated/<shard>/<id>.wav is the 32 kHz mono target."""

import logging
import sys
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
        rows = separate_shard(Path("data/clips") / shard, Path("data/separated") / shard, params["separate"],
                              target_rate=params["clip"].target_rate, compute=params["compute"])
        print(f"separate {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
