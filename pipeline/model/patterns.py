"""MusicGen's codebook delay pattern (audiocraft keeps its codebook patterns in a module of their own).

The ``K`` codebooks of code time ``t`` are predicted at different decoder positions: codebook ``k``
at position ``t + k + 1`` (position 0 holds the start token), so a position's codebook ``k`` is
conditioned on the codebooks ``< k`` of the same time step through the earlier positions. The
layout of ``T`` codes is ``[K, T + K]``, padded with ``pad_id`` where a codebook has no code.
"""

from __future__ import annotations

import torch


def delay_valid_mask(num_codebooks: int, steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Where the delayed layout of ``steps`` codes holds a real code: bool ``[K, steps + K]``.

    Position ``s`` of codebook ``k`` holds code time ``s - k - 1``; it is real when ``0 <= s-k-1 < steps``.
    """
    s = torch.arange(steps + num_codebooks, device=device)[None]
    t = s - torch.arange(num_codebooks, device=device)[:, None] - 1
    return (t >= 0) & (t < steps)


def _delay_index(num_codebooks: int, steps: int, offset: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pair ``(k [K, T], position [K, T])`` of code time ``t`` of codebook ``k``: ``t + k + offset``."""
    k = torch.arange(num_codebooks, device=device)[:, None].expand(num_codebooks, steps)
    return k, torch.arange(steps, device=device)[None] + k + offset


def apply_delay(codes: torch.Tensor, pad_id: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """MusicGen's delay pattern: codebook ``k`` shifted right by ``k`` steps, after one start step.

    Position 0 is the start step (every codebook holds ``pad_id``, which MusicGen also uses as
    BOS); code ``t`` of codebook ``k`` sits at position ``t + k + 1``; every other position holds
    ``pad_id``. At step ``s`` the decoder thus emits codebook 0 of time ``s - 1`` together with
    codebook ``k`` of time ``s - 1 - k``, so coarser codebooks of a frame come before finer ones.
    This is audiocraft's ``DelayedPatternProvider`` layout and ``transformers``' delay mask.

    Args:
        codes: long ``[B, K, T]``.
        pad_id: the token of positions without a code (the codebook size, 2048).

    Returns:
        ``(delayed long [B, K, T + K], valid bool [B, K, T + K])``: ``valid`` marks real codes.
    """
    if codes.ndim != 3:
        raise ValueError(f"codes must be [B, K, T], got {tuple(codes.shape)}")
    b, k, t = codes.shape
    delayed = codes.new_full((b, k, t + k), pad_id)
    kk, pos = _delay_index(k, t, 1, codes.device)
    delayed[:, kk, pos] = codes
    return delayed, delay_valid_mask(k, t, codes.device)[None].expand(b, k, t + k)


def undo_delay(delayed: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """The inverse of :func:`apply_delay`: ``[B, K, T + K - 1 + offset, ...] -> [B, K, T, ...]``.

    Args:
        delayed: a delayed layout, with any trailing dims (logits too).
        offset: 1 for token sequences from :func:`apply_delay` (start step first); 0 for the
            decoder's logits, whose position ``s`` predicts the token of position ``s + 1``.
    """
    if delayed.ndim < 3:
        raise ValueError(f"delayed must be [B, K, S, ...], got {tuple(delayed.shape)}")
    k = delayed.shape[1]
    steps = delayed.shape[2] - (k - 1) - offset
    if steps < 0:
        raise ValueError(f"a delayed layout of {k} codebooks needs at least {k - 1 + offset} steps, "
                         f"got {delayed.shape[2]}")
    kk, pos = _delay_index(k, steps, offset, delayed.device)
    return delayed[:, kk, pos]
