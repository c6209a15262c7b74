"""Stage `clip_init`: the embedded default's CLIP, ViT-B/32 architecture with RANDOM weights.

Saved with save_pretrained into models/clip-random so the visual stage loads it exactly like the
real openai/clip-vit-base-patch32 (set features.clip.model to a folder holding that for real runs).
"""

from pathlib import Path

from pipeline.cli import user_errors
from pipeline.config import load_params
from pipeline.features.visual import save_random_clip

SECTIONS = ("features",)
OUT = Path("models/clip-random")


def main() -> None:
    with user_errors("stage clip_init"):
        seed = load_params(sections=SECTIONS)["features"].clip.init_seed
        save_random_clip(OUT, seed=seed)
        print(f"clip_init: wrote {OUT} (CLIP ViT-B/32 architecture, RANDOM weights)")


if __name__ == "__main__":
    main()
