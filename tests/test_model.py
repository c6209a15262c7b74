"""The model: encoders, conditioning, delay pattern and loss, gradients, files, MusicGen weights, sampling."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from transformers import MusicgenConfig, MusicgenForConditionalGeneration, T5Config

from pipeline.config import ModelParams
from pipeline.errors import UserError
from pipeline.features.recipe import StreamRates
from pipeline.features import codec
from pipeline.model import (PARTS, CrossAttentionFusion, MotionEncoder, V2MConfig, V2MModel, VisualEncoder,
                            apply_delay, build_model, codebook_cross_entropy, generate, generate_codes,
                            load_pretrained_decoder, preset_config, sample_top_k, tiny_config, undo_delay)
from pipeline.model.encoders import (MOTION_ENERGY_GAIN, ByteMaskDropout, ONSET_SLOTS, AlignedCondition, code_grid, motion_energy,
                                     onset_slots, temporal_code)
from pipeline.model.sampling import guide

K, C, PAD = 4, 2048, 2048
SIZE, PATCH = 64, 16  # small motion maps keep the tests fast


def rates(flow_size: int) -> StreamRates:
    """The default stream rates, with flow maps of side ``flow_size``."""
    return StreamRates(visual_fps=2, motion_fps=4, code_rate=50, motion_size=flow_size)


def video(batch: int, seconds: int = 1, seed: int = 0, size: int = SIZE):
    """Random features of ``seconds``-long segments: visual, motion, codes."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, 2 * seconds, 50, 768, generator=g)
    motion = torch.rand(batch, 4 * seconds, size, size, generator=g) * 4
    codes = torch.randint(0, C, (batch, K, 50 * seconds), generator=g)
    return visual, motion, codes


def make_model(seed: int = 0, **overrides) -> V2MModel:
    torch.manual_seed(seed)
    return V2MModel(tiny_config(motion_size=SIZE, motion_patch=PATCH, **overrides)).eval()


@pytest.fixture(scope="module")
def model() -> V2MModel:
    return make_model()


# ------------------------------------------------------------------------------------------ encoders

def test_encoder_shapes_and_z():
    torch.manual_seed(0)
    visual, motion, _ = video(2, seconds=3)  # N_v = 6, N_m = 12
    v = VisualEncoder(dim=32, layers=1, heads=4, fps=2.0).eval()(visual)
    f = MotionEncoder(image_size=SIZE, patch=PATCH, dim=48, layers=1, heads=4, fps=4.0).eval()(motion)
    o = CrossAttentionFusion(32, 4, kv_dim=48).eval()(v, f)
    assert v.shape == (2, 6, 32) and f.shape == (2, 12, 48) and o.shape == (2, 6, 32)
    # the sinusoidal temporal code takes any number of frames
    assert VisualEncoder(dim=32, layers=1, heads=4, fps=2.0)(visual[:, :5]).shape == (2, 5, 32)
    m = make_model(tokens_per_frame=3)
    z = m.condition(visual, motion)
    assert z.shape == (2, 6 * 3, m.config.decoder_dim)
    with pytest.raises(ValueError, match="motion must be"):
        m.condition(visual, motion[..., :32])
    with pytest.raises(ValueError, match="pass the motion maps"):
        m.condition(visual, None)


def test_temporal_code_lines_up_visual_and_motion_frames():
    vis, mot = temporal_code(4, 2.0, 16), temporal_code(8, 4.0, 16)
    assert torch.allclose(vis, mot[::2])  # visual frame i (i/2 s) = motion map 2i (2i/4 s)
    assert not torch.allclose(mot[1], mot[0])


def test_motion_normalisation_is_resolution_free():
    small, big = MotionEncoder(image_size=112, patch=16, dim=32, layers=1, heads=4, fps=4.0), MotionEncoder(
        image_size=224, patch=32, dim=32, layers=1, heads=4, fps=4.0)
    speed_224 = torch.tensor([0.0, 1.0, 30.0])
    assert torch.allclose(small.normalize(speed_224 * 112 / 224), big.normalize(speed_224))
    assert big.normalize(speed_224)[0] == 0 and torch.allclose(big.normalize(speed_224), torch.log1p(speed_224))


def test_without_motion_there_are_no_motion_parameters():
    m = make_model(use_motion=False)
    names = [name for name, _ in m.named_parameters()]
    assert not any(n.startswith(("motion_encoder", "fusion")) for n in names)
    counts = m.param_counts()
    assert counts["motion"] == counts["fusion"] == 0 and counts["total"] == sum(p.numel() for p in m.parameters())
    visual, motion, codes = video(2)
    z = m.condition(visual, None)
    assert torch.equal(z, m.condition(visual, motion * 10))  # motion is ignored
    assert torch.isfinite(m(visual, None, codes).loss)


def test_z_depends_on_visual_and_motion(model):
    visual, motion, _ = video(2)
    other_visual, other_motion, _ = video(2, seed=1)
    z = model.condition(visual, motion)
    assert not torch.allclose(z, model.condition(other_visual, motion))
    assert not torch.allclose(z, model.condition(visual, other_motion))


