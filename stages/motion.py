"""Stage `motion@<shard>`: Farneback flow magnitude at features.flow.fps -> data/features/flow/<shard>.parquet."""

import os
import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.extract import FRAME_FEATURE_STATUS, clip_inputs, extract_tables, write_feature_status
from pipeline.status import summary

SECTIONS = ("features",)


def main(shard: str) -> None:
    with user_errors(f"stage motion@{shard}"):
        flow = load_params(sections=SECTIONS)["features"].flow
        out = Path("data/features/flow")
        rows = extract_tables(clip_inputs(Path("data/clips") / shard), flow=flow, flow_out=out / f"{shard}.parquet",
                              flow_workers=os.cpu_count() or 1, desc=f"motion {shard}")
        write_feature_status(out / f"{shard}.status.parquet", rows, FRAME_FEATURE_STATUS)
        print(f"motion {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
