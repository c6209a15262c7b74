"""audiocraft-format MusicGen files (state_dict.bin, compression_state_dict.bin) load without audiocraft.

The audiocraft side is spelled here layer by layer after audiocraft's modules (lm.py, transformer.py,
seanet.py, conv.py, core_vq.py), independently of pipeline/audiocraft_format.py's rules; the
reference is the same random weights put into transformers' classes the way transformers' own
conversion scripts do (rename, split the fused q/k/v rows), saved with save_pretrained and loaded
through the ordinary transformers path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from transformers import EncodecModel, MusicgenForCausalLM

from pipeline import audiocraft_format
from pipeline.errors import UserError
from pipeline.features import codec
from pipeline.model import V2MModel, load_pretrained_decoder, tiny_config


def save_package(path, state, cfg) -> None:
    """What audiocraft's export writes: ``{'best_state', 'xp.cfg', 'version', 'exported'}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"best_state": state, "xp.cfg": yaml.safe_dump(cfg), "version": "1.3.0", "exported": True}, path)


# ------------------------------------------------------------------------------------------ language model

def audiocraft_lm(d: int, layers: int, ffn: int, k: int, card: int, seed: int = 0):
    """Random LM weights under audiocraft's names and shapes, and the same tensors under transformers'.

    Returns ``(audiocraft, transformers)`` state dicts (MusicGen: no attention/ff/head biases).
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    ac, hf = {}, {}
    for q in range(k):
        ac[f"emb.{q}.weight"] = hf[f"model.decoder.embed_tokens.{q}.weight"] = rnd(card + 1, d)
        ac[f"linears.{q}.weight"] = hf[f"lm_heads.{q}.weight"] = rnd(card, d)
    for i in range(layers):
        a, h = f"transformer.layers.{i}.", f"model.decoder.layers.{i}."
        for theirs, ours in (("self_attn", "self_attn"), ("cross_attention", "encoder_attn")):
            fused = ac[f"{a}{theirs}.in_proj_weight"] = rnd(3 * d, d)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                hf[f"{h}{ours}.{name}.weight"] = fused[j * d:(j + 1) * d]
            ac[f"{a}{theirs}.out_proj.weight"] = hf[f"{h}{ours}.out_proj.weight"] = rnd(d, d)
        for theirs, ours in (("norm1", "self_attn_layer_norm"), ("norm_cross", "encoder_attn_layer_norm"),
                             ("norm2", "final_layer_norm")):
            ac[f"{a}{theirs}.weight"] = hf[f"{h}{ours}.weight"] = 1 + rnd(d)
            ac[f"{a}{theirs}.bias"] = hf[f"{h}{ours}.bias"] = rnd(d)
        ac[f"{a}linear1.weight"] = hf[f"{h}fc1.weight"] = rnd(ffn, d)
        ac[f"{a}linear2.weight"] = hf[f"{h}fc2.weight"] = rnd(d, ffn)
    ac["out_norm.weight"] = hf["model.decoder.layer_norm.weight"] = 1 + rnd(d)
    ac["out_norm.bias"] = hf["model.decoder.layer_norm.bias"] = rnd(d)
    # T5 conditioner's projection (768 -> D): the text condition, which our video condition replaces
    ac["condition_provider.conditioners.description.output_proj.weight"] = rnd(d, 768)
    ac["condition_provider.conditioners.description.output_proj.bias"] = rnd(d)
    return ac, hf


def tiny_model(seed: int = 0) -> V2MModel:
    torch.manual_seed(seed)
    return V2MModel(tiny_config(motion_size=64, motion_patch=16, decoder_dropout=0.0)).eval()


def lm_files(tmp_path, seed: int = 0):
    """audiocraft's state_dict.bin and a transformers MusicgenForCausalLM folder of the same random weights."""
    c = tiny_model().decoder.config
    ac, hf = audiocraft_lm(c.hidden_size, c.num_hidden_layers, c.ffn_dim, c.num_codebooks, c.vocab_size, seed)
    cfg = {"transformer_lm": {"dim": c.hidden_size, "num_heads": c.num_attention_heads,
                              "num_layers": c.num_hidden_layers, "n_q": c.num_codebooks, "card": c.vocab_size}}
    save_package(tmp_path / "audiocraft" / "state_dict.bin", ac, cfg)
    reference = MusicgenForCausalLM(c)
    missing, unexpected = reference.load_state_dict(hf, strict=False)
    assert not unexpected and all("embed_positions" in key for key in missing)  # sinusoidal, not weights
    reference.save_pretrained(tmp_path / "transformers")
    return ac, cfg