# ------------------------------------------------------------------------------------------ delay + loss

def test_delay_layout_and_round_trip():
    codes = torch.arange(1, 13).reshape(1, 4, 3)  # codebook k holds 3k+1 .. 3k+3
    delayed, valid = apply_delay(codes, PAD)
    P = PAD
    expected = torch.tensor([[P, 1, 2, 3, P, P, P],
                             [P, P, 4, 5, 6, P, P],
                             [P, P, P, 7, 8, 9, P],
                             [P, P, P, P, 10, 11, 12]])
    assert torch.equal(delayed[0], expected)
    assert torch.equal(valid[0], expected != P)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, C, (3, K, 17), generator=g)
    delayed, valid = apply_delay(codes, PAD)
    assert delayed.shape == valid.shape == (3, K, 17 + K)
    assert torch.equal(undo_delay(delayed), codes)
    assert int(valid.sum()) == codes.numel() and bool((delayed[~valid] == PAD).all())
    # logits (position s predicts s + 1) realign with offset 0; trailing dims ride along
    logits = torch.randn(3, K, 17 + K - 1, 5)
    aligned = undo_delay(logits, offset=0)
    assert aligned.shape == (3, K, 17, 5) and torch.equal(aligned[:, 2, 4], logits[:, 2, 4 + 2])


def test_loss_equals_hand_computed_cross_entropy(model):
    visual, motion, codes = video(2)
    codes = codes[:, :, :6]
    out = model(visual, motion, codes)
    # Logits by hand: the decoder on [start step, delayed codes...], codebooks folded into the batch.
    z = model.condition(visual, motion)
    b, t_len = codes.shape[0], codes.shape[2]
    inputs = torch.full((b, K, t_len + K - 1), PAD)
    for k in range(K):
        inputs[:, k, k + 1:k + 1 + t_len] = codes[:, k, :t_len + K - 2 - k]  # what fits before the last step
    logits = model.decoder(input_ids=inputs.reshape(b * K, -1), encoder_hidden_states=z,
                           use_cache=False).logits.reshape(b, K, t_len + K - 1, C)
    per_codebook = []
    for k in range(K):
        terms = [-torch.log_softmax(logits[i, k, t + k], -1)[codes[i, k, t]] for i in range(b) for t in range(t_len)]
        per_codebook.append(torch.stack(terms).mean())
    per_codebook = torch.stack(per_codebook)
    assert torch.allclose(out.per_codebook_loss, per_codebook, atol=1e-5)
    assert torch.allclose(out.loss, per_codebook.mean(), atol=1e-5)
    assert out.logits.shape == (b, K, t_len, C)
    assert torch.allclose(out.logits[1, 3, 2], logits[1, 3, 2 + 3], atol=1e-6)
    assert abs(out.loss.item() - math.log(C)) < 0.5  # an untrained model is near uniform


def test_invalid_positions_carry_no_loss():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, C, (2, K, 5), generator=g)
    delayed, valid = apply_delay(codes, PAD)
    targets, valid = delayed[:, :, 1:], valid[:, :, 1:]
    logits = torch.randn(2, K, targets.shape[2], C, generator=g, requires_grad=True)
    base = codebook_cross_entropy(logits, targets, valid)
    changed_logits = torch.where(valid[..., None], logits, torch.randn(logits.shape, generator=g) * 100)
    changed_targets = torch.where(valid, targets, torch.randint(0, C, targets.shape, generator=g))
    assert torch.equal(codebook_cross_entropy(changed_logits, changed_targets, valid), base)
    base.sum().backward()
    assert float(logits.grad[~valid].abs().max()) == 0.0 and float(logits.grad[valid].abs().max()) > 0
    moved = logits.detach().clone()
    moved[valid] += torch.randn(moved[valid].shape, generator=g)
    assert not torch.allclose(codebook_cross_entropy(moved, targets, valid), base)


# ------------------------------------------------------------------------------------------ gradients

def _grads_by_part(m: V2MModel) -> dict[str, float]:
    return {part: sum(float(p.grad.abs().sum()) for p in m.part_parameters(part) if p.grad is not None)
            for part in PARTS}


def test_gradients_reach_every_trainable_part():
    m = make_model().train()
    visual, motion, codes = video(2)
    m(visual, motion, codes, drop_condition=torch.zeros(2, dtype=torch.bool)).loss.backward()
    grads = _grads_by_part(m)
    assert all(grads[part] > 0 for part in PARTS), grads
    assert all(p.grad is not None for p in m.parameters())


def test_frozen_decoder_gets_no_gradient():
    m = build_model(ModelParams(size="tiny", train_decoder=False), rates(SIZE)).train()
    assert all(not p.requires_grad for p in m.decoder.parameters())
    counts = m.param_counts()
    assert counts["trainable"] == counts["total"] - counts["decoder"]
    visual, motion, codes = video(2, size=SIZE)
    m(visual, motion, codes, drop_condition=torch.zeros(2, dtype=torch.bool)).loss.backward()
    assert all(p.grad is None for p in m.decoder.parameters())
    grads = _grads_by_part(m)
    assert all(grads[part] > 0 for part in ("visual", "motion", "fusion", "projection")), grads


