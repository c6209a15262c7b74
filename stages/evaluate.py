"""Stage `evaluate`: FAD / KLD / chroma cosine / FD_PaSST / sync metrics of data/generated against the
separated references (AV-Align on the clips' videos) -> metrics/eval.json (summary),
metrics/eval/clips.parquet (per clip), metrics/eval/plots/*.png."""

import logging

from pipeline.config import load_params
from pipeline.errors import user_errors
from pipeline.metrics.evaluate import evaluate_run

SECTIONS = ("data", "evaluate")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with user_errors("stage evaluate"):
        params = load_params(sections=SECTIONS)
        print(evaluate_run(params["data"].shards, params["evaluate"]))


if __name__ == "__main__":
    main()
