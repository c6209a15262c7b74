"""Stage `report`: the static HTML report metrics/report/index.html (metrics, learning figures, plots,
generated videos beside the ground truth), readable offline from the folder alone."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.features.codec import is_random_codec
from pipeline.features.recipe import read_recipe
from pipeline.report import build_report

SECTIONS = ("data", "evaluate", "generate")

RANDOM_DECODER_NOTICE = (
    "This run uses the embedded default's codec ({codec}): its codebooks are calibrated, but its decoder has "
    "RANDOM weights, so the generated audio below is not music and FAD/KLD/chroma on it say nothing about "
    "musical quality. The quality signal of the embedded default is in token space: the learning figures "
    "(held-out cross-entropy with the right video vs shuffled videos). With real weights (facebook/musicgen-small, "
    "CLIP, VGGish, PaSST; see the README's paper configuration) this page shows real music and real metrics.")


def main() -> None:
    with user_errors("stage report"):
        params = load_params(sections=SECTIONS)
        summary = json.loads(Path("metrics/eval.json").read_text())
        rows = pq.read_table("metrics/eval/clips.parquet").to_pylist()
        benchmark_file = Path("metrics/benchmark.json")
        benchmark = json.loads(benchmark_file.read_text()) if benchmark_file.is_file() else None
        codec = read_recipe(params["generate"].model).features.codes.codec
        notice = RANDOM_DECODER_NOTICE.format(codec=codec) if is_random_codec(codec) else None
        media = []
        for row in rows[:params["evaluate"].report_clips]:
            video_id = row["video_id"]
            reference = next((Path("data/clips") / shard / f"{video_id}.mp4" for shard in params["data"].shards
                              if (Path("data/clips") / shard / f"{video_id}.mp4").is_file()), None)
            media.append({"video_id": video_id, "generated": Path("data/generated") / f"{video_id}.mp4",
                          "reference": reference})
        plots = sorted(Path("metrics/eval/plots").glob("*.png"))
        index = build_report(Path("metrics/report"), eval_summary=summary, clip_rows=rows, benchmark=benchmark,
                             plots=plots, media=media, notice=notice)
        print(f"report: {index} ({len(media)} clips with video, {len(plots)} plots)")


if __name__ == "__main__":
    main()
