"""The video side of the model: visual encoder, motion encoder, cross-attention fusion (paper 3.1-3.3).

Shapes: ``B`` batch, ``N_v`` visual frames (2 fps), ``N_m`` motion maps (4 fps), ``Q`` CLIP tokens
per frame (50 = CLS + 7x7 patches), ``S`` motion map side (224), ``D`` encoder width.

Both encoders add a sinusoidal *temporal* code after pooling, as a function of each frame's time
in seconds (``index / fps``), so a visual frame and the motion map taken at the same instant get
the same code and the fusion can line them up; any number of frames works. VidMuse has no such
code (its frame order reaches the decoder only through its rolling windows); the paper does not
say whether it has one, so this is our choice.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

# The temporal code counts time in quarter seconds (the motion rate): its fastest sinusoid turns
# one radian per 0.25 s, so neighbouring motion maps get clearly different codes.
TIME_CODE_STEPS_PER_SECOND = 4.0
# Motion magnitudes are rescaled to what they would be on a map of this side (see MotionEncoder).
FLOW_REFERENCE_SIZE = 224


def reference_speeds(motion: torch.Tensor, size: int) -> torch.Tensor:
    """Farneback speeds on a map of side ``size`` -> what they would be on a ``FLOW_REFERENCE_SIZE`` map
    (negative values, which the flow never gives, clamped to 0); same shape."""
    return motion.clamp_min(0) * (FLOW_REFERENCE_SIZE / size)


def temporal_code(n: int, fps: float, dim: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal codes of ``n`` frames sampled at ``fps``: ``[n, dim]``.

    Frame ``i`` sits at ``i / fps`` seconds, counted in ``TIME_CODE_STEPS_PER_SECOND`` steps per
    second; the code is ``[cos(p * w_j), sin(p * w_j)]`` with ``w_j = 10000 ** (-j / (dim / 2))``
    (the transformer's sinusoid, cos half first as in MusicGen's position embedding).
    """
    if dim % 2:
        raise ValueError(f"temporal code width must be even, got {dim}")
    half = dim // 2
    position = torch.arange(n, device=device, dtype=torch.float64) * (TIME_CODE_STEPS_PER_SECOND / fps)
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float64) / half)
    angle = position[:, None] * freq[None]
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1).to(dtype)


class ByteMaskDropout(nn.Module):
    """Dropout whose CPU mask is drawn as random bytes: the same job as ``nn.Dropout`` at a quarter of its cost.

    torch's CPU ``bernoulli_`` draws one generator value per element (measured: 48 ms for a
    ``[128, 49, 512]`` activation on 2 cores, a quarter of a tiny training step, most of it in the
    encoders' feed-forward layers); one 64-bit draw gives 7 uniform bytes here (12 ms). The drop
    probability is therefore ``round(p * 256) / 256`` (0.1 -> 0.1016) and kept values are scaled by
    its inverse, so the expectation is unchanged. Masks come from torch's global generator (seeded
    and checkpointed as usual). On other devices, and in eval mode, it is ``F.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 256)   # a byte below it drops its element

    def extra_repr(self) -> str:
        return f"p={self.p} (drops {self.threshold}/256)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any shape -> the same shape."""
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        # int64 random_() is uniform on [0, 2**63): its most significant byte has only 7 random bits.
        words = torch.empty(-(-n // 7), dtype=torch.int64).random_()
        uniform = slice(0, 7) if sys.byteorder == "little" else slice(1, 8)
        random_bytes = words.view(torch.uint8).view(-1, 8)[:, uniform].reshape(-1)[:n].view(x.shape)
        return torch.where(random_bytes >= self.threshold, x * (256 / (256 - self.threshold)), 0.0)


def transformer_encoder(dim: int, layers: int, heads: int, ffn: int, dropout: float) -> nn.TransformerEncoder:
    """A pre-norm transformer encoder (GELU, batch first) with a final LayerNorm: ``[B, L, dim] -> [B, L, dim]``.

    Its activations' dropouts are :class:`ByteMaskDropout` (no parameters: the state dict is
    ``nn.TransformerEncoder``'s); the attention weights' dropout stays inside ``nn.MultiheadAttention``.
    """
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} heads")
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ffn, dropout=dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    layer.dropout, layer.dropout1, layer.dropout2 = (ByteMaskDropout(dropout) for _ in range(3))
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class VisualEncoder(nn.Module):
    """CLIP tokens of each frame -> one embedding per frame (paper 3.1).

    LayerNorm of the frozen CLIP tokens (``last_hidden_state`` is taken before CLIP's post-layernorm,
    so a few of its channels are large), a linear map to ``dim``, learnable spatial position
    embeddings over the ``n_tokens`` tokens, a transformer over the tokens *within* each frame
    (the frames are folded into the batch), CLS pooling (token 0), then the temporal code.

    Args:
        in_dim: CLIP width (768 for ViT-B/32).
        n_tokens: tokens per frame (50 = CLS + 7x7 patches).
        dim: output width ``D``.
        layers, heads, ffn: the transformer's depth, heads and feed-forward width.
        dropout: dropout inside the transformer.
        fps: frames per second of the input (``features.visual.fps``; 2 in the paper), for the temporal code.
    """

    def __init__(self, in_dim: int = 768, n_tokens: int = 50, dim: int = 768, layers: int = 2, heads: int = 12,
                 ffn: int | None = None, dropout: float = 0.1, *, fps: float):
        super().__init__()
        self.in_dim, self.n_tokens, self.dim, self.fps = in_dim, n_tokens, dim, fps
        self.input_norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, dim)
        self.spatial = nn.Parameter(torch.empty(n_tokens, dim))
        nn.init.trunc_normal_(self.spatial, std=0.02)
        self.transformer = transformer_encoder(dim, layers, heads, ffn or 4 * dim, dropout)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """``[B, N_v, Q, in_dim]`` CLIP tokens (any float dtype) -> ``[B, N_v, D]``."""
        if visual.ndim != 4 or visual.shape[2:] != (self.n_tokens, self.in_dim):
            raise ValueError(f"visual must be [B, N_v, {self.n_tokens}, {self.in_dim}], got {tuple(visual.shape)}")
        b, n = visual.shape[:2]
        x = visual.reshape(b * n, self.n_tokens, self.in_dim).to(self.proj.weight.dtype)
        x = self.proj(self.input_norm(x)) + self.spatial
        cls = self.transformer(x)[:, 0].reshape(b, n, self.dim)
        return cls + temporal_code(n, self.fps, self.dim, device=cls.device, dtype=cls.dtype)


