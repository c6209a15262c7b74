"""Stage `sample`: render v2m-synth into data/sample and its manifest shard data/manifests/s0000.csv.

The shard's rows point at the rendered files (``file:data/sample/<id>.mp4``) with their sha256,
so the download stage runs its real code path offline, and re-renders change the shard.
"""

from pathlib import Path

from pipeline.files import file_sha256
from pipeline.acquire.manifest import ManifestEntry, shard_path, write_manifest
from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.synth import read_labels, render_sample_set

SECTIONS = ("sample",)
OUT = Path("data/sample")
SHARD = "s0000"


def main() -> None:
    with user_errors("stage sample"):
        params = load_params(sections=SECTIONS)["sample"]
        render_sample_set(OUT, params)
        entries = [ManifestEntry(row["video_id"], f"file:{OUT / row['video_file']}",
                                 file_sha256(OUT / row["video_file"])) for row in read_labels(OUT)]
        write_manifest(shard_path(SHARD), entries)


if __name__ == "__main__":
    main()