def test_audiocraft_lm_loads_as_decoder_with_equal_logits(tmp_path):
    ac, _ = lm_files(tmp_path)
    fresh = tiny_model(seed=1)
    via_audiocraft = load_pretrained_decoder(tiny_model(seed=1), tmp_path / "audiocraft")  # the folder
    via_file = load_pretrained_decoder(tiny_model(seed=1), tmp_path / "audiocraft" / "state_dict.bin")
    via_transformers = load_pretrained_decoder(tiny_model(seed=1), tmp_path / "transformers")

    ours, ref = via_audiocraft.decoder.state_dict(), via_transformers.decoder.state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ours), "a weight differs from the transformers route"
    assert all(torch.equal(ours[k], t) for k, t in via_file.decoder.state_dict().items())
    # every audiocraft weight arrived (the conditioner's projection is deliberately not used)
    used = sum(t.numel() for k, t in ac.items() if not k.startswith("condition_provider."))
    assert sum(t.numel() for t in ours.values() if t.is_floating_point()) - sum(
        t.numel() for k, t in ours.items() if "embed_positions" in k) == used
    assert not torch.equal(fresh.decoder.state_dict()["lm_heads.0.weight"], ours["lm_heads.0.weight"])

    g = torch.Generator().manual_seed(3)
    c = via_audiocraft.config
    delayed = torch.randint(0, c.codebook_size + 1, (2, c.num_codebooks, 12), generator=g)
    z = torch.randn(2, 6, c.decoder_dim, generator=g)
    with torch.no_grad():
        logits = via_audiocraft.decoder_logits(delayed, z)
        reference = via_transformers.decoder_logits(delayed, z)
        untouched = fresh.decoder_logits(delayed, z)
    assert logits.shape == (2, c.num_codebooks, 12, c.codebook_size)
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)
    assert not torch.allclose(logits, untouched)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("transformer.layers.1.linear2.weight"), r"lacks 1 weights .*model\.decoder\.layers\.1\.fc2"),
    (lambda s: s.__setitem__("transformer.layers.0.self_attn.in_proj_bias", torch.zeros(384)),
     r"unexpected weight 'transformer\.layers\.0\.self_attn\.in_proj_bias'"),
    (lambda s: s.__setitem__("emb.4.weight", torch.zeros(2049, 128)), r"unexpected weight 'emb\.4\.weight'"),
    (lambda s: s.__setitem__("linears.0.weight", torch.zeros(1024, 128)),
     r"linears\.0\.weight has shape \(1024, 128\)"),
])
def test_audiocraft_lm_missing_or_unexpected_key_is_named(tmp_path, edit, message):
    ac, cfg = lm_files(tmp_path)
    edit(ac)
    save_package(tmp_path / "edited" / "state_dict.bin", ac, cfg)
    with pytest.raises(UserError, match=message):
        load_pretrained_decoder(tiny_model(), tmp_path / "edited")


def test_audiocraft_lm_head_count_and_package_checked(tmp_path):
    ac, cfg = lm_files(tmp_path)
    cfg["transformer_lm"]["num_heads"] = 2
    save_package(tmp_path / "heads" / "state_dict.bin", ac, cfg)
    with pytest.raises(UserError, match=r"num_attention_heads 2 \(ours"):
        load_pretrained_decoder(tiny_model(), tmp_path / "heads")
    (tmp_path / "bare").mkdir()
    torch.save(ac, tmp_path / "bare" / "state_dict.bin")  # a plain state dict: not what audiocraft writes
    with pytest.raises(UserError, match=r"no 'best_state'"):
        load_pretrained_decoder(tiny_model(), tmp_path / "bare")


# ------------------------------------------------------------------------------------------ codec

SEANET = dict(dimension=8, n_filters=4, n_residual_layers=1, ratios=[4, 2], kernel_size=7, last_kernel_size=7,
              residual_kernel_size=3, compress=2, lstm=2, norm="weight_norm", pad_mode="constant", true_skip=True,
              causal=False, dilation_base=2, channels="${channels}")
