"""Stage `sample`: render the synthetic sample set v2m-synth into data/sample."""

from pathlib import Path

from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.synth import render_sample_set

SECTIONS = ("sample",)
OUT = Path("data/sample")


def main() -> None:
    with user_errors("stage sample"):
        params = load_params(sections=SECTIONS)["sample"]
        render_sample_set(OUT, params)


if __name__ == "__main__":
    main()