class MotionEncoder(nn.Module):
    """Optical-flow magnitude maps -> one embedding per map (paper 3.2).

    Input normalisation: ``log1p(m * 224 / S)``. The maps are Farneback speeds in pixels of the
    ``S x S`` resized frame per frame interval; multiplying by ``224 / S`` states them in pixels of a
    224-pixel frame, so the same motion gives the same input whatever ``features.motion.size`` is. The
    speeds are heavy-tailed (mostly below a pixel, tens of pixels for fast pans and at scene cuts,
    where the flow is meaningless); ``log1p`` compresses that tail without clipping it, keeps a
    still pixel at 0 and stays monotone, so the patch embedding sees values in about [0, 4].

    Then a learnable non-overlapping patch embedding (a 1-channel convolution, kernel = stride =
    ``patch``), learnable spatial position embeddings, a transformer over the ``(S / patch) ** 2``
    patches of each map, mean pooling over the patches, then the temporal code.

    Args:
        image_size: map side ``S`` (``features.motion.size``); must be a multiple of ``patch``.
        patch: patch side in pixels.
        dim, layers, heads, ffn, dropout: width and transformer shape.
        fps: maps per second of the input (``features.motion.fps``; 4 in the paper), for the temporal code.
    """

    def __init__(self, image_size: int, patch: int = 32, dim: int = 768, layers: int = 2, heads: int = 12,
                 ffn: int | None = None, dropout: float = 0.1, *, fps: float):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"motion map size {image_size} is not a multiple of the patch size {patch}")
        self.image_size, self.patch, self.dim, self.fps = image_size, patch, dim, fps
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.spatial = nn.Parameter(torch.empty(self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.spatial, std=0.02)
        self.transformer = transformer_encoder(dim, layers, heads, ffn or 4 * dim, dropout)

    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        """Speeds in pixels per frame interval -> ``log1p(speed * 224 / S)`` (same shape)."""
        return torch.log1p(reference_speeds(motion, self.image_size))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """``[B, N_m, S, S]`` flow magnitudes -> ``[B, N_m, D]``."""
        size = (self.image_size, self.image_size)
        if motion.ndim != 4 or motion.shape[2:] != size:
            raise ValueError(f"motion must be [B, N_m, {self.image_size}, {self.image_size}], "
                             f"got {tuple(motion.shape)}")
        b, n = motion.shape[:2]
        x = self.normalize(motion.reshape(b * n, 1, *size).to(self.patch_embed.weight.dtype))
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B * N_m, grid * grid, D]
        x = self.transformer(x + self.spatial).mean(dim=1).reshape(b, n, self.dim)
        return x + temporal_code(n, self.fps, self.dim, device=x.device, dtype=x.dtype)


