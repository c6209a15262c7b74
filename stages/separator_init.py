"""Stage `separator_init`: the embedded default's separator, a small HTDemucs that is NOT htdemucs,
into separate.repo under the name separate.model (skipped when separate.repo names real weights;
see pipeline.embedded and the README)."""

from pipeline.config import load_params
from pipeline.embedded import init_separator
from pipeline.errors import user_errors

SECTIONS = ("separate", "split")


def main() -> None:
    with user_errors("stage separator_init"):
        params = load_params(sections=SECTIONS)
        print(init_separator(params["separate"], params["split"]))


if __name__ == "__main__":
    main()
