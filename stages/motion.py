"""Stage `motion@<shard>`: Farneback flow magnitude at features.motion.fps -> data/features/motion/<shard>.parquet."""

import os
import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.extract import FRAME_FEATURE_STATUS, motion_shard, write_feature_status
from pipeline.status import summary

SECTIONS = ("features", "compute")


def main(shard: str) -> None:
    with user_errors(f"stage motion@{shard}"):
        params = load_params(sections=SECTIONS)
        out = Path("data/features/motion")
        rows = motion_shard(Path("data/clips") / shard, out / f"{shard}.parquet", params["features"].motion,
                            params["compute"], workers=os.cpu_count() or 1)
        write_feature_status(out / f"{shard}.status.parquet", rows, FRAME_FEATURE_STATUS)
        print(f"motion {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
