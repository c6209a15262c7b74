"""Stage `codes@<shard>`: EnCodec 32 kHz codes of the separated accompaniment -> data/features/codes/<shard>.parquet."""

import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.codec import load_codec
from pipeline.features.extract import codes_table, write_feature_status
from pipeline.status import ok_ids, summary

SECTIONS = ("features",)


def main(shard: str) -> None:
    with user_errors(f"stage codes@{shard}"):
        codes = load_params(sections=SECTIONS)["features"].codes
        model = load_codec(codes.codec, device=codes.device)
        audio_dir, out = Path("data/separated") / shard, Path("data/features/codes")
        rows = codes_table(ok_ids(audio_dir), audio_dir, out / f"{shard}.parquet", codes, model, desc=f"codes {shard}")
        write_feature_status(out / f"{shard}.status.parquet", rows)
        print(f"codes {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