class CrossAttentionFusion(nn.Module):
    """Visual queries attend over motion keys/values; residual + LayerNorm (paper 3.3).

    ``o_i = LayerNorm(v_i + MHA(v_i, f, f))``: each frame keeps its own content and takes motion
    from the whole motion sequence (no mask: any visual frame may look at any motion map).

    Args:
        dim: visual width (queries and output).
        heads: attention heads.
        kv_dim: motion width (default ``dim``).
        dropout: on the attention weights and its output.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True,
                                          kdim=kv_dim or dim, vdim=kv_dim or dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, visual: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """``visual [B, N_v, D]``, ``motion [B, N_m, D_m]`` -> ``o [B, N_v, D]``."""
        if visual.shape[0] != motion.shape[0]:
            raise ValueError(f"visual and motion batch sizes differ: {visual.shape[0]} vs {motion.shape[0]}")
        fused, _ = self.attn(visual, motion, motion, need_weights=False)
        return self.norm(visual + self.dropout(fused))


def code_grid(steps: int, fps: float, rate: float, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which feature frame each of ``steps`` code frames takes, and its phase inside that frame.

    Code frame ``t`` sits at ``t / rate`` seconds and takes frame ``j = floor(t * fps / rate)``:
    a feature at time ``j / fps`` reaches exactly the code times in ``[j / fps, (j + 1) / fps)``.
    Its phase is ``t`` minus the first code frame of ``j`` (0 .. ceil(rate / fps) - 1).

    Returns:
        ``(frame long [steps], phase long [steps])``.
    """
    t = torch.arange(steps, device=device, dtype=torch.float64)
    frame = torch.floor(t * fps / rate + 1e-9)
    first = torch.ceil(frame * rate / fps - 1e-9)
    return frame.long(), (t - first).long()


# The onset channel's slots: the instant of a change from 2 code frames before a code frame's start
# to 2 after it, in half code frames (see AlignedCondition).
ONSET_HALF_FRAMES_BEFORE = 4
ONSET_HALF_FRAMES_AHEAD = 4
ONSET_SLOTS = ONSET_HALF_FRAMES_BEFORE + ONSET_HALF_FRAMES_AHEAD