def test_the_ablation_shares_the_initial_weights_of_every_common_part():
    with_motion = build_model(ModelParams(size="tiny", seed=5), rates(SIZE)).state_dict()
    without = build_model(ModelParams(size="tiny", seed=5, use_motion=False), rates(SIZE)).state_dict()
    assert set(without) < set(with_motion)
    assert all(torch.equal(without[k], with_motion[k]) for k in without)


def test_build_model_is_seeded_and_leaves_the_global_rng():
    state = torch.random.get_rng_state()
    a = build_model(ModelParams(size="tiny", seed=3), rates(SIZE))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model(ModelParams(size="tiny", seed=3), rates(SIZE))
    c = build_model(ModelParams(size="tiny", seed=4), rates(SIZE))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["projection.weight"], sc["projection.weight"])
    assert a.config.motion_size == SIZE and a.config.tokens_per_frame == 2
    with pytest.raises(UserError, match="not a multiple of motion_patch"):
        build_model(ModelParams(size="tiny"), rates(100))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_byte_mask_dropout_drops_its_share_and_keeps_the_expectation(p):
    dropout = ByteMaskDropout(p).train()
    x = torch.ones(2_000_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    dropped = float((y == 0).float().mean())
    # every byte is uniform: 7 bits of the high byte would drop 1/16 more at p = 0.5
    assert dropped == pytest.approx(round(p * 256) / 256, abs=0.002)
    assert float(y.detach().mean()) == pytest.approx(1.0, abs=0.005)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)                    # the gradient goes through the kept ones only
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)                          # seeded like any torch dropout
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(ByteMaskDropout(0.001).train()(x), x)   # rounds to no drop


def test_model_motion_patch_overrides_the_presets_patch():
    # a 112 px flow with 16 px patches keeps the preset's 7 x 7 grid at 224 / 32
    cheap = build_model(ModelParams(size="tiny", motion_patch=16), rates(112))
    full = build_model(ModelParams(size="tiny"), rates(224))
    assert (cheap.config.motion_patch, full.config.motion_patch) == (16, 32)
    assert cheap.motion_encoder.patch_embed.kernel_size == (16, 16)
    assert cheap.motion_encoder.grid == full.motion_encoder.grid == 7
    assert cheap.motion_encoder(torch.rand(1, 3, 112, 112)).shape == (1, 3, cheap.config.motion_dim)


# ------------------------------------------------------------------------------------------ files

