"""The video-to-music model: video encoders -> fused tokens Z -> MusicGen decoder (paper 3.1-3.6).

``condition(visual, motion)`` turns a video into ``Z [B, N_v * P, M]``: the visual encoder gives
``v_i``, the motion encoder ``f_j``, the fusion ``o_i`` (or ``v_i`` alone without motion), and a
linear map projects each into ``P`` tokens of the decoder's width ``M``. The decoder is
``transformers.MusicgenForCausalLM``; it cross-attends over ``Z`` and predicts ``K`` codebooks per
step with MusicGen's delay pattern (:mod:`pipeline.model.patterns`). The loss is paper Eq. 1: per codebook,
the mean cross-entropy over its real (non-delay) positions, then the mean over the ``K`` codebooks.

Time-aligned conditioning (``aligned_condition``, beyond the paper; off = the paper's model
exactly): the per-time features ``v_i`` and ``f_j`` are also brought onto the 50 Hz code grid
(:class:`~pipeline.model.encoders.AlignedCondition`) and added to the decoder's input embeddings:
input position ``s`` (whose output predicts codebook 0 of code time ``s``, and codebook ``k`` of
time ``s - k``) gets the features of code time ``s``; a feature at time ``tau`` thus reaches exactly
the positions of code times in ``[tau, tau + 1 / fps)``. Codebook ``k`` of time ``t`` is predicted at
position ``t + k``, which sees the features of code times up to ``t + k`` through causal
self-attention (the video is known ahead; only the audio is causal). Positions past the last code
time (the delay pattern's tail) get nothing. The same features, through one more square map, are
added to the decoder's last hidden state at the same positions (the *output route*: right before the
codebook heads, so position ``s``'s codebook-0 logits, which predict code time ``s``, see the
features of time ``s`` one linear map away).

Classifier-free guidance: the null condition is ``Z = 0`` and no aligned features. MusicGen's
attention projections have no bias, so zero keys and values make the cross-attention add exactly
nothing (the same logits as no condition at all); training replaces a share ``condition_dropout``
of the samples' conditions with it.

Shapes: visual ``[B, N_v, 50, 768]`` (2 fps), motion ``[B, N_m, S, S]`` (4 fps), codes ``[B, K, T]``
(50 Hz); an ``L``-second segment has ``N_v = 2L``, ``N_m = 4L``, ``T = 50L``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

from pipeline import audiocraft_format, checkpoints
from pipeline.errors import UserError
from pipeline.device import resolve_device
from pipeline.files import atomic_path
from pipeline.model.encoders import AlignedCondition, CrossAttentionFusion, MotionEncoder, VisualEncoder, motion_energy
from pipeline.model.patterns import apply_delay, undo_delay

log = logging.getLogger("v2m.model")

MODEL_TYPE = "v2m"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MUSICGEN_HUB_ID = "facebook/musicgen-small"
PARTS = ("visual", "motion", "fusion", "projection", "decoder")
# the aligned path's projections count with the projection: both map video features to the decoder width
_PART_MODULES = {"visual_encoder": "visual", "motion_encoder": "motion", "fusion": "fusion",
                 "projection": "projection", "aligned": "projection", "decoder": "decoder"}


def codebook_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per codebook over the valid positions only: ``[K]`` (paper Eq. 1's inner sums).

    Args:
        logits: ``[B, K, S, C]``.
        targets: long ``[B, K, S]`` (invalid positions may hold anything, e.g. the pad id).
        valid: bool ``[B, K, S]`` (or broadcastable, e.g. ``[K, S]``).

    Logits and targets at invalid positions do not enter the result (nor its gradient).
    """
    b, k, s, c = logits.shape
    valid = valid.expand(b, k, s)
    safe = targets.masked_fill(~valid, -100)
    ce = F.cross_entropy(logits.float().reshape(-1, c), safe.reshape(-1), ignore_index=-100, reduction="none")
    ce = ce.reshape(b, k, s)
    return ce.sum(dim=(0, 2)) / valid.sum(dim=(0, 2)).clamp_min(1)


