"""Stage `clip_init`: the embedded default's CLIP, ViT-B/32 architecture with RANDOM weights, saved with
save_pretrained into models/clip-random (skipped when features.clip.model names real weights)."""

from pipeline.config import load_params
from pipeline.embedded import init_clip
from pipeline.errors import user_errors

SECTIONS = ("features",)


def main() -> None:
    with user_errors("stage clip_init"):
        print(init_clip(load_params(sections=SECTIONS)["features"].clip))


if __name__ == "__main__":
    main()
