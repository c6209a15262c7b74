"""Stage `separator_init`: the embedded default's separator, a small HTDemucs that is NOT htdemucs.

Random initial weights, then `separate.embedded.train_steps` Adam steps on the train-split stems of
v2m-synth (data/sample/stems), saved in Demucs's own folder format (models/demucs-v2m:
<sig>-<checksum>.th + v2m-synth.yaml) so the separate stage loads it through the real Demucs path.
Untrained, a random HTDemucs outputs audio unrelated to its input (measured: no key or tempo left),
which would leave nothing for the music model to learn. Real weights are one params change
(separate.repo: a folder with htdemucs.yaml and 955717e8-8726e21a.th, separate.model: htdemucs).
"""

from pathlib import Path

from pipeline import media
from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.separate import save_random_htdemucs
from pipeline.split import split_of
from pipeline.synth import read_labels

SECTIONS = ("separate", "split")
OUT = Path("models/demucs-v2m")
NAME = "v2m-synth"
STEMS = Path("data/sample")


def main() -> None:
    with user_errors("stage separator_init"):
        params = load_params(sections=SECTIONS)
        init, split = params["separate"].embedded, params["split"]
        rows = [r for r in read_labels(STEMS)
                if split_of(r["video_id"], split.val_fraction, split.test_fraction, split.salt) == "train"]
        stems = [(media.read_wav(STEMS / r["accompaniment_file"])[0], media.read_wav(STEMS / r["vocals_file"])[0])
                 for r in rows]
        save_random_htdemucs(OUT, NAME, channels=init.channels, depth=init.depth,
                             transformer_layers=init.transformer_layers, seed=init.seed, stems=stems,
                             train_steps=init.train_steps, train_batch=init.train_batch,
                             train_segment_seconds=init.train_segment_seconds, train_lr=init.train_lr)
        print(f"separator_init: wrote {OUT}: small HTDemucs, {init.train_steps} steps on {len(stems)} "
              "synthetic train clips (NOT htdemucs weights)")


if __name__ == "__main__":
    main()
