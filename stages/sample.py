"""Stage `sample`: render v2m-synth into data/sample and its manifest shard data/manifests/s0000.csv."""

from pipeline.config import load_params
from pipeline.embedded import init_sample
from pipeline.errors import user_errors

SECTIONS = ("sample",)


def main() -> None:
    with user_errors("stage sample"):
        print(init_sample(load_params(sections=SECTIONS)["sample"]))


if __name__ == "__main__":
    main()
