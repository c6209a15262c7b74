"""Stage `visual@<shard>`: CLIP tokens of every clip at features.visual.fps -> data/features/visual/<shard>.parquet."""

import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.extract import FRAME_FEATURE_STATUS, visual_shard, write_feature_status
from pipeline.status import summary

SECTIONS = ("features", "compute")


def main(shard: str) -> None:
    with user_errors(f"stage visual@{shard}"):
        params = load_params(sections=SECTIONS)
        out = Path("data/features/visual")
        rows = visual_shard(Path("data/clips") / shard, out / f"{shard}.parquet", params["features"].visual,
                            params["compute"])
        write_feature_status(out / f"{shard}.status.parquet", rows, FRAME_FEATURE_STATUS)
        print(f"visual {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
