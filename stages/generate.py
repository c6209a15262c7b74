"""Stage `generate`: music for the listed shards' test clips -> data/generated/<id>.{wav,mp4} + status.parquet."""

import logging
import time
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.generate import Generator, generate_set, split_clips
from pipeline.status import summary

SECTIONS = ("data", "generate", "split")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with user_errors("stage generate"):
        params = load_params(sections=SECTIONS)
        generate = params["generate"]
        clips = split_clips({shard: Path("data/clips") / shard for shard in params["data"].shards}, params["split"],
                            generate.split, generate.max_clips)
        generator = Generator.load(generate.model, device=generate.device, cpu_quantize=generate.cpu_quantize)
        started = time.perf_counter()
        rows = generate_set(generator, clips, Path("data/generated"), generate)
        wall = time.perf_counter() - started
        seconds = sum(row.get("seconds") or 0.0 for row in rows)
        compute = sum(row["compute_seconds"] for row in rows)
        print(f"generate: {summary(rows)}; {seconds:.1f} s of music in {wall:.1f} s "
              f"({seconds / wall if wall else 0:.2f}x real time; the clips' own phases took {compute:.1f} s, "
              f"overlapped)")


if __name__ == "__main__":
    main()
