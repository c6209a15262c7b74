"""Autoregressive sampling of codes with the decoder's KV cache, classifier-free guidance and top-k.

Our own loop rather than ``generate``: in transformers 5.24, guidance through
``MusicgenForCausalLM.generate(encoder_outputs=...)`` fails, and a fresh model's ``generate`` needs
``num_return_sequences=1``. The loop works on the delayed layout of :func:`apply_delay`: at
position ``s`` codebook ``k`` emits the code of time ``s - 1 - k``; positions without a code are
forced to the pad id, and so are the codes of a prompt, so the output continues the prompt.

Guidance: the condition ``Z`` and the null condition (zeros) run as one doubled batch, and the
logits are ``uncond + cfg * (cond - uncond)``, computed as ``cond + (cfg - 1) * (cond - uncond)``
(the same number, and exactly ``cond`` at ``cfg = 1``). ``cfg = 1`` skips the null half entirely.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipeline.device import evaluating
from pipeline.model.patterns import apply_delay, delay_valid_mask, undo_delay
from pipeline.model.v2m import V2MModel

StepCallback = Callable[[int, torch.Tensor], None]


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + cfg * (cond - uncond)``, exactly ``cond`` when ``cfg = 1``."""
    return cond + (cfg - 1.0) * (cond - uncond)


def sample_top_k(logits: torch.Tensor, top_k: int | None = 250, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest.

    Args:
        logits: ``[..., C]``.
        top_k: keep the ``top_k`` most likely entries (None or 0: all; 1: greedy; exact ties
            with the ``top_k``-th are kept too).
        temperature: > 0.
        generator: the RNG (same seed, same tokens).

    Returns:
        long ``[...]``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy), got {temperature}")
    shape, c = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, c).float() / temperature
    if top_k and top_k < c:
        # Mask below the k-th largest and draw over the vocabulary in token order (not in topk's
        # sorted order): logits that differ in the last bits then give the same token, where a
        # near-tie could swap two sorted slots.
        kth = flat.topk(top_k, dim=-1).values[:, -1:]
        flat = flat.masked_fill(flat < kth, float("-inf"))
    probs = torch.softmax(flat, dim=-1)
    if generator is not None and probs.device != generator.device:
        tokens = torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    else:
        tokens = torch.multinomial(probs, 1, generator=generator)
    return tokens.reshape(shape)


@torch.no_grad()
def generate_codes(model: V2MModel, z: torch.Tensor, steps: int, *, cfg: float = 3.0, top_k: int | None = 250,
                   temperature: float = 1.0, generator: torch.Generator | None = None,
                   prompt: torch.Tensor | None = None, callback: StepCallback | None = None,
                   aligned: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``steps`` code frames given the condition ``Z``, with the decoder's KV cache.

    Args:
        model: the model (its decoder is used; it runs in eval mode, the mode is restored after).
        z: the condition ``[B, N, M]`` from ``model.condition``.
        steps: code frames to generate (50 per second).
        cfg: guidance scale; 1 = no guidance (no null pass).
        top_k, temperature, generator: see :func:`sample_top_k`.
        prompt: long ``[B, K, T0]`` codes that the output continues (forced, not returned).
        callback: called as ``callback(position, logits [B, K, C])`` with the guided logits of
            every delayed position ``s`` that is predicted (``T0 + 1 .. T0 + steps + K - 1``).
        aligned: the aligned features ``[B, T0 + steps, M]`` of a model with ``aligned_condition``
            (``model.conditions``; row ``t`` for code time ``t``, the prompt's included); the null
            half of guidance gets none.

    Returns:
        long ``[B, K, steps]``: the codes after the prompt.
    """
    config = model.config
    k, pad = config.num_codebooks, config.pad_id
    b = z.shape[0]
    if z.ndim != 3 or z.shape[2] != config.decoder_dim:
        raise ValueError(f"Z must be [B, N, {config.decoder_dim}], got {tuple(z.shape)}")
    if prompt is None:
        prompt = torch.zeros(b, k, 0, dtype=torch.long, device=z.device)
    prompt = prompt.to(z.device)
    if prompt.ndim != 3 or prompt.shape[:2] != (b, k):
        raise ValueError(f"prompt must be [{b}, {k}, T0], got {tuple(prompt.shape)}")
    if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= config.codebook_size):
        raise ValueError(f"prompt codes must lie in [0, {config.codebook_size})")
    known = prompt.shape[2]
    total = known + steps
    if steps <= 0:
        return torch.zeros(b, k, 0, dtype=torch.long, device=z.device)

    # The delayed sequence: prompt codes placed, pad elsewhere; `forced` marks what is not sampled.
    seq = torch.full((b, k, total + k), pad, dtype=torch.long, device=z.device)
    seq[:, :, :known + k] = apply_delay(prompt.long(), pad)[0]
    forced = ~delay_valid_mask(k, total, z.device) | _prompt_positions(k, known, total, z.device)  # [K, total + K]

    guided = cfg != 1.0
    cond = torch.cat([z, torch.zeros_like(z)]) if guided else z
    if aligned is not None:
        if aligned.shape[:2] != (b, total):
            raise ValueError(f"aligned features must be [{b}, {total}, M] (prompt + steps), got {tuple(aligned.shape)}")
        aligned = torch.cat([aligned, torch.zeros_like(aligned)]) if guided else aligned
    with evaluating(model):
        cache = None
        start = known + 1  # positions 0 .. known carry only the start step and prompt codes
        for position in range(start, total + k):
            first = 0 if cache is None else position - 1
            inputs = seq[:, :, first:position]
            if guided:
                inputs = torch.cat([inputs, inputs])
            out = model.run_decoder(inputs.reshape(-1, inputs.shape[-1]), cond, aligned, first_position=first,
                                    cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits.reshape(inputs.shape[0], k, inputs.shape[-1], -1)[:, :, -1].float()
            if guided:
                logits = guide(*logits.chunk(2), cfg)
            if callback is not None:
                callback(position, logits)
            tokens = sample_top_k(logits, top_k, temperature, generator)
            seq[:, :, position] = torch.where(forced[:, position], seq[:, :, position], tokens)
    return undo_delay(seq)[:, :, known:]


def _prompt_positions(k: int, known: int, total: int, device) -> torch.Tensor:
    """bool ``[K, total + K]``: the delayed positions of the prompt's codes (code time ``< known``)."""
    s = torch.arange(total + k, device=device)[None]
    t = s - torch.arange(k, device=device)[:, None] - 1
    return (t >= 0) & (t < known)


@torch.no_grad()
def generate(model: V2MModel, visual: torch.Tensor, motion: torch.Tensor | None = None, steps: int | None = None,
             **kwargs) -> torch.Tensor:
    """Codes for a video: ``model.conditions`` (Z, and the aligned features when the model has them)
    then :func:`generate_codes`.

    Args:
        visual, motion: as for ``model.condition``.
        steps: code frames; default the video's length (``N_v / visual_fps`` seconds at ``codes_rate``).
        **kwargs: :func:`generate_codes`'s keywords (cfg, top_k, temperature, generator, prompt, callback).

    Returns:
        long ``[B, K, steps]``.
    """
    config = model.config
    if steps is None:
        steps = round(visual.shape[1] / config.visual_fps * config.codes_rate)
    prompt = kwargs.get("prompt")
    known = prompt.shape[2] if prompt is not None else 0
    with evaluating(model):
        z, aligned = model.conditions(visual, motion, known + steps)
    return generate_codes(model, z, steps, aligned=aligned, **kwargs)