def test_save_and_load_round_trip(model, tmp_path):
    visual, motion, codes = video(2)
    folder = model.save_pretrained(tmp_path / "v2m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "v2m"
    loaded = V2MModel.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(loaded(visual, motion, codes).logits, model(visual, motion, codes).logits)
    model.save_pretrained(folder)  # overwrites in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2m"]


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json.*train stage.*models/v2m"):
        V2MModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        V2MModel.from_pretrained(tmp_path / "half")


def test_config_dict_round_trip_rejects_unknown_keys():
    config = tiny_config(tokens_per_frame=3)
    assert V2MConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown V2MConfig keys"):
        V2MConfig.from_dict({**config.to_dict(), "decoder_widht": 3})
    with pytest.raises(ValueError, match="unknown V2MConfig keys"):
        preset_config("tiny", colour=1)


# ------------------------------------------------------------------------------------------ conditioning

def test_condition_dropout_is_the_null_condition(model):
    visual, motion, codes = video(2)
    other_visual, other_motion, _ = video(2, seed=1)
    drop = torch.tensor([True, False])
    out = model(visual, motion, codes, drop_condition=drop)
    delayed = apply_delay(codes, PAD)[0][:, :, :-1]
    null = undo_delay(model.decoder_logits(delayed, torch.zeros_like(model.condition(visual, motion))), offset=0)
    unconditioned = model.decoder(input_ids=delayed.reshape(2 * K, -1), use_cache=False).logits.reshape(2, K, -1, C)
    assert torch.allclose(out.logits[0], null[0], atol=1e-6)
    assert torch.allclose(out.logits[0], undo_delay(unconditioned, offset=0)[0], atol=1e-6)
    # a dropped sample ignores its video; a kept one depends on it
    other = model(other_visual, other_motion, codes, drop_condition=drop)
    assert torch.allclose(other.logits[0], out.logits[0], atol=1e-6)
    assert not torch.allclose(other.logits[1], out.logits[1], atol=1e-4)
    assert torch.equal(model(visual, motion, codes).logits[1], out.logits[1])  # eval mode: no dropout drawn


def test_condition_dropout_draws_only_in_train_mode():
    m = make_model(condition_dropout=0.3)
    assert m.condition_drop_mask(8) is None  # eval
    m.train()
    a = m.condition_drop_mask(4000, generator=torch.Generator().manual_seed(1))
    b = m.condition_drop_mask(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and abs(float(a.float().mean()) - 0.3) < 0.03
    given = torch.tensor([True, False, True])
    assert torch.equal(m.condition_drop_mask(3, given), given)
    # all dropped in train mode = the null condition (dropout layers are off with p = 0 here)
    m = make_model(condition_dropout=1.0, encoder_dropout=0.0, decoder_dropout=0.0)
    visual, motion, codes = video(2)
    null = m(visual, motion, codes, drop_condition=torch.ones(2, dtype=torch.bool)).logits
    m.train()
    assert torch.allclose(m(visual, motion, codes).logits, null, atol=1e-6)


# ------------------------------------------------------------------------------------------ pretrained decoder

def _save_composite(folder, decoder_dim: int = 128) -> MusicgenForConditionalGeneration:
    """A tiny random musicgen checkpoint (model_type musicgen) whose decoder is sized like the tiny preset's."""
    decoder = dataclasses.replace(tiny_config(), decoder_dim=decoder_dim).decoder_config()
    config = MusicgenConfig(
        text_encoder=T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, vocab_size=64),
        audio_encoder=codec.encodec_32khz_config(num_filters=4, hidden_size=16, codebook_size=C,
                                                 target_bandwidths=[2.2]),
        decoder=decoder)
    torch.manual_seed(7)
    composite = MusicgenForConditionalGeneration(config)
    composite.save_pretrained(folder)
    return composite


def test_pretrained_decoder_weights_arrive(tmp_path):
    composite = _save_composite(tmp_path / "musicgen")
    assert json.loads((tmp_path / "musicgen" / "config.json").read_text())["model_type"] == "musicgen"
    m = build_model(ModelParams(size="tiny", pretrained_decoder=str(tmp_path / "musicgen")), rates(SIZE))
    theirs, ours = composite.decoder.state_dict(), m.decoder.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    fresh = build_model(ModelParams(size="tiny"), rates(SIZE)).decoder.state_dict()
    assert not torch.equal(fresh["lm_heads.0.weight"], ours["lm_heads.0.weight"])


def test_pretrained_decoder_errors(tmp_path):
    _save_composite(tmp_path / "wide", decoder_dim=64)
    with pytest.raises(UserError, match=r"hidden_size 64 \(ours 128\)"):
        load_pretrained_decoder(make_model(), tmp_path / "wide")
    with pytest.raises(FileNotFoundError, match="musicgen-small"):
        load_pretrained_decoder(make_model(), tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json and model\.safetensors"):
        load_pretrained_decoder(make_model(), tmp_path / "empty")


# ------------------------------------------------------------------------------------------ sampling

def reference_sample(m: V2MModel, z, steps, *, cfg, top_k, generator, prompt=None, aligned=None):
    """A naive sampler: the whole delayed sequence through the decoder at every step, no cache."""
    b = z.shape[0]
    prompt = torch.zeros(b, K, 0, dtype=torch.long) if prompt is None else prompt
    known, total = prompt.shape[2], prompt.shape[2] + steps
    seq = torch.full((b, K, total + K), PAD)
    for s in range(1, known + 1):
        for k in range(K):
            if 0 <= s - 1 - k < known:
                seq[:, k, s] = prompt[:, k, s - 1 - k]
    for s in range(known + 1, total + K):
        cond = m.decoder_logits(seq[:, :, :s], z, aligned)[:, :, -1]
        if cfg != 1.0:
            uncond = m.decoder_logits(seq[:, :, :s], torch.zeros_like(z))[:, :, -1]
            cond = uncond + cfg * (cond - uncond)
        tokens = sample_top_k(cond, top_k, 1.0, generator)
        for k in range(K):
            t = s - 1 - k
            if 0 <= t < known:
                seq[:, k, s] = prompt[:, k, t]
            elif known <= t < total:
                seq[:, k, s] = tokens[:, k]
    return torch.stack([seq[:, k, known + k + 1:total + k + 1] for k in range(K)], dim=1)


@pytest.fixture(scope="module")
def z(model):
    visual, motion, _ = video(2)
    with torch.no_grad():
        return model.condition(visual, motion)


def test_sampler_shape_range_and_seed(model, z):
    a = generate_codes(model, z, 9, cfg=3.0, top_k=50, generator=torch.Generator().manual_seed(0))
    b = generate_codes(model, z, 9, cfg=3.0, top_k=50, generator=torch.Generator().manual_seed(0))
    c = generate_codes(model, z, 9, cfg=3.0, top_k=50, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, K, 9) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < C
    assert torch.equal(a, b) and not torch.equal(a, c)
    visual, motion, _ = video(1)
    assert generate(model, visual, motion, cfg=1.0, top_k=1).shape == (1, K, 50)  # 1 s at 50 Hz


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_sampler_equals_a_naive_uncached_sampler(model, z, cfg):
    """cfg = 1 is exactly unguided sampling (the reference makes no null pass); cfg = 3 guides."""
    ours = generate_codes(model, z, 7, cfg=cfg, top_k=20, generator=torch.Generator().manual_seed(5))
    ref = reference_sample(model, z, 7, cfg=cfg, top_k=20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, ref)
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    assert torch.allclose(guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-6)


def test_prompt_is_continued_and_cached_logits_equal_full_recomputation(model, z):
    prompt = torch.randint(0, C, (2, K, 6), generator=torch.Generator().manual_seed(2))
    seen = {}
    out = generate_codes(model, z, 5, cfg=2.0, top_k=30, generator=torch.Generator().manual_seed(3), prompt=prompt,
                         callback=lambda position, logits: seen.__setitem__(position, logits.clone()))
    assert out.shape == (2, K, 5) and sorted(seen) == list(range(7, 6 + 5 + K))
    ref = reference_sample(model, z, 5, cfg=2.0, top_k=30, generator=torch.Generator().manual_seed(3),
                           prompt=prompt)
    assert torch.equal(out, ref)
    # Recompute every step's logits from the whole final sequence (prompt + output) in one pass.
    delayed = apply_delay(torch.cat([prompt, out], dim=2), PAD)[0]
    cond = model.decoder_logits(delayed[:, :, :-1], z)
    uncond = model.decoder_logits(delayed[:, :, :-1], torch.zeros_like(z))
    full = uncond + 2.0 * (cond - uncond)
    for position, logits in seen.items():
        assert torch.allclose(logits, full[:, :, position - 1], atol=1e-4), position
    # the first generated step depends on the prompt
    other = {}
    generate_codes(model, z, 1, cfg=2.0, top_k=30, prompt=(prompt + 1) % C,
                   callback=lambda position, logits: other.__setitem__(position, logits))
    assert not torch.allclose(other[7], seen[7], atol=1e-3)


def test_kv_cached_incremental_logits_equal_full_sequence(model, z):
    seq = torch.randint(0, C + 1, (2, K, 12), generator=torch.Generator().manual_seed(4))
    full = model.decoder_logits(seq, z)
    with torch.no_grad():
        out = model.decoder(input_ids=seq[:, :, :5].reshape(2 * K, -1), encoder_hidden_states=z, use_cache=True)
        steps, cache = [out.logits.reshape(2, K, 5, C)], out.cache
        for s in range(5, 12):
            out = model.decoder(input_ids=seq[:, :, s:s + 1].reshape(2 * K, 1), encoder_hidden_states=z,
                                cache=cache, use_cache=True)
            steps.append(out.logits.reshape(2, K, 1, C))
            cache = out.cache
    assert torch.allclose(torch.cat(steps, dim=2), full, atol=1e-5)


def test_sample_top_k():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_top_k(logits, 1, generator=g), torch.full((500,), 1))
    drawn = sample_top_k(logits, 2, generator=g)
    assert set(drawn.tolist()) == {1, 3}
    hot = sample_top_k(logits, None, temperature=100.0, generator=g)
    assert set(hot.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------ sizes

def _musicgen_small_decoder_params() -> int:
    d, layers, ffn, vocab, k = 1024, 24, 4096, 2048, 4
    per_layer = 2 * 4 * d * d + 2 * d * ffn + 3 * 2 * d  # self + cross attention (no bias), FFN, 3 LayerNorms
    return k * (vocab + 1) * d + k * d * vocab + layers * per_layer + 2 * d


def test_parameter_counts_of_the_presets(capsys):
    with torch.device("meta"):
        small = V2MModel(preset_config("small"))
    counts = small.param_counts()
    tiny = make_model().param_counts()
    with capsys.disabled():
        print("\nsmall:", {k: f"{v / 1e6:.2f}M" for k, v in counts.items()})
        print("tiny: ", {k: f"{v / 1e6:.3f}M" for k, v in tiny.items()})
    assert counts["decoder"] == _musicgen_small_decoder_params() == 419_584_000
    assert counts["total"] == sum(counts[p] for p in PARTS)
    assert 440e6 < counts["total"] < 500e6  # the paper reports 487M for Model-S
    assert small.decoder.config.num_hidden_layers == 24 and small.decoder.config.hidden_size == 1024
    assert tiny["decoder"] < 3e6 and tiny["total"] < 5e6


# ------------------------------------------------------------------------------------------ aligned condition

def aligned_model(seed: int = 0, **overrides) -> V2MModel:
    """A model with the aligned path, its zero-initialised weights made random (else it adds nothing)."""
    m = make_model(seed, aligned_condition=True, **overrides)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in m.aligned.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def test_code_grid_of_the_feature_rates():
    frame, phase = code_grid(51, 4.0, 50.0)
    # 0.25 s = 12.5 code frames: map j covers the code frames that start in [j / 4, (j + 1) / 4)
    assert frame[:13].tolist() == [0] * 13 and frame[13:25].tolist() == [1] * 12 and frame[25:38].tolist() == [2] * 13
    assert phase[:13].tolist() == list(range(13)) and phase[13:25].tolist() == list(range(12))
    frame, phase = code_grid(50, 2.0, 50.0)
    assert frame[:25].tolist() == [0] * 25 and frame[25:].tolist() == [1] * 25 and phase[24] == 24
    fresh = make_model(aligned_condition=True)
    # opens as it learns: every input projection, the phase code and the onset matrices start at zero
    # (the features are zero, so the output route adds nothing either)
    assert all(float(p.detach().abs().max()) == 0 for name, p in fresh.aligned.named_parameters()
               if not name.startswith("output."))
    assert torch.equal(fresh.aligned.output.weight, torch.eye(fresh.config.decoder_dim))
    g = torch.Generator().manual_seed(3)
    features = fresh.aligned(torch.randn(2, 3, fresh.config.visual_dim, generator=g),
                             torch.randn(2, 6, fresh.config.motion_dim, generator=g), 75)
    assert features.shape == (2, 75, fresh.config.decoder_dim) and float(features.detach().abs().max()) == 0


def test_onset_slots_put_each_change_on_the_frames_around_its_instant():
    # 4 fps on a 50 Hz grid: map 1 at 0.25 s = code time 12.5 (mid frame 12), map 2 at 0.5 s = 25.0
    source, slot, target = onset_slots(3, 60, 4.0, 50.0)
    pairs = {(int(j), int(t)): int(k) for j, k, t in zip(source, slot, target)}
    before = ONSET_SLOTS // 2      # slot of an instant at the frame's start
    # map 1: frames 11 (instant 1.5 frames ahead), 12 (holds it, second half), 13 and 14 (after)
    assert {t: k - before for (j, t), k in pairs.items() if j == 1} == {11: 3, 12: 1, 13: -1, 14: -3}
    # map 2: frames 24 (1 frame ahead), 25 (starts with it), 26 and 27 (after); map 0 has no change
    assert {t: k - before for (j, t), k in pairs.items() if j == 2} == {24: 2, 25: 0, 26: -2, 27: -4}
    assert 0 not in source.tolist()
    # clipped to the segment
    _, _, target = onset_slots(3, 13, 4.0, 50.0)
    assert target.max() == 12


def test_the_onset_channel_puts_a_change_exactly_on_the_frames_around_its_instant():
    """Only the onset matrices on, motion map 3 (0.75 s = code time 37.5) different from the others:
    the aligned features are non-zero exactly at code frames 36 .. 39 (the change f_3 - f_2 at 37.5)
    and, for the change back at map 4 (1.0 s = 50), 49 .. 52; the slot of frame 37 (instant in its second
    half) differs from that of frame 36 (instant 1.5 frames ahead)."""
    m = aligned_model()
    with torch.no_grad():
        for part in (m.aligned.visual, m.aligned.motion, m.aligned.change, m.aligned.phase):
            for p in part.parameters():
                p.zero_()
    f = torch.zeros(1, 6, m.config.motion_dim)
    f[0, 3] = torch.randn(m.config.motion_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m.aligned(torch.zeros(1, 3, m.config.visual_dim), f, 75)[0]
    rows = (out.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert rows == [36, 37, 38, 39, 49, 50, 51, 52]
    assert torch.allclose(out[37], f[0, 3] @ m.aligned.onset[ONSET_SLOTS // 2 + 1], atol=1e-6)
    assert torch.allclose(out[50], -f[0, 3] @ m.aligned.onset[ONSET_SLOTS // 2 + 0], atol=1e-6)


def burst_maps(frames: int = 8, burst: int = 5, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Flow maps ``[1, frames, size, size]``: a steady drift (~0.5 px everywhere, a little noise) and, in map
    ``burst``, one small object (4 x 4 px) jumping 12 px: the mean barely moves, the top speeds do."""
    g = torch.Generator().manual_seed(seed)
    maps = 0.5 + 0.01 * torch.rand(1, frames, size, size, generator=g)
    maps[0, burst, 10:14, 10:14] = 12.0
    return maps


def test_motion_energy_marks_a_burst_whatever_the_videos_usual_speed():
    energy = motion_energy(burst_maps())                                          # [1, 8, 2]
    assert energy.shape == (1, 8, 2)
    quiet = torch.cat([energy[0, :5], energy[0, 6:]])
    assert float(quiet.abs().max()) < 0.1                        # maps like most: ~0
    assert float(energy[0, 5, 1]) > 2.0                          # the top speeds: log(12 / 0.5)
    assert 0.0 < float(energy[0, 5, 0]) < 0.5                    # the mean: 16 of 1024 pixels moved
    # relative to the segment: the same video three times faster, or on a larger map, says the same
    assert torch.allclose(motion_energy(3 * burst_maps()), energy, atol=0.01)
    larger = torch.nn.functional.interpolate(burst_maps(), scale_factor=2, mode="nearest") * 2
    assert torch.allclose(motion_energy(larger), energy, atol=0.01)
    # a still video: nothing moves, nothing is marked (finite, zero)
    assert torch.equal(motion_energy(torch.zeros(2, 6, 16, 16)), torch.zeros(2, 6, 2))


def test_the_energy_onset_term_puts_a_burst_exactly_on_the_frames_around_its_instant():
    """Only the energy onset vectors on and the motion embeddings all zero: a burst in flow map 3 (0.75 s =
    code time 37.5) reaches exactly code frames 36 .. 39 through the whole model's conditions; the map
    after it, back to the usual speed, adds nothing (the term takes the level, not the change)."""
    m = aligned_model(aligned_motion_energy=True)
    with torch.no_grad():
        for name, p in m.aligned.named_parameters():
            if not name.startswith(("onset_energy", "output.")):
                p.zero_()
    maps = burst_maps(frames=6, burst=3, size=SIZE)
    visual = torch.zeros(1, 3, 50, 768)
    with torch.no_grad():
        _, aligned = m.conditions(visual, maps, 75)
        _, steady = m.conditions(visual, maps[:, :1].expand_as(maps), 75)
    assert torch.equal(steady, torch.zeros_like(steady))
    rows = (aligned[0].abs().amax(-1) > 0.01 * float(aligned.abs().max())).nonzero().flatten().tolist()
    assert rows == [36, 37, 38, 39]
    # frame 37 holds the instant in its second half: slot ONSET_SLOTS // 2 + 1, as the learned onset channel
    expected = MOTION_ENERGY_GAIN * motion_energy(maps)[0, 3] @ m.aligned.onset_energy[ONSET_SLOTS // 2 + 1].detach()
    assert torch.allclose(aligned[0, 37], expected, atol=1e-3 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="energy onset term"):
        m.aligned(torch.zeros(1, 3, m.config.visual_dim), torch.zeros(1, 6, m.config.motion_dim), 75)


def test_the_output_route_adds_the_features_before_the_heads_at_their_positions():
    """With the input route cut (features zeroed at the embeddings), the features still reach the logits
    through the output route, at exactly the positions they are given: nothing before them changes."""
    m = aligned_model().eval()
    codes = torch.randint(0, C, (1, K, 30), generator=torch.Generator().manual_seed(0))
    delayed = apply_delay(codes, PAD)[0][:, :, :-1]
    z = torch.zeros(1, 4, m.config.decoder_dim)
    aligned = torch.zeros(1, 30, m.config.decoder_dim)
    aligned[0, 20:] = torch.randn(10, m.config.decoder_dim, generator=torch.Generator().manual_seed(1))
    # the input route off: a later hook takes back what the model's hook added to the embeddings
    hook = m.decoder.model.decoder.embed_tokens[0].register_forward_hook(
        lambda mod, args, out: out if m._aligned_input is None else out - m._aligned_input.to(out.dtype))
    try:
        with torch.no_grad():
            with_features = m.decoder_logits(delayed, z, aligned)
            without = m.decoder_logits(delayed, z)
    finally:
        hook.remove()
    changed = (with_features - without).abs().amax(dim=-1)[0].amax(0) > 1e-6     # [positions]
    # output only: position s changes iff its own row s is non-zero (no mixing through attention)
    assert changed.nonzero().flatten().tolist() == list(range(20, 30))


def test_a_motion_feature_at_t_reaches_exactly_the_positions_of_code_times_in_its_frame():
    """A constructed example: only motion map j = 3 (0.75 s) is non-zero, and only the motion projection's
    weight is on; through the delay pattern, the input positions and the code times whose predictions change
    are exactly those of code times in [0.75 s, 1.0 s): code frames 38 .. 49."""
    m = aligned_model()
    with torch.no_grad():
        for part in (m.aligned.visual, m.aligned.change, m.aligned.phase):
            for p in part.parameters():
                p.zero_()
        m.aligned.onset.zero_()             # its own test: the changes, around their instants
        m.aligned.motion.bias.zero_()       # content-free; it would reach every frame
    path = AlignedCondition(m.config.visual_dim, m.config.motion_dim, m.config.decoder_dim, 2.0, 4.0, 50.0)
    path.load_state_dict(m.aligned.state_dict())
    f = torch.zeros(1, 4, m.config.motion_dim)
    f[0, 3] = torch.randn(m.config.motion_dim)
    aligned = path(torch.zeros(1, 2, m.config.visual_dim), f, 50)
    rows = aligned.abs().sum(-1)[0] > 0
    assert rows.nonzero().flatten().tolist() == list(range(38, 50))
    # what reaches the decoder's input embeddings, position by position (delayed layout of 50 + K - 1)
    codes = torch.randint(0, C, (1, K, 50), generator=torch.Generator().manual_seed(0))
    delayed = apply_delay(codes, PAD)[0][:, :, :-1]
    seen = []
    hook = m.decoder.model.decoder.embed_tokens[0].register_forward_hook(
        lambda mod, args, out: seen.append(m._aligned_input.clone()))
    try:
        z = torch.zeros(1, 4, m.config.decoder_dim)
        with_features = undo_delay(m.decoder_logits(delayed, z, aligned), offset=0)
    finally:
        hook.remove()
    added = seen[0].abs().sum(-1)[0] > 0
    assert added.shape[0] == 50 + K - 1 and added.nonzero().flatten().tolist() == list(range(38, 50))
    without = undo_delay(m.decoder_logits(delayed, z), offset=0)
    changed = (with_features - without).abs().amax(dim=-1)[0] > 1e-6          # [K, T]
    # codebook k of code time t is predicted at position t + k, which sees the features of code times
    # up to t + k: codebook 0 changes from code time 38 on, codebook k from 38 - k on, none before
    for k in range(K):
        assert changed[k, :38 - k].sum() == 0 and changed[k, 38 - k:].all(), k


def test_aligned_null_condition_is_no_condition_in_both_paths():
    m = aligned_model()
    visual, motion, codes = video(2)
    out = m(visual, motion, codes, drop_condition=torch.tensor([True, False]))
    delayed = apply_delay(codes, PAD)[0][:, :, :-1]
    bare = m.decoder(input_ids=delayed.reshape(2 * K, -1), use_cache=False).logits.reshape(2, K, -1, C)
    assert torch.allclose(out.logits[0], undo_delay(bare, offset=0)[0], atol=1e-6)
    # the kept sample uses both paths: zeroing either one changes its logits
    z, aligned = m.conditions(visual, motion, codes.shape[2])
    full = undo_delay(m.decoder_logits(delayed, z, aligned), offset=0)
    assert torch.allclose(full[1], out.logits[1], atol=1e-5)
    assert not torch.allclose(undo_delay(m.decoder_logits(delayed, z), offset=0)[1], full[1], atol=1e-4)
    assert not torch.allclose(undo_delay(m.decoder_logits(delayed, torch.zeros_like(z), aligned), offset=0)[1],
                              full[1], atol=1e-4)


def test_a_motion_rank_brings_the_motion_into_the_aligned_features_through_that_many_dims():
    """With ``aligned_motion_rank`` r, what one motion map can do to the aligned features (every code
    frame, every channel: level, change and onset terms together) spans exactly r directions of the
    map's embedding; at full width, all D_m."""
    for rank in (3, 0):
        m = aligned_model(aligned_motion_rank=rank)
        d_m = m.config.motion_dim
        f = torch.randn(1, 6, d_m, generator=torch.Generator().manual_seed(3))

        def aligned_of_map_3(row: torch.Tensor) -> torch.Tensor:
            return m.aligned(torch.zeros(1, 3, m.config.visual_dim), torch.cat([f[:, :3], row[None, None], f[:, 4:]], 1),
                             75)
        jacobian = torch.autograd.functional.jacobian(aligned_of_map_3, f[0, 3]).reshape(-1, d_m)
        assert int(torch.linalg.matrix_rank(jacobian)) == (rank or d_m), rank


@pytest.mark.parametrize("rank, energy", [(0, False), (3, True)])
def test_aligned_model_save_and_load_round_trip(tmp_path, rank, energy):
    m = aligned_model(aligned_motion_rank=rank, aligned_motion_energy=energy)
    visual, motion, codes = video(2)
    loaded = V2MModel.from_pretrained(m.save_pretrained(tmp_path / "v2m"))
    assert loaded.config.aligned_condition and loaded.config == m.config
    assert (loaded.aligned.motion_down is None) == (rank == 0)
    assert (loaded.aligned.onset_energy is not None) == energy
    assert torch.equal(loaded(visual, motion, codes).logits, m(visual, motion, codes).logits)


@pytest.mark.parametrize("cfg, energy", [(1.0, False), (3.0, True)])
def test_kv_cached_sampler_matches_full_recompute_with_the_aligned_path(cfg, energy):
    m = aligned_model(aligned_motion_energy=energy)
    visual, motion, _ = video(2)
    prompt = torch.randint(0, C, (2, K, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, aligned = m.conditions(visual, motion, 4 + 6)
    seen = {}
    ours = generate_codes(m, z, 6, cfg=cfg, top_k=20, generator=torch.Generator().manual_seed(5), prompt=prompt,
                          aligned=aligned, callback=lambda position, logits: seen.__setitem__(position, logits.clone()))
    ref = reference_sample(m, z, 6, cfg=cfg, top_k=20, generator=torch.Generator().manual_seed(5), prompt=prompt,
                           aligned=aligned)
    assert torch.equal(ours, ref)
    delayed = apply_delay(torch.cat([prompt, ours], dim=2), PAD)[0]
    cond = m.decoder_logits(delayed[:, :, :-1], z, aligned)
    full = cond if cfg == 1.0 else guide(cond, m.decoder_logits(delayed[:, :, :-1], torch.zeros_like(z)), cfg)
    for position, logits in seen.items():
        assert torch.allclose(logits, full[:, :, position - 1], atol=1e-4), position
    # the aligned features matter to the samples' logits
    other = {}
    generate_codes(m, z, 6, cfg=cfg, top_k=20, prompt=prompt, aligned=aligned.flip(1),
                   callback=lambda position, logits: other.__setitem__(position, logits))
    assert not torch.allclose(other[5], seen[5], atol=1e-3)
