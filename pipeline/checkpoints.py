"""Checkpoints from disk only: a ``save_pretrained`` folder, a hub id already in the local cache, or a
PyTorch state-dict file. The one owner of where weights come from: the CLIP, codec and MusicGen
decoder folders go through :func:`local_checkpoint` (and :func:`load_part` for MusicGen parts),
audiocraft's MusicGen files through :func:`audiocraft_file` and :func:`read_audiocraft_package`
(mapped by :mod:`pipeline.audiocraft_format`), the VGGish and PaSST files through
:func:`read_state_dict`, and every random-weights stand-in carries :data:`RANDOM_MARKER`. Nothing
here downloads; a missing checkpoint is an error naming the file and where it comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from torch import nn

if TYPE_CHECKING:  # transformers is imported where a MusicGen part is loaded: the rest do not pay for it
    from transformers import PreTrainedModel

from pipeline.errors import UserError

# config key (config.json, Demucs's bag yaml) of the embedded default's random-weights stand-ins: loading warns
RANDOM_MARKER = "v2m_random_weights"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _folder_or_cached(source: str | Path, *, label: str, where_from: str, cache_dir: str | Path | None,
                      not_found: str) -> Path:
    """Folder ``source`` itself, or the cached snapshot of hub id ``source`` (nothing is downloaded).

    Raises:
        FileNotFoundError: neither; the message says ``not_found`` and ``where_from``.
    """
    folder = Path(source)
    if folder.is_dir():
        return folder
    try:
        return Path(snapshot_download(str(source), local_files_only=True, cache_dir=cache_dir))
    except (HFValidationError, OSError) as exc:  # OSError covers LocalEntryNotFoundError
        raise FileNotFoundError(f"{label} {str(source)!r}: {not_found}, and no such hub id in the local "
                                f"Hugging Face cache; {where_from}") from exc


def local_checkpoint(source: str | Path, *, label: str, where_from: str,
                     cache_dir: str | Path | None = None) -> Path:
    """The folder holding a checkpoint: ``source`` itself, or the cached snapshot of hub id ``source``.

    Args:
        label: what the checkpoint is, for messages (``codec``, ``pretrained decoder``).
        where_from: the sentence saying what is expected and where it comes from.

    Raises:
        FileNotFoundError: no such folder and no such cached hub id, or a folder without
            config.json or weights; the message names the missing file and ``where_from``.
    """
    folder = _folder_or_cached(source, label=label, where_from=where_from, cache_dir=cache_dir,
                               not_found="no such folder")
    missing = [name for name, present in (("config.json", (folder / "config.json").is_file()),
                                          ("model.safetensors", any((folder / w).is_file() for w in WEIGHT_FILES)))
               if not present]
    if len(missing) == 2:
        raise FileNotFoundError(f"{label} folder {folder} lacks config.json or model.safetensors: it needs "
                                f"config.json and model.safetensors and holds neither; {where_from}")
    if missing:
        raise FileNotFoundError(f"{label} folder {folder} lacks {missing[0]}; {where_from}")
    return folder


def checkpoint_file(source: str | Path, *, names: tuple[str, ...], label: str, where_from: str,
                    cache_dir: str | Path | None = None) -> Path:
    """A single-file checkpoint: ``source`` itself when it is a file, else the first of ``names`` in folder
    ``source`` or in the cached snapshot of hub id ``source``.

    Raises:
        FileNotFoundError: none of that exists; the message names what was looked for and ``where_from``.
    """
    if Path(source).is_file():
        return Path(source)
    folder = _folder_or_cached(source, label=label, where_from=where_from, cache_dir=cache_dir,
                               not_found="no such file or folder")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{label} folder {folder} holds none of {', '.join(names)}; {where_from}")


def is_random_stand_in(config: Mapping[str, Any] | object) -> bool:
    """True for the config (a mapping or a ``PretrainedConfig``) of a random-weights stand-in."""
    if isinstance(config, Mapping):
        return bool(config.get(RANDOM_MARKER, False))
    return bool(getattr(config, RANDOM_MARKER, False))


def _torch_load(path: Path, *, label: str, where_from: str, missing: type[Exception],
                unreadable: type[Exception]) -> Any:
    """``torch.load`` of a file, weights only: the one place a PyTorch file is read."""
    if not path.is_file():
        raise missing(f"{label} {path}: no such file; {where_from}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a file that is not a checkpoint
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise unreadable(f"{label} {path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first}); "
                         f"{where_from}") from None


def _tensors(state: Any, path: Path, *, label: str, where_from: str,
             unreadable: type[Exception]) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise unreadable(f"{label} {path}: holds a {type(state).__name__}, not a state dict of tensors; {where_from}")
    return dict(state)


def read_state_dict(path: Path | str, *, label: str, where_from: str,
                    missing: type[Exception] = FileNotFoundError,
                    unreadable: type[Exception] = UserError) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a PyTorch file (``torch.load``, weights only), a ``{'model': ...}``
    wrapper unwrapped.

    Args:
        label: what the file is, for messages (``VGGish checkpoint``).
        where_from: the sentence saying what is expected and where it comes from.
        missing / unreadable: the exception types raised for no file / a file that is not a state dict.
    """
    path = Path(path)
    state = _torch_load(path, label=label, where_from=where_from, missing=missing, unreadable=unreadable)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return _tensors(state, path, label=label, where_from=where_from, unreadable=unreadable)


