"""Stage `train`: train on the listed shards' features, export models/v2m, write the learning figures.

With v2m-synth's labels (data/sample/labels.parquet, the sample stage's) the figures include
``event_gain``; ``sync_gain`` needs no labels."""

import logging

from pipeline.config import load_params
from pipeline.embedded import SAMPLE_DIR
from pipeline.errors import user_errors
from pipeline.synth import read_event_times
from pipeline.train.experiment import run_training

SECTIONS = ("data", "features", "model", "train", "split")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with user_errors("stage train"):
        params = load_params(sections=SECTIONS)
        result = run_training(model_params=params["model"], train_params=params["train"], features=params["features"],
                              split=params["split"], shards=params["data"].shards,
                              event_times=read_event_times(SAMPLE_DIR))
        timing = "".join(f"; {name} {result[name]:.3f}" for name in ("event_gain", "sync_gain")
                         if result.get(name) is not None)
        print(f"train: {result['steps']} steps; held-out CE {result['ce_true']:.3f} nats/token with the true video, "
              f"{result['ce_shuffled']:.3f} with shuffled videos: video_info_gain {result['video_info_gain']:.3f}"
              f"{timing}")


if __name__ == "__main__":
    main()
