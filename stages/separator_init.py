"""Stage `separator_init`: the embedded default's separator, a small HTDemucs of RANDOM weights.

Saved in Demucs's own folder format (models/demucs-random: <sig>-<checksum>.th + v2m-random.yaml)
so the separate stage loads it through the real Demucs path. Its output is not a separation;
real weights are one params change (separate.repo: a folder with htdemucs.yaml and
955717e8-8726e21a.th, separate.model: htdemucs).
"""

from pathlib import Path

from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.separate import save_random_htdemucs

SECTIONS = ("separate",)
OUT = Path("models/demucs-random")
NAME = "v2m-random"


def main() -> None:
    with user_errors("stage separator_init"):
        init = load_params(sections=SECTIONS)["separate"].random_init
        save_random_htdemucs(OUT, NAME, channels=init.channels, depth=init.depth,
                             transformer_layers=init.transformer_layers, seed=init.seed)
        print(f"separator_init: wrote {OUT} (HTDemucs, RANDOM weights: not a real vocal separation)")


if __name__ == "__main__":
    main()
