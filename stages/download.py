"""Stage `download@<shard>`: fetch a manifest shard with yt-dlp into data/raw/<shard>."""

import logging
import sys

from pipeline.acquire.download import RAW_DIR, download_shard
from pipeline.acquire.manifest import shard_path
from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.status import summary

SECTIONS = ("download", "clip", "compute")


def main(shard: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with user_errors(f"stage download@{shard}"):
        params = load_params(sections=SECTIONS)
        rows = download_shard(shard_path(shard), RAW_DIR / shard, params["download"],
                              seconds=params["clip"].seconds, compute=params["compute"])
        print(f"download {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
