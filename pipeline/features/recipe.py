"""The recipe of a model's inputs, stored beside its weights as ``features.json``.

A trained model only makes sense on inputs made the way its training features were: the same CLIP
checkpoint and frame rate, the same optical-flow settings, the same codec (whose codes it predicts
and whose decoder turns them back into audio). The train stage writes that recipe into the exported
folder, and ``v2m generate`` / the generate stage read it, so generation needs only the model folder
(plus the CLIP and codec folders the recipe names).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.config import FeaturesParams, as_dict, build
from pipeline.errors import UserError

RECIPE_FILE = "features.json"
# MusicGen's EnCodec 32 kHz: a 640-sample hop, 50 code frames per second. The codec loader checks
# that the codec it loads has this rate, so this is the one place the code rate is written.
CODE_RATE = 50


@dataclass(frozen=True)
class StreamRates:
    """Rows per second of the three cached streams, and the flow maps' side: the one owner of the
    feature cache's time layout. The model builder, the segment dataset, the training experiment
    and ``v2m generate`` all take this object (made by :meth:`of` from the features params section
    or the recipe stored beside a model), never loose rates with defaults of their own.

    ``visual_fps``: CLIP frames per second; ``motion_fps``: flow maps per second; ``code_rate``: codec
    frames per second; ``motion_size``: the flow maps' side ``S`` in pixels.
    """

    visual_fps: int
    motion_fps: int
    code_rate: int
    motion_size: int

    @classmethod
    def of(cls, features: FeaturesParams) -> "StreamRates":
        return cls(visual_fps=int(features.visual.fps), motion_fps=int(features.motion.fps), code_rate=CODE_RATE,
                   motion_size=int(features.motion.size))

    def per_second(self) -> dict[str, int]:
        """``{table: rows per second}`` for the ``visual``, ``motion`` and ``codes`` tables."""
        return {"visual": self.visual_fps, "motion": self.motion_fps, "codes": self.code_rate}

    @property
    def grid_rate(self) -> int:
        """Steps per second of the time grid: the gcd of the three rates (2 for 2, 4 and 50)."""
        return math.gcd(self.visual_fps, self.motion_fps, self.code_rate)

    def time_grid(self) -> float:
        """The common time step of the three streams in seconds (0.5 s for 2 fps, 4 fps and 50 Hz):
        training segments and generation windows start and end on it, so every stream's rows line up."""
        return 1.0 / self.grid_rate

    def grid_steps(self, seconds: float, name: str) -> int:
        """``seconds`` in grid steps.

        Raises:
            UserError: ``seconds`` (the value of the param ``name``) is not a positive multiple of the grid.
        """
        steps = Fraction(float(seconds)).limit_denominator(10_000) * self.grid_rate
        if steps.denominator != 1 or steps <= 0:
            rates = ", ".join(f"{r}/s" for r in self.per_second().values())
            raise UserError(f"{name} must be a positive multiple of {self.time_grid():g} s (the grid on which "
                            f"{rates} align), got {seconds}")
        return int(steps)


@dataclass(frozen=True)
class FeatureRecipe:
    """``features``: the params section the training features were made with;
    ``segment_seconds``: the training segment length (the default generation window)."""

    features: FeaturesParams
    segment_seconds: float

    @property
    def rates(self) -> StreamRates:
        return StreamRates.of(self.features)

    def to_json(self) -> str:
        return json.dumps({"features": as_dict(self.features), "segment_seconds": self.segment_seconds},
                          indent=2) + "\n"


# Model folders exported before the CLIP side was named `visual` and the flow side `motion` (issue 12).
_RENAMED_SECTIONS = {"clip": "visual", "flow": "motion"}


def _current_names(features: dict) -> dict:
    """A recipe's features section with the section names of today (older exports said clip/flow)."""
    current = {}
    for key, value in features.items():
        new = _RENAMED_SECTIONS.get(key)
        # a recipe holding both names keeps the old one as it is: the params check then names it
        current[new if new is not None and new not in features else key] = value
    return current


def read_recipe(model_dir: Path | str) -> FeatureRecipe:
    """The recipe in ``model_dir/features.json``.

    Raises:
        UserError: the file is missing or malformed (it names the file).
    """
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file; a V2M model folder exported by the train stage (`dvc repro train`) "
                        "holds it beside config.json and model.safetensors")
    try:
        values = json.loads(path.read_text())
        features = build(FeaturesParams, _current_names(values["features"]), prefix="features", source=str(path))
        return FeatureRecipe(features, float(values["segment_seconds"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a feature recipe ({exc})") from None


__all__ = ["CODE_RATE", "FeatureRecipe", "RECIPE_FILE", "StreamRates", "read_recipe"]
