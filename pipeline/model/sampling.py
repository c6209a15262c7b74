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

import warnings
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, StaticCache

from pipeline.device import evaluating
from pipeline.model.patterns import apply_delay, delay_valid_mask, undo_delay
from pipeline.model.v2m import V2MModel, codebook_cross_entropy

StepCallback = Callable[[int, torch.Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def quantize_decoder(model: V2MModel) -> V2MModel:
    """int8 dynamic quantisation of the decoder's ``nn.Linear`` layers, in place (CPU inference only).

    Weights become int8 per output channel and activations are quantised per call: the sampling
    step's matrix-vector products read a quarter of the bytes. The numbers change, so it is an
    option (``generate.cpu_quantize``) whose fidelity ``benchmarks/generation.py`` measures.
    Returns ``model``, whose decoder can no longer be trained or moved to CUDA.
    """
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, not installed here; it still works in 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.decoder = torch.ao.quantization.quantize_dynamic(model.decoder.cpu(), {nn.Linear}, dtype=torch.qint8,
                                                               inplace=True)
    return model


def is_quantized(model: V2MModel) -> bool:
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.decoder.modules())


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + cfg * (cond - uncond)``, exactly ``cond`` when ``cfg = 1``."""
    return cond + (cfg - 1.0) * (cond - uncond)


def sample_top_k(logits: torch.Tensor, top_k: int | None = 250, temperature: float = 1.0,
                 generator: Generators = None) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest.

    Args:
        logits: ``[..., C]``.
        top_k: keep the ``top_k`` most likely entries (None or 0: all; 1: greedy; exact ties
            with the ``top_k``-th are kept too).
        temperature: > 0.
        generator: the RNG (same seed, same tokens); or one per item of ``logits``' first axis,
            each drawing its item's tokens as a lone call would: an item's tokens then do not
            depend on which other items share the batch.

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
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} items")
        items = probs.reshape(shape[0], -1, c)
        tokens = torch.cat([_draw(item, rng) for item, rng in zip(items, generator)])
    else:
        tokens = _draw(probs, generator)
    return tokens.reshape(shape)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` ``[R, C]``: long ``[R, 1]``, on ``probs``' device."""
    if generator is not None and probs.device != generator.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_codes(model: V2MModel, z: torch.Tensor, steps: int, *, cfg: float = 3.0, top_k: int | None = 250,
                   temperature: float = 1.0, generator: Generators = None,
                   prompt: torch.Tensor | None = None, callback: StepCallback | None = None,
                   static_cache: bool = False, aligned: torch.Tensor | None = None) -> torch.Tensor:
    """Sample ``steps`` code frames given the condition ``Z``, with the decoder's KV cache.

    Args:
        model: the model (its decoder is used; it runs in eval mode, the mode is restored after).
        z: the condition ``[B, N, M]`` from ``model.condition``.
        steps: code frames to generate (50 per second).
        cfg: guidance scale; 1 = no guidance (no null pass).
        top_k, temperature, generator: see :func:`sample_top_k` (one generator per item of the batch:
            each item samples as it would alone, up to the float rounding of batched matrix products).
        prompt: long ``[B, K, T0]`` codes that the output continues (forced, not returned).
        callback: called as ``callback(position, logits [B, K, C])`` with the guided logits of
            every delayed position ``s`` that is predicted (``T0 + 1 .. T0 + steps + K - 1``).
        static_cache: preallocate the self-attention cache for the whole sequence (written in place
            at each step) instead of concatenating a growing one: the same logits up to float rounding.
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
    decoder = model.decoder
    if aligned is not None:
        if aligned.shape[:2] != (b, total):
            raise ValueError(f"aligned features must be [{b}, {total}, M] (prompt + steps), got {tuple(aligned.shape)}")
        aligned = torch.cat([aligned, torch.zeros_like(aligned)]) if guided else aligned
    with evaluating(model):
        cache = None
        if static_cache:
            cache = EncoderDecoderCache(StaticCache(config=decoder.config, max_cache_len=total + k), DynamicCache())
        start = known + 1  # positions 0 .. known carry only the start step and prompt codes
        for position in range(start, total + k):
            first = 0 if position == start else position - 1
            inputs = seq[:, :, first:position]
            if guided:
                inputs = torch.cat([inputs, inputs])
            extra = {}
            if static_cache:
                extra["cache_position"] = torch.arange(first, position, device=z.device)
            out = model.run_decoder(inputs.reshape(-1, inputs.shape[-1]), cond, aligned, first_position=first,
                                    cache=cache, use_cache=True, **extra)
            cache = out.cache
            logits = out.logits.reshape(inputs.shape[0], k, inputs.shape[-1], -1)[:, :, -1].float()
            if guided:
                logits = guide(*logits.chunk(2), cfg)
            if callback is not None:
                callback(position, logits)
            tokens = sample_top_k(logits, top_k, temperature, generator)
            seq[:, :, position] = torch.where(forced[:, position], seq[:, :, position], tokens)
    return undo_delay(seq)[:, :, known:]


@torch.no_grad()
def sampling_fidelity(reference: V2MModel, fast: V2MModel, z: torch.Tensor, codes: torch.Tensor, *,
                      cfg: float = 3.0, top_k: int | None = 250, temperature: float = 1.0,
                      seed: int = 0) -> dict[str, float]:
    """How far a fast decoder (e.g. :func:`quantize_decoder`'s) samples from the reference, teacher-forced.

    Both decoders see the same condition and the same held-out codes at every position, so the
    comparison does not drift the way two free-running samples do after their first difference.

    Args:
        reference, fast: the two models (only their decoders run).
        z: the condition ``[B, N, M]``.
        codes: held-out long ``[B, K, T]``.
        cfg, top_k, temperature: the sampling settings compared.
        seed: both draws use a generator with this seed, so a token differs only where the
            (guided, top-k) distributions do.

    Returns:
        ``token_agreement`` (share of the valid positions where the two sampled tokens are equal),
        ``greedy_agreement`` (the same for the argmax), ``ce_reference`` and ``ce_fast`` (held-out
        cross-entropy in nats/token with the condition, the training loss's definition) and
        ``ce_difference`` = ``ce_fast - ce_reference``.
    """
    delayed, valid = apply_delay(codes.long(), reference.config.pad_id)
    inputs, targets, valid = delayed[:, :, :-1], delayed[:, :, 1:], valid[:, :, 1:]
    out: dict[str, float] = {}
    tokens, greedy = [], []
    for name, model in (("reference", reference), ("fast", fast)):
        with evaluating(model):
            cond = model.decoder_logits(inputs, z).float()                          # [B, K, S, C]
            guided = guide(cond, model.decoder_logits(inputs, torch.zeros_like(z)).float(), cfg) if cfg != 1.0 else cond
        out[f"ce_{name}"] = float(codebook_cross_entropy(cond, targets, valid).mean())
        tokens.append(sample_top_k(guided, top_k, temperature, torch.Generator().manual_seed(seed)))
        greedy.append(guided.argmax(dim=-1))
    out["ce_difference"] = out["ce_fast"] - out["ce_reference"]
    out["token_agreement"] = float((tokens[0] == tokens[1])[valid].float().mean())
    out["greedy_agreement"] = float((greedy[0] == greedy[1])[valid].float().mean())
    return out


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
