"""Stage `codec_init`: the embedded default's codec, EnCodec 32 kHz with random weights and codebooks
calibrated on the train-split separated audio of features.codes.calibration.shard (skipped when
features.codes.codec names real weights; see pipeline.embedded)."""

from pipeline.config import load_params
from pipeline.embedded import init_codec
from pipeline.errors import user_errors

SECTIONS = ("features", "split")


def main() -> None:
    with user_errors("stage codec_init"):
        params = load_params(sections=SECTIONS)
        print(init_codec(params["features"].codes, params["split"]))


if __name__ == "__main__":
    main()