def audiocraft_file(source: str | Path, name: str) -> Path | None:
    """``source`` as an audiocraft package file named ``name`` (``state_dict.bin``,
    ``compression_state_dict.bin``): the file itself, or ``source/name`` in a folder without a
    transformers config.json (a folder with both is read the transformers way). None otherwise."""
    path = Path(source)
    if path.is_file() and path.name == name:
        return path
    if path.is_dir() and (path / name).is_file() and not (path / "config.json").is_file():
        return path / name
    return None


def read_audiocraft_package(path: Path | str, *, label: str,
                            where_from: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``best_state`` and the parsed ``xp.cfg`` (``{}`` when absent) of a package audiocraft saved.

    Raises:
        UserError: not a readable package with a ``best_state`` state dict, or an ``xp.cfg`` that is not YAML.
    """
    import yaml

    path = Path(path)
    package = _torch_load(path, label=label, where_from=where_from, missing=FileNotFoundError, unreadable=UserError)
    # audiocraft's export of a hub codec is a pointer ({'pretrained': name}), not weights
    if isinstance(package, Mapping) and "pretrained" in package:
        raise UserError(f"{label} {path}: names the pretrained model {package['pretrained']!r} instead of holding "
                        f"weights; {where_from}")
    if not isinstance(package, Mapping) or "best_state" not in package:
        keys = sorted(package)[:5] if isinstance(package, Mapping) else type(package).__name__
        raise UserError(f"{label} {path}: no 'best_state' (holds {keys}), so not a package audiocraft saved; "
                        f"{where_from}")
    state = _tensors(package["best_state"], path, label=label, where_from=where_from, unreadable=UserError)
    try:
        cfg = yaml.safe_load(package.get("xp.cfg") or "{}") or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{label} {path}: its xp.cfg is not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, Mapping):
        raise UserError(f"{label} {path}: its xp.cfg is a {type(cfg).__name__}, not a mapping")
    return state, dict(cfg)


def model_type(folder: Path) -> str | None:
    """``model_type`` from a checkpoint folder's config.json."""
    return json.loads((Path(folder) / "config.json").read_text()).get("model_type")


def musicgen_part(folder: Path, part: str) -> tuple[nn.Module, list[str]]:
    """One part (``decoder``, ``audio_encoder``) of a MusicGen composite checkpoint, and its missing weights.

    The whole composite is loaded and only ``part`` kept: loading a composite checkpoint straight
    into the part's own class leaves every weight silently random.
    """
    from transformers import MusicgenForConditionalGeneration

    full, info = MusicgenForConditionalGeneration.from_pretrained(folder, local_files_only=True,
                                                                  output_loading_info=True)
    missing = sorted(key for key in info["missing_keys"] if key.startswith(f"{part}."))
    return getattr(full, part), missing


def load_part(folder: Path, *, part: str, standalone: type[PreTrainedModel], standalone_type: str, weights: str,
              where_from: str) -> nn.Module:
    """A MusicGen part from a checkpoint folder of either kind, every weight present.

    Args:
        folder: from :func:`local_checkpoint`.
        part: the part of a ``musicgen`` composite to take (``decoder``, ``audio_encoder``).
        standalone: the part's own class, for a folder whose model_type is ``standalone_type``.
        weights: what the weights are, for messages (``EnCodec``, ``decoder``).
        where_from: the sentence saying what is expected and where it comes from.

    Raises:
        UserError: another model_type, or weights missing (``from_pretrained`` would leave them
            silently random).
    """
    kind = model_type(folder)
    if kind == "musicgen":
        model, missing = musicgen_part(folder, part)
    elif kind == standalone_type:
        model, info = standalone.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        missing = sorted(info["missing_keys"])
    else:
        raise UserError(f"{folder}/config.json: model_type {kind!r} is neither {standalone_type!r} nor 'musicgen'; "
                        f"{where_from}")
    if missing:
        raise UserError(f"{folder}: the checkpoint lacks {len(missing)} {weights} weights (e.g. {missing[0]}); "
                        f"it is not a complete {kind} checkpoint")
    return model