def onset_slots(frames: int, steps: int, fps: float, rate: float, device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which code frames see the instant of each feature frame, and where it lies from their start.

    Feature frame ``j`` sits at ``j / fps`` s = ``h = floor(2 * j * rate / fps)`` half code frames;
    code frame ``t`` sees it when ``d = h - 2 t`` lies in ``[-ONSET_HALF_FRAMES_BEFORE,
    ONSET_HALF_FRAMES_AHEAD)``, in slot ``d + ONSET_HALF_FRAMES_BEFORE``: the two frames after the
    instant, the frame holding it (``d`` 0 at its start, 1 in its second half) and the frame before.
    Frame 0 has no change before it and is left out.

    Returns:
        ``(source, slot, target)``, long ``[pairs]`` each: feature frame, slot, code frame.
    """
    j = torch.arange(1, frames, device=device)
    half = torch.floor(2 * j.double() * rate / fps + 1e-9).long()
    offsets = torch.arange(-ONSET_HALF_FRAMES_BEFORE, ONSET_HALF_FRAMES_AHEAD, device=device)
    source, slot = torch.meshgrid(j, offsets + ONSET_HALF_FRAMES_BEFORE, indexing="ij")
    twice_t = half[:, None] - offsets[None]       # 2 t for the pairs that exist
    keep = (twice_t % 2 == 0) & (twice_t >= 0) & (twice_t < 2 * steps)
    return source[keep], slot[keep], twice_t[keep] // 2


# The motion energy (see motion_energy): the speed quantile it takes besides the mean, the floor that
# keeps a still video's ratios finite (pixels per frame interval at FLOW_REFERENCE_SIZE), and the gain
# of its onset term. The term has few weights, and Adam moves each by about the learning rate per
# step: at gain 1 the 300-step embedded default learns it slowly (issue 13's notes: event_gain 0.48
# at gain 1, 0.73 at 3, 0.92 at 10, where the held-out CE of the motion-only set was worse again).
MOTION_ENERGY_QUANTILE = 0.99
MOTION_ENERGY_FLOOR = 1e-3
MOTION_ENERGY_GAIN = 3.0
MOTION_ENERGY_STATS = 2


def motion_energy(motion: torch.Tensor) -> torch.Tensor:
    """How much moves in each flow map, against the segment's median: ``[B, N_m, S, S] -> [B, N_m, 2]``.

    Two statistics of the speeds (rescaled to a ``FLOW_REFERENCE_SIZE`` map): the mean and the
    ``MOTION_ENERGY_QUANTILE`` quantile (a burst of a few small objects barely moves the mean), each
    as ``log((x_j + floor) / (median over the segment's maps + floor))``: 0 for a map like most,
    > 0 for a burst. Fixed, not learned, and free of the frame's size and of the video's usual speed.
    """
    speeds = reference_speeds(motion.float(), motion.shape[-1]).flatten(2)                        # [B, N_m, S*S]
    rank = max(1, math.ceil(MOTION_ENERGY_QUANTILE * speeds.shape[-1]))
    # The rank-th smallest is the smallest of the top (n - rank + 1): the same value, and topk of the
    # top 1% took a third of kthvalue's time (kthvalue was the training step's costliest op on an AVX2 CPU).
    quantile = speeds.topk(speeds.shape[-1] - rank + 1, dim=-1, sorted=False).values.min(-1).values
    stats = torch.stack([speeds.mean(-1), quantile], dim=-1)                                      # [B, N_m, 2]
    typical = stats.median(dim=1, keepdim=True).values
    return torch.log((stats + MOTION_ENERGY_FLOOR) / (typical + MOTION_ENERGY_FLOOR))


class AlignedCondition(nn.Module):
    """Per-time video features on the code grid, added to the decoder's input embeddings (beyond the paper).

    The paper's decoder sees the video only through cross-attention over ``Z``, at 2 fps: *when*
    something happens reaches it in 0.5 s slots at best. Here each code frame ``t`` gets, like
    MMAudio's frame-aligned sync features, the features of the instant it describes (see
    :func:`code_grid`): the visual embedding ``v_i`` and the motion embedding ``f_j`` of its frames,
    each projected to the decoder width ``M``, plus

    - the motion *change* ``f_j - f_(j-1)`` (0 for the first map), projected: what marks an event,
      where the level ``f_j`` also carries the steady drift;
    - a learned code of ``t``'s phase inside its motion map's frame (0 .. 12 at 4 fps / 50 Hz): a map
      repeated over ~12 code frames does not say at which of them the change starts, the phase does;
    - the *onset* channel: the change ``f_j - f_(j-1)`` again, at the code frames around the instant
      ``j / fps`` where it happens, projected by a matrix of its own for each offset of that instant
      from the frame's start, in half code frames (:func:`onset_slots`, ``ONSET_SLOTS``). At
      4 fps and 50 Hz every other map starts mid code frame (``12.5 j``): a frame-start rule puts the
      change one frame late there, and an accent starting mid-frame already changes that frame's
      codes. The slots run from the frame before the instant (the codec's encoder looks a little
      ahead, so the frame before an accent already shows it) to two frames after it;
    - with ``motion_energy``, the *energy* onset term: :func:`motion_energy` of the flow maps
      themselves (fixed statistics, not the learned embedding) on the same slots, through one
      vector per slot and statistic, times ``MOTION_ENERGY_GAIN``. It says when and how much
      moved, never which event, so it cannot key a training accent's own sound (what the rank cut
      below guards against in the learned terms), and it tells the onset before the motion
      encoder has learnt to (issue 13's notes, seed 0: event_gain 0.24 -> 0.73 on v2m-synth).

    The model adds the sum ``A [B, T, M]`` at two places: to the decoder's input embeddings and,
    through the square map :attr:`output` (no bias), to its last hidden state, right before the
    codebook heads. The input route lets the decoder combine the video with the audio so far; the
    output route puts "an accent starts here" one linear map away from the logits. Measured with
    ``benchmarks/learning.py`` (seed 0, 300 steps): event_gain 0.048 nats/token with the input route
    (without the onset channel), 0.70 with both routes; on a synth variant with one crash sample per
    event, 0.18 with the input route and the onset channel, 0.61 with both routes.

    Every input projection but :attr:`motion_down`, the phase code and the onset matrices start at
    zero, so a fresh model decodes as the paper's does and the path opens as it learns (and the draws
    of the other parts' initial weights are those of a model without it); :attr:`output` starts as
    the identity.

    With ``motion_rank`` ``r > 0`` the motion enters through a learned map to ``r`` dims first
    (:attr:`motion_down`, shared by the level, change and onset terms): enough to say how much moved
    and when, too few to give every training event a key of its own. At full width the model learnt
    the random noise bursts of the training set's accents through their events' motion (training CE
    0.18 nats/token below the model without motion, held-out CE 0.07 above it: issue 13's notes).

    Args:
        visual_dim: ``D`` of ``v``.
        motion_dim: ``D_m`` of ``f``; None for a model without motion (visual only, phase over
            the visual frames).
        width: decoder width ``M``.
        visual_fps, motion_fps, rate: the feature and code rates.
        motion_rank: ``r``, the width the motion is brought to first; 0 = ``D_m`` (no such map).
        motion_energy: add the energy onset term (needs motion; ignored without).
    """

    def __init__(self, visual_dim: int, motion_dim: int | None, width: int, visual_fps: float, motion_fps: float,
                 rate: float, motion_rank: int = 0, motion_energy: bool = False):
        super().__init__()
        self.visual_fps, self.motion_fps, self.rate = visual_fps, motion_fps, rate
        motion_in = (motion_rank or motion_dim) if motion_dim else None
        self.visual = nn.Linear(visual_dim, width)
        self.motion = nn.Linear(motion_in, width) if motion_dim else None
        self.change = nn.Linear(motion_in, width) if motion_dim else None
        self.phase_fps = motion_fps if motion_dim else visual_fps
        self.phase = nn.Embedding(math.ceil(rate / self.phase_fps - 1e-9), width)
        # [slots, r, M]: one projection of the change per offset of its instant in the code frame
        self.onset = nn.Parameter(torch.empty(ONSET_SLOTS, motion_in, width)) if motion_dim else None
        # [slots, 2, M]: the energy onset term's vectors
        self.onset_energy = (nn.Parameter(torch.empty(ONSET_SLOTS, MOTION_ENERGY_STATS, width))
                             if motion_dim and motion_energy else None)
        for p in self.parameters():
            nn.init.zeros_(p)
        # random, not zero: behind the zero projections above a zero map would get no gradient
        self.motion_down = nn.Linear(motion_dim, motion_rank) if motion_dim and motion_rank else None
        # the decoder's output route (V2MModel adds output(features) to its last hidden state): identity
        # at the start, so it opens with the input route; no bias, so the null condition (zero features)
        # adds nothing there either
        self.output = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.output.weight.copy_(torch.eye(width))

    def forward(self, visual: torch.Tensor, motion: torch.Tensor | None, steps: int,
                energy: torch.Tensor | None = None) -> torch.Tensor:
        """``v [B, N_v, D]``, ``f [B, N_m, D_m]`` (or None) -> ``[B, steps, M]``, row ``t`` for code frame ``t``.

        ``energy [B, N_m, 2]``: :func:`motion_energy` of the maps ``f`` was computed from, needed
        (and only used) with the energy onset term. Code frames past the last feature frame take the last one.
        """
        frame, _ = code_grid(steps, self.visual_fps, self.rate, visual.device)
        out = self.visual(visual)[:, frame.clamp_max(visual.shape[1] - 1)]
        if self.motion is not None:
            if motion is None:
                raise ValueError("this aligned condition uses motion: pass the motion embeddings")
            if self.motion_down is not None:
                motion = self.motion_down(motion)                                  # [B, N_m, r]
            frame_m, _ = code_grid(steps, self.motion_fps, self.rate, visual.device)
            frame_m = frame_m.clamp_max(motion.shape[1] - 1)
            change = motion - torch.cat([motion[:, :1], motion[:, :-1]], dim=1)
            out = out + self.motion(motion)[:, frame_m] + self.change(change)[:, frame_m]
            source, slot, target = onset_slots(motion.shape[1], steps, self.motion_fps, self.rate, visual.device)
            onset = torch.einsum("bnd,ndm->bnm", change[:, source], self.onset[slot])   # [B, pairs, M]
            if self.onset_energy is not None:
                if energy is None or energy.shape[:2] != motion.shape[:2]:
                    raise ValueError("this aligned condition has the energy onset term: pass motion_energy of the "
                                     f"flow maps, [B, N_m, 2] with [B, N_m] = {list(motion.shape[:2])}")
                onset = onset + torch.einsum("bnd,ndm->bnm", energy[:, source].to(onset.dtype),
                                             MOTION_ENERGY_GAIN * self.onset_energy[slot])
            out = out.index_add(1, target, onset)
        _, phase = code_grid(steps, self.phase_fps, self.rate, visual.device)
        return out + self.phase(phase.clamp_max(self.phase.num_embeddings - 1))[None]