# ----------------------------------------------------------------------------------------- config

@dataclasses.dataclass
class V2MConfig:
    """Every size of the model. Defaults are the ``small`` preset (musicgen-small's decoder).

    Widths: ``visual_dim`` / ``motion_dim`` are the encoders' ``D``, ``decoder_dim`` is ``M``;
    ``tokens_per_frame`` is ``P``; ``num_codebooks`` ``K`` of ``codebook_size`` ``C`` entries.
    """

    # visual encoder (CLIP ViT-B/32 tokens at 2 fps)
    visual_in_dim: int = 768
    visual_tokens: int = 50
    visual_fps: float = 2.0
    visual_dim: int = 768
    visual_layers: int = 2
    visual_heads: int = 12
    # motion encoder (Farneback magnitudes at 4 fps) and the fusion
    use_motion: bool = True
    motion_size: int = 224
    motion_patch: int = 32
    motion_fps: float = 4.0
    motion_dim: int = 768
    motion_layers: int = 2
    motion_heads: int = 12
    fusion_heads: int = 12
    encoder_ffn_mult: int = 4
    encoder_dropout: float = 0.1
    # conditioning
    tokens_per_frame: int = 2
    condition_dropout: float = 0.1
    aligned_condition: bool = False
    aligned_motion_rank: int = 0        # 0: the motion enters the aligned features at full width
    aligned_motion_energy: bool = False  # the aligned path's energy onset term (AlignedCondition)
    # decoder (MusicgenForCausalLM)
    decoder_dim: int = 1024
    decoder_layers: int = 24
    decoder_heads: int = 16
    decoder_ffn: int = 4096
    decoder_dropout: float = 0.1
    decoder_max_positions: int = 2048
    num_codebooks: int = 4
    codebook_size: int = 2048
    codes_rate: float = 50.0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"V2MConfig: {message}")
        need(self.visual_dim % self.visual_heads == 0, f"visual_dim {self.visual_dim} not divisible by "
                                                       f"visual_heads {self.visual_heads}")
        need(self.visual_dim % 2 == 0 and self.motion_dim % 2 == 0, "encoder widths must be even (temporal code)")
        need(self.decoder_dim % self.decoder_heads == 0, f"decoder_dim {self.decoder_dim} not divisible by "
                                                         f"decoder_heads {self.decoder_heads}")
        need(0.0 <= self.condition_dropout <= 1.0, f"condition_dropout must be in [0, 1], got {self.condition_dropout}")
        need(self.aligned_motion_rank >= 0, f"aligned_motion_rank must be >= 0, got {self.aligned_motion_rank}")
        need(self.tokens_per_frame >= 1, f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")
        need(self.num_codebooks >= 1 and self.codebook_size >= 2, "need codebooks of at least 2 entries")
        if self.use_motion:
            need(self.motion_size % self.motion_patch == 0,
                 f"motion_size {self.motion_size} (features.motion.size) is not a multiple of motion_patch "
                 f"{self.motion_patch}: the patch embedding would drop the border")
            need(self.motion_dim % self.motion_heads == 0, f"motion_dim {self.motion_dim} not divisible by "
                                                           f"motion_heads {self.motion_heads}")
            need(self.visual_dim % self.fusion_heads == 0, f"visual_dim {self.visual_dim} not divisible by "
                                                           f"fusion_heads {self.fusion_heads}")

    @property
    def pad_id(self) -> int:
        """The token of delay positions without a code, and the start token: ``codebook_size``."""
        return self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "V2MConfig":
        """Build from :meth:`to_dict`'s output; unknown keys raise (a ``model_type: v2m`` key is allowed)."""
        values = dict(values)
        model_type = values.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"not a {MODEL_TYPE} config: model_type {model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown V2MConfig keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_folder(cls, folder: Path | str) -> "V2MConfig":
        """The config of a model folder (``folder/config.json``), parsed once.

        Raises:
            FileNotFoundError: ``folder/config.json`` is missing.
            UserError: it is not a V2M model config (the message names the file).
        """
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; a trained V2M model folder (config.json + "
                                    "model.safetensors) comes from the train stage (`dvc repro train`), "
                                    "which writes models/v2m")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a V2M model config ({exc})") from None

    def decoder_config(self) -> MusicgenDecoderConfig:
        """The ``MusicgenDecoderConfig`` of the decoder (musicgen-small's for the defaults)."""
        return MusicgenDecoderConfig(
            vocab_size=self.codebook_size, num_codebooks=self.num_codebooks, hidden_size=self.decoder_dim,
            num_hidden_layers=self.decoder_layers, num_attention_heads=self.decoder_heads, ffn_dim=self.decoder_ffn,
            max_position_embeddings=self.decoder_max_positions, dropout=self.decoder_dropout,
            attention_dropout=0.0, activation_dropout=0.0, activation_function="gelu", layerdrop=0.0,
            scale_embedding=False, initializer_factor=0.02, audio_channels=1, pad_token_id=self.pad_id,
            bos_token_id=self.pad_id, tie_word_embeddings=False)


@dataclasses.dataclass
class V2MOutput:
    """One training forward.

    Attributes:
        loss: scalar, the mean of ``per_codebook_loss`` (paper Eq. 1).
        delayed_logits: ``[B, K, T + K - 1, C]``, the decoder's, in the delay pattern's layout.
        per_codebook_loss: ``[K]`` mean cross-entropy of each codebook, in nats per token.
        logits: ``[B, K, T, C]`` aligned with the codes: ``logits[b, k, t]`` predicts ``codes[b, k, t]``
            (the delay undone), so every position is valid. Made on first access: a training step
            needs only ``loss``, and undoing the delay gathers every logit (~35 ms a step on 2 cores
            at the tiny size, batch 8).
    """

    loss: torch.Tensor
    delayed_logits: torch.Tensor
    per_codebook_loss: torch.Tensor

    @functools.cached_property
    def logits(self) -> torch.Tensor:
        return undo_delay(self.delayed_logits, offset=0)


# ----------------------------------------------------------------------------------------- model

class V2MModel(nn.Module):
    """Video encoders + cross-attention fusion + projection + MusicGen decoder.

    Parts (see :meth:`param_counts`): ``visual`` (VisualEncoder), ``motion`` (MotionEncoder),
    ``fusion`` (CrossAttentionFusion), ``projection`` (Linear ``D -> P * M``, and with
    ``aligned_condition`` the AlignedCondition's projections), ``decoder``
    (``MusicgenForCausalLM``). Without motion (``use_motion=False``, the paper's ablation) the
    motion encoder and the fusion do not exist and the motion input is ignored.
    """

    def __init__(self, config: V2MConfig):
        super().__init__()
        self.config = config
        c = config
        self.visual_encoder = VisualEncoder(c.visual_in_dim, c.visual_tokens, c.visual_dim, c.visual_layers,
                                            c.visual_heads, c.encoder_ffn_mult * c.visual_dim, c.encoder_dropout,
                                            fps=c.visual_fps)
        self.projection = nn.Linear(c.visual_dim, c.tokens_per_frame * c.decoder_dim)
        self.decoder = MusicgenForCausalLM(c.decoder_config())
        # The motion branch is made last, so the parts both variants share draw the same initial
        # weights from the same seed: the motion ablation compares the branch, not two inits.
        if c.use_motion:
            self.motion_encoder = MotionEncoder(c.motion_size, c.motion_patch, c.motion_dim, c.motion_layers,
                                                c.motion_heads, c.encoder_ffn_mult * c.motion_dim,
                                                c.encoder_dropout, fps=c.motion_fps)
            self.fusion = CrossAttentionFusion(c.visual_dim, c.fusion_heads, kv_dim=c.motion_dim,
                                               dropout=c.encoder_dropout)
        else:
            self.motion_encoder = None
            self.fusion = None
        # Last of all, and zero-initialised: the other parts' initial weights are those of a model without it.
        self.aligned = (AlignedCondition(c.visual_dim, c.motion_dim if c.use_motion else None, c.decoder_dim,
                                         c.visual_fps, c.motion_fps, c.codes_rate, c.aligned_motion_rank,
                                         c.aligned_motion_energy)
                        if c.aligned_condition else None)
        # The aligned features enter as a term of the input embeddings: MusicGen sums the K
        # codebooks' embeddings, and a hook on the first one adds them (with `inputs_embeds`
        # transformers 5.24 mis-sizes the position embeddings).
        self._aligned_input: torch.Tensor | None = None
        if self.aligned is not None:
            self.decoder.model.decoder.embed_tokens[0].register_forward_hook(self._add_aligned_input)
            self.decoder.model.decoder.layer_norm.register_forward_hook(self._add_aligned_output)

    # -- conditioning

    def condition(self, visual: torch.Tensor, motion: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's cross-attention input ``Z [B, N_v * P, M]``.

        Args:
            visual: CLIP tokens ``[B, N_v, 50, 768]``.
            motion: flow magnitudes ``[B, N_m, S, S]``; ignored (may be None) without motion.

        Frame ``i``'s ``P`` tokens are rows ``i * P .. i * P + P - 1``.
        """
        return self.conditions(visual, motion, 0)[0]

    def conditions(self, visual: torch.Tensor, motion: torch.Tensor | None, steps: int
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(Z [B, N_v * P, M], aligned [B, steps, M] or None)``: both conditions, the encoders run once.

        ``aligned`` (None unless ``aligned_condition``) holds row ``t`` for code time ``t`` of the
        segment, whose code time 0 is the time of the first visual and motion frame.
        """
        v = self.visual_encoder(visual)
        f = None
        if self.motion_encoder is not None:
            if motion is None:
                raise ValueError("this model uses motion (use_motion=True): pass the motion maps")
            f = self.motion_encoder(motion)
            o = self.fusion(v, f)
        else:
            o = v
        b, n = o.shape[:2]
        z = self.projection(o).reshape(b, n * self.config.tokens_per_frame, self.config.decoder_dim)
        if self.aligned is None or steps <= 0:
            return z, None
        energy = motion_energy(motion) if self.aligned.onset_energy is not None else None
        return z, self.aligned(v, f, steps, energy)

    def condition_drop_mask(self, batch: int, drop_condition: torch.Tensor | None = None,
                            generator: torch.Generator | None = None,
                            device: torch.device | str | None = None) -> torch.Tensor | None:
        """Which samples get the null condition: bool ``[B]``, or None for none.

        The caller's ``drop_condition`` wins; otherwise, in train mode only, each sample is dropped
        with probability ``condition_dropout``, drawn from ``generator`` (the global RNG if None).
        """
        if drop_condition is not None:
            drop = torch.as_tensor(drop_condition, dtype=torch.bool, device=device)
            if drop.shape != (batch,):
                raise ValueError(f"drop_condition must be [B] = [{batch}], got {tuple(drop.shape)}")
            return drop
        if self.training and self.config.condition_dropout > 0:
            where = generator.device if generator is not None else "cpu"
            return (torch.rand(batch, generator=generator, device=where) < self.config.condition_dropout).to(device)
        return None

    @staticmethod
    def null_condition(z: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``Z`` (or the aligned features ``[B, T, M]``) with the rows of dropped samples (all of them if
        ``drop`` is None) set to the null condition 0."""
        if drop is None:
            return torch.zeros_like(z)
        return z.masked_fill(drop.to(z.device)[:, None, None], 0.0)

    # -- decoder

    def _add_aligned_input(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output if self._aligned_input is None else output + self._aligned_input.to(output.dtype)

    def _add_aligned_output(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        # the output route: the final layer norm's output [B, S, M] is what the K codebook heads read
        if self._aligned_input is None:
            return output
        return output + self.aligned.output(self._aligned_input.to(output.dtype))

    def run_decoder(self, input_ids: torch.Tensor, z: torch.Tensor, aligned: torch.Tensor | None = None,
                    first_position: int = 0, **kwargs: Any) -> Any:
        """One call of the MusicGen decoder on ``input_ids`` long ``[B * K, S]`` (positions
        ``first_position .. first_position + S - 1``), cross-attending over ``Z``, with the aligned
        features ``[B, T, M]`` (code time ``t`` at row ``t``) added at those positions; ``kwargs`` go to the
        decoder (``cache``, ``use_cache``)."""
        if aligned is not None and self.aligned is None:
            raise ValueError("aligned features given to a model without aligned_condition")
        if aligned is None:
            return self.decoder(input_ids=input_ids, encoder_hidden_states=z, **kwargs)
        s = input_ids.shape[-1]
        window = aligned[:, first_position:first_position + s]
        if window.shape[1] < s:   # the delay pattern's tail: positions past the last code time get nothing
            window = torch.cat([window, window.new_zeros(window.shape[0], s - window.shape[1], window.shape[2])], 1)
        self._aligned_input = window
        try:
            return self.decoder(input_ids=input_ids, encoder_hidden_states=z, **kwargs)
        finally:
            self._aligned_input = None

    def decoder_logits(self, delayed: torch.Tensor, z: torch.Tensor, aligned: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Decoder logits of a delayed token layout: long ``[B, K, S]``, ``Z [B, N, M]`` -> ``[B, K, S, C]``.

        ``aligned``: the aligned features ``[B, T, M]`` (see the module docstring), or None.
        Position ``s``'s logits predict position ``s + 1``. No KV cache (training and checks).
        """
        b, k, s = delayed.shape
        out = self.run_decoder(delayed.reshape(b * k, s), z, aligned, use_cache=False)
        return out.logits.reshape(b, k, s, -1)  # transformers returns [B * K, S, C]

    def forward(self, visual: torch.Tensor, motion: torch.Tensor | None, codes: torch.Tensor,
                drop_condition: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> V2MOutput:
        """Next-token prediction of ``codes`` given the video (paper 3.6).

        Args:
            visual: ``[B, N_v, 50, 768]``.
            motion: ``[B, N_m, S, S]``, or None without motion.
            codes: long ``[B, K, T]`` in ``[0, C)``.
            drop_condition: bool ``[B]``: True gives that sample the null condition (CFG training).
                None: drawn with probability ``condition_dropout`` in train mode, none in eval mode.
            generator: the RNG of that draw.

        Returns:
            :class:`V2MOutput` (loss, code-aligned logits ``[B, K, T, C]``, per-codebook loss ``[K]``).
        """
        c = self.config
        if codes.ndim != 3 or codes.shape[1] != c.num_codebooks:
            raise ValueError(f"codes must be [B, {c.num_codebooks}, T], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= c.codebook_size):
            raise ValueError(f"codes must lie in [0, {c.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        z, aligned = self.conditions(visual, motion, codes.shape[2])
        if z.shape[0] != codes.shape[0]:
            raise ValueError(f"video batch {z.shape[0]} != codes batch {codes.shape[0]}")
        drop = self.condition_drop_mask(z.shape[0], drop_condition, generator, z.device)
        if drop is not None:
            z = self.null_condition(z, drop)
            aligned = self.null_condition(aligned, drop) if aligned is not None else None
        delayed, valid = apply_delay(codes.long(), c.pad_id)
        logits = self.decoder_logits(delayed[:, :, :-1], z, aligned)
        per_codebook = codebook_cross_entropy(logits, delayed[:, :, 1:], valid[:, :, 1:])
        return V2MOutput(loss=per_codebook.mean(), delayed_logits=logits, per_codebook_loss=per_codebook)

    # -- parameters

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """The parameters of one part (``visual``, ``motion``, ``fusion``, ``projection``, ``decoder``)."""
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")
        return [p for name, p in self.named_parameters() if _PART_MODULES[name.split(".", 1)[0]] == part]

    def param_counts(self) -> dict[str, int]:
        """Parameters per part, ``total`` and ``trainable`` (a part absent without motion counts 0)."""
        counts = {part: 0 for part in PARTS}
        trainable = 0
        for name, p in self.named_parameters():
            counts[_PART_MODULES[name.split(".", 1)[0]]] += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        counts["total"] = sum(counts[part] for part in PARTS)
        counts["trainable"] = trainable
        return counts

    def log_param_counts(self, logger: logging.Logger | None = None) -> dict[str, int]:
        """Log (and return) :meth:`param_counts`, in millions."""
        counts = self.param_counts()
        text = ", ".join(f"{name} {value / 1e6:.2f}M" for name, value in counts.items())
        (logger or log).info("V2M parameters: %s", text)
        return counts

    def freeze_decoder(self) -> None:
        """No gradients for the decoder (``model.train_decoder: false``); the video side stays trainable."""
        for p in self.decoder.parameters():
            p.requires_grad_(False)

    # -- files

    def save_pretrained(self, folder: Path | str, extra_files: Mapping[str, str] | None = None) -> Path:
        """Write ``config.json`` (V2MConfig) and ``model.safetensors`` to ``folder``, atomically.

        Args:
            extra_files: more text files for the folder, name -> content (the train stage adds
                ``features.json``, the recipe of the model's inputs that generation needs).

        Returns:
            ``folder``.
        """
        state = {name: t.detach().to("cpu").contiguous() for name, t in self.state_dict().items()}
        with atomic_path(folder) as temp:
            temp.mkdir(parents=True)
            (temp / CONFIG_FILE).write_text(json.dumps({"model_type": MODEL_TYPE, **self.config.to_dict()},
                                                       indent=2) + "\n")
            save_file(state, str(temp / WEIGHTS_FILE), metadata={"format": "pt"})
            for name, text in (extra_files or {}).items():
                (temp / name).write_text(text)
        return Path(folder)

    @classmethod
    def from_pretrained(cls, folder: Path | str, device: str | torch.device = "cpu",
                        config: V2MConfig | None = None) -> "V2MModel":
        """Load a :meth:`save_pretrained` folder, in eval mode, on ``device`` (``auto`` = CUDA when present).

        ``config``: the folder's :meth:`V2MConfig.from_folder`, when the caller has parsed it already.

        Raises:
            FileNotFoundError: ``folder/config.json`` or ``folder/model.safetensors`` is missing.
            UserError: the config is malformed, or the weights do not match it.
        """
        folder = Path(folder)
        config = config if config is not None else V2MConfig.from_folder(folder)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder / WEIGHTS_FILE}: no such file; a trained V2M model folder (config.json + "
                                    "model.safetensors) comes from the train stage (`dvc repro train`), "
                                    "which writes models/v2m")
        device = resolve_device(device) if isinstance(device, str) else device
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_FILE))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE}: {exc}") from None
        return model.to(device).eval()


# ----------------------------------------------------------------------------------------- musicgen weights

def _musicgen_where_from() -> str:
    return (f"expected a local {MUSICGEN_HUB_ID} folder (config.json with model_type 'musicgen' + model.safetensors) "
            f"or that hub id in the Hugging Face cache; nothing is downloaded. On a machine with internet: "
            f"MusicgenForConditionalGeneration.from_pretrained('{MUSICGEN_HUB_ID}').save_pretrained(DIR), then "
            "copy DIR here and set model.pretrained_decoder to it (empty = a random decoder); audiocraft's "
            f"{audiocraft_format.LM_FILE} (the file, or a folder holding it) also loads")


_DECODER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "num_codebooks", "vocab_size")


def _audiocraft_decoder_state(model: V2MModel, path: Path) -> dict[str, torch.Tensor]:
    """The decoder weights of an audiocraft ``state_dict.bin``, under ``model.decoder``'s names."""
    state, cfg = checkpoints.read_audiocraft_package(path, label="pretrained decoder",
                                                     where_from=_musicgen_where_from())
    heads = audiocraft_format.lm_num_heads(cfg)
    if heads is not None and heads != model.decoder.config.num_attention_heads:
        raise UserError(f"{path}: its decoder does not fit this model's: num_attention_heads {heads} "
                        f"(ours {model.decoder.config.num_attention_heads}). model.size 'small' is "
                        "facebook/musicgen-small's decoder")
    return audiocraft_format.lm_state_to_transformers(state, model.decoder.state_dict(), source=str(path))


def load_pretrained_decoder(model: V2MModel, source: str | Path) -> V2MModel:
    """Copy a MusicGen checkpoint's decoder weights into ``model.decoder`` (in place; returns ``model``).

    ``source`` is a ``facebook/musicgen-small``-style folder (``model_type: musicgen``, loaded whole
    with ``MusicgenForConditionalGeneration`` and its ``.decoder`` taken: loading such a composite
    checkpoint straight into ``MusicgenForCausalLM`` leaves every weight random), or a
    ``MusicgenForCausalLM`` folder (``model_type: musicgen_decoder``), or a hub id of either in the cache,
    or audiocraft's ``state_dict.bin`` (the file, or a folder holding it and no config.json), mapped by
    :mod:`pipeline.audiocraft_format` (its text conditioner's weights are not used).

    Raises:
        FileNotFoundError: no such folder/hub id, or it lacks config.json or weights.
        UserError: the checkpoint's decoder has other sizes than ``model``'s, or lacks weights.
    """
    mine = model.decoder.state_dict()
    audiocraft = checkpoints.audiocraft_file(source, audiocraft_format.LM_FILE)
    if audiocraft is not None:
        state = _audiocraft_decoder_state(model, audiocraft)
    else:
        state = _transformers_decoder_state(model, source)
    if state.keys() != mine.keys():
        raise UserError(f"{source}: decoder weight names differ from ours "
                        f"(e.g. {sorted(state.keys() ^ mine.keys())[0]})")
    shapes = [f"{name} {tuple(state[name].shape)} (ours {tuple(t.shape)})" for name, t in mine.items()
              if state[name].shape != t.shape]
    if shapes:
        raise UserError(f"{source}: decoder weight shapes differ from ours: {shapes[0]}")
    with torch.no_grad():
        for name, tensor in mine.items():
            tensor.copy_(state[name])
    log.info("decoder weights loaded from %s (%d tensors)", source, len(state))
    return model


def _transformers_decoder_state(model: V2MModel, source: str | Path) -> dict[str, torch.Tensor]:
    """The decoder weights of a transformers MusicGen checkpoint (folder or cached hub id)."""
    folder = checkpoints.local_checkpoint(source, label="pretrained decoder", where_from=_musicgen_where_from())
    pretrained = checkpoints.load_part(folder, part="decoder", standalone=MusicgenForCausalLM,
                                       standalone_type="musicgen_decoder", weights="decoder",
                                       where_from=_musicgen_where_from())
    ours, theirs = model.decoder.config, pretrained.config
    differ = [f"{name} {getattr(theirs, name)} (ours {getattr(ours, name)})" for name in _DECODER_FIELDS
              if getattr(theirs, name) != getattr(ours, name)]
    if differ:
        raise UserError(f"{source}: its decoder does not fit this model's: {', '.join(differ)}. "
                        "model.size 'small' is facebook/musicgen-small's decoder")
    return pretrained.state_dict()
