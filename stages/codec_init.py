"""Stage `codec_init`: the embedded default's codec, EnCodec 32 kHz with random weights and calibrated codebooks.

A random EnCodec quantizes everything to the same code (its codebooks start at zero), so the
codebooks are fitted by residual k-means on the train-split separated audio of one shard
(features.codes.calibration.shard). The decoder stays random: audio decoded from codes is not music.
"""

from pathlib import Path

from pipeline import media
from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.features.codec import save_calibrated_random_codec
from pipeline.split import split_of
from pipeline.status import ok_ids

SECTIONS = ("features", "split")
OUT = Path("models/encodec-calibrated")


def main() -> None:
    with user_errors("stage codec_init"):
        params = load_params(sections=SECTIONS)
        calibration, split = params["features"].codes.calibration, params["split"]
        folder = Path("data/separated") / calibration.shard
        train = [v for v in ok_ids(folder) if split_of(v, split.val_fraction, split.test_fraction, split.salt) == "train"]
        if not train:
            raise FileNotFoundError(f"{folder}: no train-split clips to calibrate the codec on")
        if calibration.max_clips:
            train = train[:calibration.max_clips]
        audios = [media.read_wav(folder / f"{video_id}.wav")[0] for video_id in train]
        stats = save_calibrated_random_codec(OUT, audios, seed=calibration.seed, init_frames=calibration.init_frames,
                                             iterations=calibration.iterations,
                                             min_frames_per_entry=calibration.min_frames_per_entry)
        print(f"codec_init: wrote {OUT} from {len(train)} train clips of {calibration.shard}: {stats}")


if __name__ == "__main__":
    main()
