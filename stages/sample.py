"""Stage `sample`: render v2m-synth into data/sample and its manifest shard data/manifests/s0000.csv
(skipped, with a marker, when data.shards does not list s0000; see pipeline.embedded)."""

from pipeline.config import load_params
from pipeline.embedded import init_sample
from pipeline.errors import user_errors

SECTIONS = ("sample", "data")


def main() -> None:
    with user_errors("stage sample"):
        params = load_params(sections=SECTIONS)
        print(init_sample(params["sample"], params["data"].shards))


if __name__ == "__main__":
    main()