RVQ = dict(n_q=4, bins=16)


def audiocraft_codec(seed: int = 0):
    """Random EnCodec weights under audiocraft's names and shapes (SEANet's ``model`` list, weight_norm's
    ``weight_g`` / ``weight_v``, the RVQ's ``_codebook`` buffers), and the same under transformers' names."""
    g = torch.Generator().manual_seed(seed)
    s = SEANET
    ac, hf = {}, {}

    def conv(ac_name, hf_name, out_ch, in_ch, kernel, transposed=False):
        weight = (in_ch, out_ch, kernel) if transposed else (out_ch, in_ch, kernel)
        ac[f"{ac_name}.weight_g"] = hf[f"{hf_name}.parametrizations.weight.original0"] = (
            0.5 + torch.rand(weight[0], 1, 1, generator=g))
        ac[f"{ac_name}.weight_v"] = hf[f"{hf_name}.parametrizations.weight.original1"] = torch.randn(*weight,
                                                                                                    generator=g)
        ac[f"{ac_name}.bias"] = hf[f"{hf_name}.bias"] = 0.1 * torch.randn(out_ch, generator=g)

    def block(side, n, dim):
        hidden = dim // s["compress"]
        conv(f"{side}.model.{n}.block.1.conv.conv", f"{side}.layers.{n}.block.1.conv", hidden, dim,
             s["residual_kernel_size"])
        conv(f"{side}.model.{n}.block.3.conv.conv", f"{side}.layers.{n}.block.3.conv", dim, hidden, 1)

    def lstm(side, n, dim):
        for layer in range(s["lstm"]):
            for name, shape in ((f"weight_ih_l{layer}", (4 * dim, dim)), (f"weight_hh_l{layer}", (4 * dim, dim)),
                                (f"bias_ih_l{layer}", (4 * dim,)), (f"bias_hh_l{layer}", (4 * dim,))):
                ac[f"{side}.model.{n}.lstm.{name}"] = hf[f"{side}.layers.{n}.lstm.{name}"] = (
                    0.1 * torch.randn(*shape, generator=g))

    nf, mult, n = s["n_filters"], 1, 0
    conv("encoder.model.0.conv.conv", "encoder.layers.0.conv", nf, 1, s["kernel_size"])
    for ratio in reversed(s["ratios"]):  # the encoder downsamples by the ratios in reverse
        n += 1
        block("encoder", n, mult * nf)
        n += 2  # an ELU, then the strided convolution
        conv(f"encoder.model.{n}.conv.conv", f"encoder.layers.{n}.conv", 2 * mult * nf, mult * nf, 2 * ratio)
        mult *= 2
    lstm("encoder", n + 1, mult * nf)
    conv(f"encoder.model.{n + 3}.conv.conv", f"encoder.layers.{n + 3}.conv", s["dimension"], mult * nf,
         s["last_kernel_size"])

    conv("decoder.model.0.conv.conv", "decoder.layers.0.conv", mult * nf, s["dimension"], s["kernel_size"])
    lstm("decoder", 1, mult * nf)
    n = 1
    for ratio in s["ratios"]:
        n += 2
        conv(f"decoder.model.{n}.convtr.convtr", f"decoder.layers.{n}.conv", mult * nf // 2, mult * nf, 2 * ratio,
             transposed=True)
        n += 1
        block("decoder", n, mult * nf // 2)
        mult //= 2
    conv(f"decoder.model.{n + 2}.conv.conv", f"decoder.layers.{n + 2}.conv", 1, nf, s["last_kernel_size"])

    for q in range(RVQ["n_q"]):
        embed = torch.randn(RVQ["bins"], s["dimension"], generator=g)
        size = torch.rand(RVQ["bins"], generator=g) * 10
        for name, value in (("inited", torch.ones(1)), ("cluster_size", size), ("embed", embed),
                            ("embed_avg", embed * size[:, None])):
            ac[f"quantizer.vq.layers.{q}._codebook.{name}"] = hf[f"quantizer.layers.{q}.codebook.{name}"] = value
    return ac, hf


def codec_cfg() -> dict:
    return {"compression_model": "encodec", "sample_rate": 32000, "channels": 1,
            "encodec": {"sample_rate": "${sample_rate}", "channels": "${channels}", "causal": False,
                        "renormalize": False},
            "seanet": SEANET, "rvq": RVQ}


def test_audiocraft_codec_loads_with_equal_codes(tmp_path):
    ac, hf = audiocraft_codec()
    save_package(tmp_path / "audiocraft" / "compression_state_dict.bin", ac, codec_cfg())
    # the transformers route: the config audiocraft's xp.cfg describes, the weights renamed as transformers'
    # conversion script does, save_pretrained
    frame_rate = 32000 / math.prod(SEANET["ratios"])
    config = codec.encodec_32khz_config(hidden_size=8, num_filters=4, upsampling_ratios=SEANET["ratios"],
                                        codebook_size=16, pad_mode="constant",
                                        target_bandwidths=[4 * 4 * frame_rate / 1000])
    reference = EncodecModel(config)
    reference.load_state_dict(hf)  # strict: the spelled-out transformers names are complete
    reference.save_pretrained(tmp_path / "transformers")

    ours = codec.load_codec(tmp_path / "audiocraft", device="cpu")
    ref = codec.load_codec(tmp_path / "transformers", device="cpu")
    assert ours.config.upsampling_ratios == [4, 2] and ours.config.pad_mode == "constant"
    assert ours.config.target_bandwidths == ref.config.target_bandwidths
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(t.numel() for t in a.values()) == sum(t.numel() for t in ac.values())  # every weight arrived

    audio = np.random.default_rng(0).standard_normal((1, 32000 // 4)).astype(np.float32) * 0.3
    bandwidth = ours.config.target_bandwidths[0]
    codes = codec.encode(ours, audio, bandwidth=bandwidth)
    assert codes.shape == (4, math.ceil(audio.shape[1] / 8))
    assert len(np.unique(codes)) > 4  # random codebooks: the codes are not all one entry
    np.testing.assert_array_equal(codes, codec.encode(ref, audio, bandwidth=bandwidth))
    np.testing.assert_array_equal(codec.decode(ours, codes), codec.decode(ref, codes))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("decoder.model.3.convtr.convtr.weight_g"), r"lacks 1 weights .*decoder\.layers\.3\.conv"),
    (lambda s: s.__setitem__("quantizer.vq.layers.0.project_in.weight", torch.zeros(8, 8)),
     r"unexpected weight 'quantizer\.vq\.layers\.0\.project_in\.weight'"),
    (lambda s: s.__setitem__("quantizer.vq.layers.4._codebook.embed", torch.zeros(16, 8)),
     r"unexpected weight 'quantizer\.vq\.layers\.4\._codebook\.embed'"),
])
def test_audiocraft_codec_missing_or_unexpected_key_is_named(tmp_path, edit, message):
    ac, _ = audiocraft_codec()
    edit(ac)
    save_package(tmp_path / "edited" / "compression_state_dict.bin", ac, codec_cfg())
    with pytest.raises(UserError, match=message):
        codec.load_codec(tmp_path / "edited", device="cpu")


def test_audiocraft_pointer_package_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True},
               tmp_path / "c" / "compression_state_dict.bin")
    with pytest.raises(UserError, match=r"names the pretrained model 'facebook/encodec_32khz'"):
        codec.load_codec(tmp_path / "c", device="cpu")


def test_encodec_config_of_musicgen_xp_cfg():
    """musicgen-small's compression model: 32 kHz, ratios 8 5 4 4, 4 x 2048 codes -> 2.2 kbps at 50 Hz."""
    cfg = {"sample_rate": 32000, "channels": 1, "seanet": {"n_filters": 64, "ratios": [8, 5, 4, 4], "dimension": 128,
                                                           "true_skip": True, "lstm": 2},
           "rvq": {"n_q": 4, "bins": 2048}}
    out = audiocraft_format.encodec_config_overrides(cfg, source="x")
    assert out["target_bandwidths"] == [2.2] and out["use_conv_shortcut"] is False and out["codebook_size"] == 2048
    assert {k: codec.ENCODEC_32KHZ[k] for k in out} == out  # facebook/encodec_32khz's config, as we spell it
