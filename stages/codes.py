"""Stage `codes@<shard>`: EnCodec 32 kHz codes of the separated accompaniment -> data/features/codes/<shard>.parquet."""

import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.extract import codes_shard, write_feature_status
from pipeline.status import summary

SECTIONS = ("features", "compute")


def main(shard: str) -> None:
    with user_errors(f"stage codes@{shard}"):
        params = load_params(sections=SECTIONS)
        out = Path("data/features/codes")
        rows = codes_shard(Path("data/separated") / shard, out / f"{shard}.parquet", params["features"].codes,
                           params["compute"])
        write_feature_status(out / f"{shard}.status.parquet", rows)
        print(f"codes {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
