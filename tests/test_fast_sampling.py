"""The faster CPU sampling paths: the static KV cache (same numbers) and the int8 decoder (measured
against float32 by sampling_fidelity, which must see a difference where there is one)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import ModelParams
from pipeline.features.recipe import StreamRates
from pipeline.model.builder import build_model
from pipeline.model.sampling import generate_codes, is_quantized, quantize_decoder, sampling_fidelity

RATES = StreamRates(visual_fps=2, motion_fps=4, code_rate=50, motion_size=32)


@pytest.fixture(scope="module")
def model():
    return build_model(ModelParams(size="tiny", seed=1), RATES).eval()


def condition(model, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 6, model.config.decoder_dim, generator=torch.Generator().manual_seed(2))


def test_static_cache_samples_the_same_codes_from_the_same_logits(model):
    z = condition(model)
    prompt = torch.randint(0, model.config.codebook_size, (1, model.config.num_codebooks, 5),
                           generator=torch.Generator().manual_seed(3))
    runs = []
    for static in (False, True):
        seen = []
        codes = generate_codes(model, z, 12, cfg=3.0, generator=torch.Generator().manual_seed(0), prompt=prompt,
                               callback=lambda position, logits: seen.append((position, logits.clone())),
                               static_cache=static)
        runs.append((codes, seen))
    (codes_a, seen_a), (codes_b, seen_b) = runs
    assert torch.equal(codes_a, codes_b)
    assert [p for p, _ in seen_a] == [p for p, _ in seen_b]
    assert max(float((a - b).abs().max()) for (_, a), (_, b) in zip(seen_a, seen_b)) < 1e-4


def test_int8_decoder_samples_and_its_fidelity_is_measured(model):
    z = condition(model)
    codes = generate_codes(model, z, 40, cfg=3.0, generator=torch.Generator().manual_seed(0))   # held-out codes
    same = sampling_fidelity(model, model, z, codes)
    assert same["token_agreement"] == 1.0 and same["greedy_agreement"] == 1.0 and same["ce_difference"] == 0.0

    fast = quantize_decoder(copy.deepcopy(model))
    assert is_quantized(fast) and not is_quantized(model)
    out = generate_codes(fast, z, 8, cfg=3.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, model.config.num_codebooks, 8)
    fidelity = sampling_fidelity(model, fast, z, codes)
    assert fidelity["ce_difference"] != 0.0 and abs(fidelity["ce_difference"]) < 0.1
    assert 0.5 < fidelity["token_agreement"] <= 1.0

    # A decoder that really differs is seen to differ.
    other = build_model(ModelParams(size="tiny", seed=7), RATES).eval()
    far = sampling_fidelity(model, other, z, codes)
    assert far["token_agreement"] < fidelity["token_agreement"]
    assert far["ce_difference"] > fidelity["ce_difference"]
