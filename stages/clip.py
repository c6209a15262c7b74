"""Stage `clip@<shard>`: exact first-N-second clips of data/raw/<shard> into data/clips/<shard>."""

import sys
from pathlib import Path

from pipeline.acquire.clip import clip_shard
from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.status import summary

SECTIONS = ("clip", "compute")


def main(shard: str) -> None:
    with user_errors(f"stage clip@{shard}"):
        params = load_params(sections=SECTIONS)
        rows = clip_shard(Path("data/raw") / shard, Path("data/clips") / shard, params["clip"],
                          compute=params["compute"])
        print(f"clip {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
