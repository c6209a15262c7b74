"""Stage `visual_init`: the embedded default's CLIP, ViT-B/32 architecture with RANDOM weights, saved with
save_pretrained into models/visual-random (skipped when features.visual.model names real weights)."""

from pipeline.config import load_params
from pipeline.embedded import init_visual
from pipeline.errors import user_errors

SECTIONS = ("features",)


def main() -> None:
    with user_errors("stage visual_init"):
        print(init_visual(load_params(sections=SECTIONS)["features"].visual))


if __name__ == "__main__":
    main()
