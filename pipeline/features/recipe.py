"""The recipe of a model's inputs, stored beside its weights as ``features.json``.

A trained model only makes sense on inputs made the way its training features were: the same CLIP
checkpoint and frame rate, the same optical-flow settings, the same codec (whose codes it predicts
and whose decoder turns them back into audio). The train stage writes that recipe into the exported
folder, and ``v2m generate`` / the generate stage read it, so generation needs only the model folder
(plus the CLIP and codec folders the recipe names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import FeaturesParams, UserError, as_dict, build

RECIPE_FILE = "features.json"


@dataclass(frozen=True)
class FeatureRecipe:
    """``features``: the params section the training features were made with;
    ``segment_seconds``: the training segment length (the default generation window)."""

    features: FeaturesParams
    segment_seconds: float

    def to_json(self) -> str:
        return json.dumps({"features": as_dict(self.features), "segment_seconds": self.segment_seconds},
                          indent=2) + "\n"


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
        features = build(FeaturesParams, values["features"], prefix="features", source=str(path))
        return FeatureRecipe(features, float(values["segment_seconds"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a feature recipe ({exc})") from None


__all__ = ["FeatureRecipe", "RECIPE_FILE", "read_recipe"]
