"""Where torch work runs: one rule for every stage."""

from __future__ import annotations

import torch

from pipeline.config import UserError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``/``cuda`` as given.

    Raises:
        UserError: ``cuda`` asked for where torch sees no CUDA device.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but torch sees no CUDA device (use device: auto or cpu)")
    return device
