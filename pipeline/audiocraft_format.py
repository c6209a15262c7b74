"""MusicGen checkpoints as audiocraft writes them, read without audiocraft: the key mapping to transformers.

audiocraft's MusicGen release (the ``facebook/musicgen-*`` hub repositories' audiocraft files)
is two ``torch.save`` packages, each ``{'best_state': state dict, 'xp.cfg': YAML of the training
config, ...}``:

- ``state_dict.bin``: the language model (``audiocraft.models.lm.LMModel``), our decoder.
- ``compression_state_dict.bin``: the codec (``audiocraft.models.encodec.EncodecModel``), our codec.

The key names below are those of audiocraft's modules (``models/lm.py``, ``modules/transformer.py``,
``modules/seanet.py``, ``modules/conv.py``, ``modules/lstm.py``, ``quantization/core_vq.py``);
transformers' ``MusicgenForCausalLM`` and ``EncodecModel`` are the same computations under other
names. Every key is mapped or deliberately dropped (only the text/melody conditioners, which our
video conditioning replaces); anything else, and any weight the target lacks, is an error naming it.

Language model (``L`` layers, width ``D``, ``K`` codebooks; ``i`` a layer, ``k`` a codebook):

======================================================  ==============================================
audiocraft ``state_dict.bin``                           ``MusicgenForCausalLM``
======================================================  ==============================================
``emb.k.weight`` ``[card + 1, D]``                      ``model.decoder.embed_tokens.k.weight``
``transformer.layers.i.self_attn.in_proj_weight``       ``...layers.i.self_attn.{q,k,v}_proj.weight``
``[3D, D]`` (rows q, k, v)                              (``[D, D]`` each)
``transformer.layers.i.self_attn.out_proj.weight``      ``...layers.i.self_attn.out_proj.weight``
``transformer.layers.i.cross_attention.*``              ``...layers.i.encoder_attn.*`` (same split)
``transformer.layers.i.norm1.{weight,bias}``            ``...layers.i.self_attn_layer_norm.*``
``transformer.layers.i.norm_cross.{weight,bias}``       ``...layers.i.encoder_attn_layer_norm.*``
``transformer.layers.i.norm2.{weight,bias}``            ``...layers.i.final_layer_norm.*``
``transformer.layers.i.linear1.weight`` ``[F, D]``      ``...layers.i.fc1.weight``
``transformer.layers.i.linear2.weight`` ``[D, F]``      ``...layers.i.fc2.weight``
``out_norm.{weight,bias}``                              ``model.decoder.layer_norm.*``
``linears.k.weight`` ``[card, D]``                      ``lm_heads.k.weight``
``condition_provider.*``                                dropped: T5 / chroma conditioners' projections
======================================================  ==============================================

(``...`` is ``model.decoder``.) MusicGen's LM has no attention, feed-forward or head biases
(``bias_attn``, ``bias_ff``, ``bias_proj`` false), and a sinusoidal position embedding without weights.

Codec (SEANet encoder/decoder, ``n`` an index of the SEANet's ``model`` list, which transformers keeps):

=========================================================  ===========================================
audiocraft ``compression_state_dict.bin``                  ``EncodecModel``
=========================================================  ===========================================
``{encoder,decoder}.model.n.conv.conv.P``                  ``{encoder,decoder}.layers.n.conv.P``
``decoder.model.n.convtr.convtr.P``                        ``decoder.layers.n.conv.P``
``{encoder,decoder}.model.n.block.j.conv.conv.P``          ``...layers.n.block.j.conv.P``
``{encoder,decoder}.model.n.shortcut.conv.conv.P``         ``...layers.n.shortcut.conv.P``
``*.conv.norm.*`` / ``*.convtr.norm.*`` (time_group_norm)  ``*.conv.norm.*``
``{encoder,decoder}.model.n.lstm.P``                       ``...layers.n.lstm.P``
``quantizer.vq.layers.k._codebook.B``                      ``quantizer.layers.k.codebook.B``
=========================================================  ===========================================

``P`` is ``bias``, ``weight``, or ``weight_g`` / ``weight_v`` (``torch.nn.utils.weight_norm``, which
audiocraft uses); these become ``parametrizations.weight.original0`` / ``original1`` when the target
uses ``torch.nn.utils.parametrizations.weight_norm``. ``B`` is ``inited``, ``cluster_size``, ``embed``,
``embed_avg``. The codec's sizes come from ``xp.cfg`` (:func:`encodec_config_overrides`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping

import torch

from pipeline.errors import UserError

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
DROPPED_LM_PREFIXES = ("condition_provider.",)  # text / melody conditioners: our condition is the video

_Rule = tuple[re.Pattern, Callable[[re.Match, torch.Tensor], list[tuple[str, torch.Tensor]]]]


def _rename(template: str) -> Callable[[re.Match, torch.Tensor], list[tuple[str, torch.Tensor]]]:
    return lambda m, t: [(m.expand(template), t)]


def _split_qkv(template: str) -> Callable[[re.Match, torch.Tensor], list[tuple[str, torch.Tensor]]]:
    """audiocraft's fused ``in_proj_weight`` ``[3D, D]`` -> q, k, v ``[D, D]`` (its row order)."""
    def split(m: re.Match, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if t.ndim != 2 or t.shape[0] != 3 * t.shape[1]:
            raise UserError(f"{m.group(0)}: shape {tuple(t.shape)} is not a fused [3D, D] q/k/v projection")
        d = t.shape[1]
        return [(m.expand(template).replace("{}", name), t[j * d:(j + 1) * d].clone())
                for j, name in enumerate(("q_proj", "k_proj", "v_proj"))]
    return split


_LAYER = r"transformer\.layers\.(\d+)\."
_DEC = r"model.decoder.layers.\1."
LM_RULES: tuple[_Rule, ...] = tuple((re.compile(p + r"\Z"), f) for p, f in (
    (r"emb\.(\d+)\.weight", _rename(r"model.decoder.embed_tokens.\1.weight")),
    (_LAYER + r"self_attn\.in_proj_weight", _split_qkv(_DEC + "self_attn.{}.weight")),
    (_LAYER + r"self_attn\.out_proj\.weight", _rename(_DEC + "self_attn.out_proj.weight")),
    (_LAYER + r"cross_attention\.in_proj_weight", _split_qkv(_DEC + "encoder_attn.{}.weight")),
    (_LAYER + r"cross_attention\.out_proj\.weight", _rename(_DEC + "encoder_attn.out_proj.weight")),
    (_LAYER + r"norm1\.(weight|bias)", _rename(_DEC + r"self_attn_layer_norm.\2")),
    (_LAYER + r"norm_cross\.(weight|bias)", _rename(_DEC + r"encoder_attn_layer_norm.\2")),
    (_LAYER + r"norm2\.(weight|bias)", _rename(_DEC + r"final_layer_norm.\2")),
    (_LAYER + r"linear1\.weight", _rename(_DEC + "fc1.weight")),
    (_LAYER + r"linear2\.weight", _rename(_DEC + "fc2.weight")),
    (r"out_norm\.(weight|bias)", _rename(r"model.decoder.layer_norm.\1")),
    (r"linears\.(\d+)\.weight", _rename(r"lm_heads.\1.weight")),
))

_PARAM = r"(bias|weight|weight_g|weight_v)"
CODEC_RULES: tuple[_Rule, ...] = tuple((re.compile(p + r"\Z"), f) for p, f in (
    (r"(encoder|decoder)\.model\.(\d+)\.conv\.conv\." + _PARAM, _rename(r"\1.layers.\2.conv.\3")),
    (r"decoder\.model\.(\d+)\.convtr\.convtr\." + _PARAM, _rename(r"decoder.layers.\1.conv.\2")),
    (r"(encoder|decoder)\.model\.(\d+)\.(conv|convtr)\.norm\.(weight|bias)", _rename(r"\1.layers.\2.norm.\4")),
    (r"(encoder|decoder)\.model\.(\d+)\.(block\.\d+|shortcut)\.conv\.conv\." + _PARAM,
     _rename(r"\1.layers.\2.\3.conv.\4")),
    (r"(encoder|decoder)\.model\.(\d+)\.(block\.\d+|shortcut)\.conv\.norm\.(weight|bias)",
     _rename(r"\1.layers.\2.\3.norm.\4")),
    (r"(encoder|decoder)\.model\.(\d+)\.lstm\.((?:weight|bias)_(?:ih|hh)_l\d+)", _rename(r"\1.layers.\2.lstm.\3")),
    (r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)",
     _rename(r"quantizer.layers.\1.codebook.\2")),
))


