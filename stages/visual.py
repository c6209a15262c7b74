"""Stage `visual@<shard>`: CLIP tokens of every clip at features.clip.fps -> data/features/clip/<shard>.parquet."""

import sys
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.extract import FRAME_FEATURE_STATUS, clip_inputs, extract_tables, write_feature_status
from pipeline.features.visual import load_clip
from pipeline.status import summary

SECTIONS = ("features",)


def main(shard: str) -> None:
    with user_errors(f"stage visual@{shard}"):
        visual = load_params(sections=SECTIONS)["features"].clip
        model = load_clip(visual.model, device=visual.device, dtype=visual.dtype)
        out = Path("data/features/clip")
        rows = extract_tables(clip_inputs(Path("data/clips") / shard), visual=visual, model=model,
                              clip_out=out / f"{shard}.parquet", desc=f"visual {shard}")
        write_feature_status(out / f"{shard}.status.parquet", rows, FRAME_FEATURE_STATUS)
        print(f"visual {shard}: {summary(rows)}")


if __name__ == "__main__":
    main(sys.argv[1])