def _weight_norm_names(target_keys: Iterable[str]) -> dict[str, str]:
    """``weight_g``/``weight_v`` -> the target's names: the same, or torch's parametrization names."""
    if any(".parametrizations.weight.original0" in k for k in target_keys):
        return {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    return {"weight_g": "weight_g", "weight_v": "weight_v"}


def _apply(state: Mapping[str, torch.Tensor], rules: tuple[_Rule, ...], *, source: str,
           dropped: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``state`` renamed by ``rules``, and each new name's audiocraft name (for messages)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        if key.startswith(dropped):
            continue
        for pattern, convert in rules:
            match = pattern.match(key)
            if match:
                for name, value in convert(match, tensor):
                    out[name] = value
                    origin[name] = key
                break
        else:
            raise UserError(f"{source}: unexpected weight {key!r}: not a key of audiocraft's MusicGen format "
                            "this loader maps (see pipeline/audiocraft_format.py)")
    return out, origin


def _check_complete(mapped: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, source: str,
                    origin: Mapping[str, str]) -> None:
    """Every target weight present with its shape, and nothing else."""
    missing = sorted(target.keys() - mapped.keys())
    if missing:
        raise UserError(f"{source}: lacks {len(missing)} weights of our model (e.g. {missing[0]}); "
                        "it is not a complete checkpoint of this size")
    extra = sorted(mapped.keys() - target.keys())
    if extra:
        raise UserError(f"{source}: unexpected weight {origin.get(extra[0], extra[0])!r} "
                        f"(mapped to {extra[0]!r}, which our model does not have)")
    for name, tensor in target.items():
        if mapped[name].shape != tensor.shape:
            raise UserError(f"{source}: {origin.get(name, name)} has shape {tuple(mapped[name].shape)}, "
                            f"ours {tuple(tensor.shape)} ({name})")


def lm_state_to_transformers(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                             source: str) -> dict[str, torch.Tensor]:
    """audiocraft LM ``best_state`` -> a ``MusicgenForCausalLM`` state dict with exactly ``target``'s keys.

    Args:
        target: the receiving decoder's ``state_dict()`` (names and shapes to match).
        source: the file, for messages.

    Raises:
        UserError: a key neither mapped nor dropped, a weight of ``target`` missing, or a shape differing.
    """
    mapped, origin = _apply(state, LM_RULES, source=source, dropped=DROPPED_LM_PREFIXES)
    _check_complete(mapped, target, source=source, origin=origin)
    return mapped


def codec_state_to_transformers(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                                source: str) -> dict[str, torch.Tensor]:
    """audiocraft EnCodec ``best_state`` -> an ``EncodecModel`` state dict with exactly ``target``'s keys."""
    names = _weight_norm_names(target)
    renamed, origin = _apply(state, CODEC_RULES, source=source)
    mapped, origins = {}, {}
    for key, tensor in renamed.items():
        stem, _, last = key.rpartition(".")
        mapped[f"{stem}.{names.get(last, last)}"] = tensor
        origins[f"{stem}.{names.get(last, last)}"] = origin[key]
    _check_complete(mapped, target, source=source, origin=origins)
    return mapped


# ----------------------------------------------------------------------------------------------- xp.cfg

def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    # OmegaConf.to_yaml keeps interpolations unresolved (``sample_rate: ${sample_rate}``)
    if isinstance(value, str) and (m := re.fullmatch(r"\$\{([\w.]+)\}", value)):
        return _lookup(cfg, m.group(1))
    return value


def encodec_config_overrides(cfg: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """``EncodecConfig`` keys from an audiocraft compression model's ``xp.cfg`` (its ``seanet``/``rvq``
    sections and top-level ``sample_rate``/``channels``); keys the file leaves out are not returned.

    The bandwidth is audiocraft's: ``n_q * log2(bins) * frame_rate / 1000`` kbps (2.2 for 4 x 2048 at 50 Hz).
    """
    if _lookup(cfg, "compression_model") not in (None, "encodec"):
        raise UserError(f"{source}: compression_model {_lookup(cfg, 'compression_model')!r} is not an EnCodec")
    out: dict[str, Any] = {}
    for ours, theirs, convert in (
            ("sampling_rate", "sample_rate", int), ("audio_channels", "channels", int),
            ("hidden_size", "seanet.dimension", int), ("num_filters", "seanet.n_filters", int),
            ("num_residual_layers", "seanet.n_residual_layers", int), ("upsampling_ratios", "seanet.ratios", list),
            ("norm_type", "seanet.norm", str), ("kernel_size", "seanet.kernel_size", int),
            ("last_kernel_size", "seanet.last_kernel_size", int),
            ("residual_kernel_size", "seanet.residual_kernel_size", int),
            ("dilation_growth_rate", "seanet.dilation_base", int), ("use_causal_conv", "seanet.causal", bool),
            ("pad_mode", "seanet.pad_mode", str), ("compress", "seanet.compress", int),
            ("num_lstm_layers", "seanet.lstm", int), ("use_conv_shortcut", "seanet.true_skip", lambda v: not v),
            ("codebook_size", "rvq.bins", int), ("normalize", "encodec.renormalize", bool)):
        value = _lookup(cfg, theirs)
        if value is not None:
            out[ours] = convert(value)
    n_q, bins = _lookup(cfg, "rvq.n_q"), out.get("codebook_size")
    if n_q is not None and bins and "sampling_rate" in out and "upsampling_ratios" in out:
        frame_rate = out["sampling_rate"] / math.prod(out["upsampling_ratios"])
        out["target_bandwidths"] = [round(int(n_q) * math.log2(bins) * frame_rate / 1000, 6)]
    return out


def lm_num_heads(cfg: Mapping[str, Any]) -> int | None:
    """``transformer_lm.num_heads`` of an LM's ``xp.cfg``: the one size the weights' shapes do not show."""
    heads = _lookup(cfg, "transformer_lm.num_heads")
    return None if heads is None else int(heads)
