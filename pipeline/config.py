"""Typed parameters: every section of params.yaml maps to a frozen dataclass.

A section is registered with :func:`section`; its fields carry their checks in the
field metadata (see :func:`param`). Loading checks types, ranges and choices and
rejects unknown keys with an error that names ``section.key`` and lists the known
keys, so a typo in params.yaml never silently falls back to a default.

This module imports only :mod:`pipeline.errors` from the project: everyone imports it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ruamel.yaml import YAML, YAMLError

from pipeline.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


_SECTIONS: dict[str, type] = {}


def section(name: str):
    """Register a frozen dataclass as the schema of params.yaml section ``name``."""

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        _SECTIONS[name] = cls
        return cls

    return register


def param(default: Any, *, lo: float | None = None, hi: float | None = None,
          choices: Sequence[Any] | None = None, doc: str = "") -> Any:
    """A dataclass field with validation metadata.

    Args:
        default: the value used when params.yaml leaves the key out.
        lo, hi: inclusive bounds for numbers (and for every item of a list of numbers).
        choices: the allowed values.
        doc: one line shown by ``v2m params show``.
    """
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices else None, "doc": doc}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults: dataclass fields must be immutable")
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def known_sections() -> dict[str, type]:
    """Registered section names and their dataclasses."""
    return dict(_SECTIONS)


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a params file as a mapping; a missing or malformed file is a ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        # YAML 1.2, as DVC reads and writes params.yaml: `dvc exp run -S` writes `no` unquoted,
        # which YAML 1.1 (PyYAML) would read as the boolean false.
        data = YAML(typ="safe", pure=True).load(path.read_text())
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_params(path: Path | str = DEFAULT_PARAMS_FILE,
                sections: Iterable[str] | None = None) -> dict[str, Any]:
    """Load and validate sections of a params file.

    Args:
        path: the params file.
        sections: the sections to load (a stage passes the ones it declares in dvc.yaml);
            ``None`` loads and validates every section in the file.

    Returns:
        ``{section name: frozen dataclass instance}``.

    Raises:
        ParamsError: naming ``section.key`` for an unknown key, a wrong type or a bad value.
    """
    registry = known_sections()
    raw = read_yaml(path)
    wanted = list(raw) if sections is None else list(sections)
    for name in [*raw, *wanted]:
        if name not in registry:
            raise ParamsError(_unknown(str(path), name, registry))
    # Every section is checked, not only the wanted ones: a typo or a mismatch that would stop
    # the train stage is reported by the first stage, before the expensive ones run.
    every = {name: build(cls, raw.get(name) or {}, prefix=name, source=str(path)) for name, cls in registry.items()}
    check_across_sections(every, source=str(path))
    return {name: every[name] for name in wanted}


def check_across_sections(loaded: Mapping[str, Any], source: str = "params") -> None:
    """Checks that tie keys of different sections together (``loaded``: every section)."""
    features, model = loaded.get("features"), loaded.get("model")
    if features is not None and model is not None and model.use_motion:
        patch = motion_patch(model)
        size = features.motion.size
        if size % patch:
            preset = MODEL_PRESETS[model.size]["motion_patch"]
            # the patch that keeps the preset's grid at 224 px (7 x 7) is the closest analogue
            divisors = sorted((p for p in range(4, size // 2 + 1) if size % p == 0),
                              key=lambda p: abs(p - size * preset / 224))
            hint = (f"; set model.motion_patch to a divisor of {size}, e.g. {divisors[0]} "
                    f"({size // divisors[0]}x{size // divisors[0]} patches)") if divisors else ""
            where = "model.motion_patch" if model.motion_patch else f"the {model.size} preset's; model.motion_patch: 0"
            raise ParamsError(f"{source}: features.motion.size {size} is not a multiple of the motion encoder's "
                              f"patch side {patch} px ({where}): "
                              f"the patch embedding would drop the border{hint}")


def build(cls: type, values: Any, *, prefix: str, source: str = "params") -> Any:
    """Fill dataclass ``cls`` from a mapping, checking every key, type and bound."""
    if not isinstance(values, Mapping):
        raise ParamsError(f"{source}: '{prefix}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ParamsError(_unknown(source, f"{prefix}.{key}", {f"{prefix}.{k}": None for k in fields}))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        field = fields[name]
        kwargs[name] = _convert(hints[name], value, f"{prefix}.{name}", source, field.metadata)
    try:
        return cls(**kwargs)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{source}: {prefix}: {exc}") from None


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ParamsError naming ``key`` unless ``condition``; for cross-field checks."""
    if not condition:
        raise ParamsError(f"{key}: {message}")


def _unknown(source: str, key: str, known: Mapping[str, Any]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{source}: unknown key '{key}'{hint}; known keys: {', '.join(names)}"


def _convert(hint: Any, value: Any, key: str, source: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"{source}: {key}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, source, meta)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, prefix=key, source=source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{key}[{i}]", source, meta) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where} must be a string, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ParamsError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ParamsError(f"{where} must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ParamsError(f"{where} must be <= {hi}, got {value!r}")
    return value


def describe(cls: type, prefix: str) -> list[tuple[str, Any, str]]:
    """``(section.key, default, doc)`` rows for a section, nested sections flattened."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            rows.extend(describe(type(default), key))
        else:
            rows.append((key, default, f.metadata.get("doc", "")))
    return rows


def as_dict(obj: Any) -> dict[str, Any]:
    """A section as plain YAML-ready data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


# ---------------------------------------------------------------------------
# The sections. Each docstring says which stage reads it.


@section("sample")
@dataclasses.dataclass(frozen=True)
class SampleParams:
    """The synthetic sample set v2m-synth (stage ``sample``, ``v2m synth``)."""

    n_clips: int = param(24, lo=1, hi=100_000, doc="number of clips rendered")
    seconds: float = param(10.0, lo=2.0, hi=600.0, doc="length of each clip")
    seed: int = param(0, lo=0, hi=2**31 - 1, doc="same seed, same files")
    motion_only: bool = param(False, doc="tempo visible only through object motion (no scene cuts)")
    fps: int = param(12, lo=4, hi=60, doc="video frame rate")
    width: int = param(160, lo=32, hi=3840, doc="video width in pixels (even)")
    height: int = param(120, lo=32, hi=2160, doc="video height in pixels (even)")
    sample_rate: int = param(44100, choices=(32000, 44100, 48000), doc="audio rate of mp4 and stems")
    bpm_min: float = param(70.0, lo=30.0, hi=240.0, doc="slowest tempo drawn")
    bpm_max: float = param(150.0, lo=30.0, hi=240.0, doc="fastest tempo drawn")
    vocal_gain: float = param(0.5, lo=0.0, hi=2.0, doc="vocal stand-in level relative to the accompaniment")
    events_per_second: float = param(1.0, lo=0.0, hi=4.0,
                                     doc="motion events (shapes jump + a percussive accent) per second; 0 = none")
    event_min_gap: float = param(0.5, lo=0.0, hi=60.0, doc="least time between two events, seconds")
    event_grid: float = param(0.25, lo=0.02, hi=10.0,
                              doc="events fall on multiples of this (0.25 s: the flow interval at 4 fps)")

    def __post_init__(self) -> None:
        check(self.events_per_second == 0 or self.event_min_gap < 1.0 / self.events_per_second,
              "sample.event_min_gap", f"must be below 1 / sample.events_per_second "
              f"({self.event_min_gap} >= {1.0 / max(self.events_per_second, 1e-9):g}): that rate cannot be drawn")
        check(self.width % 2 == 0, "sample.width", f"must be even for H.264 4:2:0, got {self.width}")
        check(self.height % 2 == 0, "sample.height", f"must be even for H.264 4:2:0, got {self.height}")
        check(self.bpm_min <= self.bpm_max, "sample.bpm_min",
              f"must be <= sample.bpm_max ({self.bpm_min} > {self.bpm_max})")


@section("data")
@dataclasses.dataclass(frozen=True)
class DataParams:
    """Which manifest shards the pipeline processes (every per-shard stage runs `foreach` over them)."""

    shards: tuple[str, ...] = param(("s0000",), doc="shard names in data/manifests, e.g. s0000")
    exclude_file: str = param("data/manifests/exclude.txt", doc="video ids never to add (one per line)")

    def __post_init__(self) -> None:
        for name in self.shards:
            check(re.fullmatch(r"s\d{4}", name) is not None, "data.shards",
                  f"shard names look like s0001, got {name!r}")
        check(len(set(self.shards)) == len(self.shards), "data.shards", "lists a shard twice")


@section("download")
@dataclasses.dataclass(frozen=True)
class DownloadParams:
    """yt-dlp downloads through rotating proxies (stage `download`, `v2m download`)."""

    proxies: str = param("", doc="proxy list file, one URL per line (http/https/socks5); empty = direct")
    margin_seconds: float = param(5.0, lo=0.0, hi=60.0, doc="fetched beyond clip.seconds")
    format: str = param("bv*[height<=480]+ba/b[height<=480]/bv*+ba/b", doc="yt-dlp format selector")
    max_attempts: int = param(6, lo=1, hi=100, doc="tries per video across proxies")
    backoff_base: float = param(1.0, lo=0.0, hi=600.0, doc="seconds; doubles per failed attempt")
    backoff_max: float = param(60.0, lo=0.0, hi=3600.0, doc="cap on one backoff wait")
    proxy_cooldown: float = param(120.0, lo=0.0, hi=86400.0, doc="seconds a failed proxy rests (doubles per failure)")
    sleep_min: float = param(0.0, lo=0.0, hi=3600.0, doc="random pause between downloads, lower bound")
    sleep_max: float = param(0.0, lo=0.0, hi=3600.0, doc="random pause between downloads, upper bound")
    sleep_requests: float = param(0.0, lo=0.0, hi=60.0, doc="pause between yt-dlp's requests")
    rate_limit: str = param("", doc="bytes/s per download, e.g. 2M; empty = unlimited")
    user_agent: str = param("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                            "Chrome/131.0.0.0 Safari/537.36", doc="HTTP User-Agent")
    concurrency: int = param(2, lo=1, hi=64, doc="videos downloaded at once")
    socket_timeout: float = param(20.0, lo=0.5, hi=600.0, doc="seconds before a silent connection fails")
    scratch: str = param(".cache/v2m/downloads", doc="resumable download cache, outside the DVC outputs")
    file_roots: tuple[str, ...] = param(("data/sample",), doc="folders that file: URLs (and other local paths) "
                                                              "may point into, symlinks followed; empty = none")

    def __post_init__(self) -> None:
        check(self.sleep_min <= self.sleep_max, "download.sleep_min",
              f"must be <= download.sleep_max ({self.sleep_min} > {self.sleep_max})")
        check(re.fullmatch(r"(\d+(\.\d+)?[KMG]?)?", self.rate_limit) is not None, "download.rate_limit",
              f"must look like 500K, 2M or 2000000, got {self.rate_limit!r}")
        for root in self.file_roots:
            check(root.strip() != "", "download.file_roots", "lists an empty folder name")


@section("clip")
@dataclasses.dataclass(frozen=True)
class ClipParams:
    """Exact first-N-seconds clips in standard formats (stage `clip`)."""

    seconds: float = param(8.0, lo=1.0, hi=600.0, doc="clip length: the first N seconds, exactly")
    min_seconds: float = param(8.0, lo=0.5, hi=600.0, doc="shorter inputs get a status row, not a clip")
    fps: int = param(12, lo=4, hi=60, doc="video frame rate of the clips (a multiple of 4 keeps 2 and 4 fps exact)")
    max_height: int = param(360, lo=32, hi=2160, doc="clips taller than this are scaled down")
    target_rate: int = param(32000, choices=(32000,), doc="mono rate of the target audio (EnCodec 32 kHz)")
    separation_rate: int = param(44100, choices=(44100,), doc="stereo rate of Demucs's input")

    def __post_init__(self) -> None:
        check(self.min_seconds <= self.seconds, "clip.min_seconds",
              f"must be <= clip.seconds ({self.min_seconds} > {self.seconds})")


@dataclasses.dataclass(frozen=True)
class EmbeddedSeparatorParams:
    """The embedded default's separator (stage `separator_init`): a small HTDemucs, random init,
    briefly trained on v2m-synth's train-split stems, saved in Demucs's folder format."""

    channels: int = param(8, lo=4, hi=96, doc="first-layer channels (htdemucs: 48)")
    depth: int = param(2, lo=1, hi=6, doc="encoder/decoder layers (htdemucs: 4)")
    transformer_layers: int = param(1, lo=0, hi=10, doc="cross-domain transformer layers (htdemucs: 5)")
    seed: int = param(0, lo=0, doc="seed of the random initial weights and of the training batches")
    train_steps: int = param(24, lo=0, hi=100_000, doc="Adam steps on the synthetic stems (0 = random weights)")
    train_batch: int = param(4, lo=1, hi=256, doc="segments per step")
    train_segment_seconds: float = param(2.0, lo=0.5, hi=7.8, doc="segment length")
    train_lr: float = param(3e-3, lo=0.0, hi=1.0, doc="Adam learning rate")


@section("separate")
@dataclasses.dataclass(frozen=True)
class SeparateParams:
    """Demucs vocal removal (stage `separate`): keep drums + bass + other."""

    repo: str = param("models/demucs-v2m", doc="local Demucs model folder (*.th + NAME.yaml)")
    model: str = param("v2m-synth", doc="model name in that folder; htdemucs for the real weights")
    segment: float = param(0.0, lo=0.0, hi=60.0, doc="seconds per chunk; 0 = the model's own")
    overlap: float = param(0.25, lo=0.0, hi=0.9, doc="overlap between chunks")
    shifts: int = param(0, lo=0, hi=20, doc="random-shift averaging passes (0 = none)")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto = CUDA when present")
    embedded: EmbeddedSeparatorParams = param(EmbeddedSeparatorParams(), doc="the embedded default's model")


@dataclasses.dataclass(frozen=True)
class VisualFeatureParams:
    """CLIP ViT-B/32 patch tokens (stage `visual`)."""

    backend: str = param("transformers", choices=("transformers", "open_clip"),
                         doc="transformers: a CLIPVisionModel; open_clip: open_clip's ViT-B-32 (same tokens)")
    model: str = param("models/visual-random", doc="transformers: a CLIPVisionModel folder or cached hub id; "
                                                   "open_clip: a ViT-B-32 weights file, or a folder/hub id holding one")
    fps: int = param(2, lo=1, hi=30, doc="frames per second encoded")
    batch_size: int = param(32, lo=1, hi=4096, doc="frames per CLIP forward (across clips)")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto = CUDA when present")
    dtype: str = param("float32", choices=("float32", "bfloat16", "float16"), doc="compute precision")
    init_seed: int = param(0, lo=0, doc="seed of the embedded default's random CLIP (stage visual_init)")
    init_layers: int = param(12, lo=1, hi=12, doc="transformer layers of the embedded default's random CLIP "
                                                  "(ViT-B/32 has 12; fewer = faster random tokens, same shape)")


@dataclasses.dataclass(frozen=True)
class MotionFeatureParams:
    """Farneback optical-flow magnitude maps (stage `motion`); the OpenCV parameters are Farneback's."""

    fps: int = param(4, lo=1, hi=30, doc="grayscale frames per second")
    size: int = param(224, lo=16, hi=1024, doc="frames are resized to size x size before the flow")
    pyr_scale: float = param(0.5, lo=0.1, hi=0.9, doc="pyramid scale")
    levels: int = param(3, lo=1, hi=10, doc="pyramid levels")
    winsize: int = param(15, lo=3, hi=101, doc="averaging window")
    iterations: int = param(3, lo=1, hi=50, doc="iterations per level")
    poly_n: int = param(5, choices=(5, 7), doc="pixel neighbourhood of the polynomial expansion")
    poly_sigma: float = param(1.2, lo=0.5, hi=3.0, doc="Gaussian sigma of the polynomial expansion")


@dataclasses.dataclass(frozen=True)
class CodecCalibrationParams:
    """Residual k-means of a random codec's RVQ codebooks (stage `codec_init`, embedded default only)."""

    shard: str = param("s0000", doc="shard whose train-split separated audio calibrates the codebooks")
    init_frames: int = param(2048, lo=64, hi=1_000_000, doc="sampled encoder frames that seed each codebook")
    iterations: int = param(8, lo=0, hi=100, doc="Lloyd iterations per codebook")
    min_frames_per_entry: int = param(4, lo=1, hi=1000, doc="fit at most frames/N entries (fewer frames: noise codes)")
    seed: int = param(0, lo=0, doc="seed of the random codec weights and the sampling")
    max_clips: int = param(0, lo=0, hi=10_000_000, doc="calibrate on at most this many train clips (0 = all)")
    num_filters: int = param(64, lo=4, hi=512, doc="the random stand-in's EnCodec num_filters (32 kHz model: 64; "
                                                   "the cost goes with its square; the same 4 x 2048 codes at "
                                                   "50 Hz); real weights ignore it")


@dataclasses.dataclass(frozen=True)
class CodesFeatureParams:
    """EnCodec 32 kHz tokens of the separated accompaniment (stage `codes`)."""

    codec: str = param("models/encodec-calibrated", doc="local EncodecModel folder (or musicgen's audio_encoder)")
    bandwidth: float = param(2.2, lo=0.5, hi=24.0, doc="kbps; 2.2 = 4 codebooks at 50 Hz (MusicGen)")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto = CUDA when present")
    calibration: CodecCalibrationParams = param(CodecCalibrationParams(), doc="embedded default's codec")


@section("features")
@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    """The feature cache: data/features/{visual,motion,codes}/<shard>.parquet."""

    visual: VisualFeatureParams = param(VisualFeatureParams(), doc="CLIP tokens (the CLIP model's side: `visual`)")
    motion: MotionFeatureParams = param(MotionFeatureParams(), doc="optical flow magnitude")
    codes: CodesFeatureParams = param(CodesFeatureParams(), doc="EnCodec codes")


@dataclasses.dataclass(frozen=True)
class ModelActorParams:
    """An actor pool for one model (engine ray): each actor loads the model once and takes batches of clips."""

    actors: int = param(1, lo=1, hi=4096, doc="actors in the pool (each holds one copy of the model)")
    gpus: float = param(0.0, lo=0.0, hi=64.0, doc="GPUs per actor (0 = CPU; a fraction shares a GPU)")
    cpus: float = param(1.0, lo=0.0, hi=256.0, doc="CPUs per actor")
    batch_size: int = param(4, lo=1, hi=4096, doc="clips per actor call")


@section("compute")
@dataclasses.dataclass(frozen=True)
class ComputeParams:
    """Where the per-shard stages (download, clip, separate, visual, motion, codes) do their per-video work.

    ``local``: in the stage's own process. ``ray``: CPU tasks and model actor pools on a Ray cluster;
    the stage (the driver) still reads every input and writes every output, and inputs and outputs
    travel as bytes through Ray's object store, so workers need no shared data folder.
    """

    engine: str = param("local", choices=("local", "ray"), doc="local = this process; ray = a Ray cluster")
    ray_address: str = param("", doc="'' = start Ray on this machine; 'auto', HOST:PORT or ray://HOST:PORT = join it")
    download_cpus: float = param(0.25, lo=0.0, hi=64.0, doc="CPUs per download task (I/O bound)")
    clip_cpus: float = param(1.0, lo=0.0, hi=64.0, doc="CPUs per clip task (ffmpeg)")
    motion_cpus: float = param(1.0, lo=0.0, hi=64.0, doc="CPUs per optical-flow task (stage motion)")
    separate: ModelActorParams = param(ModelActorParams(), doc="Demucs actor pool")
    visual: ModelActorParams = param(ModelActorParams(), doc="CLIP actor pool (stage visual)")
    codec: ModelActorParams = param(ModelActorParams(), doc="EnCodec actor pool")
    max_retries: int = param(3, lo=0, hi=100, doc="retries of a task whose worker died, then a failed status row")
    scratch: str = param(".cache/v2m/engine", doc="per-video results of an unfinished ray run (resume), outside DVC outputs")

    def __post_init__(self) -> None:
        address = self.ray_address
        check(address in ("", "auto") or re.fullmatch(r"(ray://)?[\w.\-]+:\d{1,5}", address) is not None,
              "compute.ray_address", f"must be '', 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")


@section("split")
@dataclasses.dataclass(frozen=True)
class SplitParams:
    """Train/val/test membership by a hash of the video id: stable when shards are added."""

    val_fraction: float = param(0.15, lo=0.0, hi=0.5, doc="share of videos held out for validation")
    test_fraction: float = param(0.15, lo=0.0, hi=0.5, doc="share of videos held out for testing")
    salt: str = param("v2m", doc="changes every assignment when changed")


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        visual_dim=128, visual_layers=1, visual_heads=4,
        motion_dim=128, motion_layers=1, motion_heads=4, motion_patch=32, fusion_heads=4,
        decoder_dim=128, decoder_layers=3, decoder_heads=4, decoder_ffn=512,
    ),
    "small": dict(
        visual_dim=768, visual_layers=2, visual_heads=12,
        motion_dim=768, motion_layers=2, motion_heads=12, motion_patch=32, fusion_heads=12,
        decoder_dim=1024, decoder_layers=24, decoder_heads=16, decoder_ffn=4096,
    ),
}
"""The sizes of ``model.size``'s presets, as :class:`pipeline.model.v2m.V2MConfig` keywords (the
builder applies them; they live here so params checks need no torch)."""


@section("model")
@dataclasses.dataclass(frozen=True)
class ModelParams:
    """The video-to-music model (paper section 3); sizes come from a preset (see pipeline/model/builder.py)."""

    size: str = param("tiny", choices=tuple(MODEL_PRESETS), doc="tiny: CPU-sized; small: musicgen-small decoder")
    use_motion: bool = param(True, doc="false = the paper's w/o-motion ablation (visual branch only)")
    tokens_per_frame: int = param(2, lo=1, hi=16, doc="P: conditioning tokens per visual frame")
    condition_dropout: float = param(0.1, lo=0.0, hi=1.0, doc="share of training segments with the video hidden (CFG)")
    aligned_condition: bool = param(False, doc="also add the per-time video features to the decoder's input "
                                               "embeddings on the code grid (beyond the paper); false = the paper")
    aligned_motion_rank: int = param(0, lo=0, hi=4096, doc="with aligned_condition: the width the motion is "
                                     "brought to before it enters the aligned features (0 = full width)")
    aligned_motion_energy: bool = param(False, doc="with aligned_condition and motion: also tell the decoder "
                                        "how much moves in each flow map (fixed statistics, relative to the "
                                        "segment) on the code frames around its instant")
    motion_patch: int = param(0, lo=0, hi=1024, doc="the motion encoder's patch side in pixels; 0 = the "
                              "preset's (32: 7 x 7 patches of a 224 px flow map); features.motion.size must be a "
                              "multiple (e.g. 16 for a 112 px flow)")
    pretrained_decoder: str = param("", doc="facebook/musicgen-small folder to load the decoder from; empty = random")
    train_decoder: bool = param(True, doc="false freezes the MusicGen decoder (the codec and CLIP are always frozen)")
    seed: int = param(0, lo=0, doc="seed of the initial weights")


@section("train")
@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Training with Accelerate (stage `train`); defaults are the paper's (section 5.1)."""

    segment_seconds: float = param(4.0, lo=0.5, hi=60.0, doc="length of each training segment")
    batch_size: int = param(64, lo=1, hi=4096, doc="segments per optimizer step (before accumulation)")
    grad_accum: int = param(1, lo=1, hi=1024, doc="micro-batches per optimizer step")
    max_steps: int = param(4160, lo=1, hi=10_000_000, doc="optimizer steps (paper: 10 epochs x 416)")
    lr: float = param(3.5e-5, lo=0.0, hi=1.0, doc="peak learning rate (AdamW)")
    betas: tuple[float, ...] = param((0.9, 0.95), lo=0.0, hi=0.99999, doc="AdamW betas")
    weight_decay: float = param(0.1, lo=0.0, hi=1.0, doc="AdamW weight decay")
    warmup_steps: int = param(4000, lo=0, hi=10_000_000, doc="linear warmup, then cosine decay to zero")
    clip_grad: float = param(1.0, lo=0.0, hi=1000.0, doc="gradient norm clipping (0 = off)")
    mixed_precision: str = param("no", choices=("no", "fp16", "bf16"), doc="Accelerate mixed precision")
    ema_decay: float = param(0.99, lo=0.0, hi=0.999999, doc="EMA of the weights (bias-corrected)")
    eval_every: int = param(100, lo=1, hi=10_000_000, doc="steps between validations (EMA weights)")
    log_every: int = param(10, lo=1, hi=10_000_000, doc="steps between DVCLive log calls")
    checkpoint_every: int = param(200, lo=1, hi=10_000_000, doc="steps between save_state checkpoints")
    num_workers: int = param(0, lo=0, hi=64, doc="DataLoader worker processes")
    seed: int = param(0, lo=0, doc="seed of the data order and dropout")

    def __post_init__(self) -> None:
        check(len(self.betas) == 2, "train.betas", f"must be two numbers, got {list(self.betas)}")


@section("generate")
@dataclasses.dataclass(frozen=True)
class GenerateParams:
    """Music for videos (stage `generate` and `v2m generate`): sampling and windowing.

    A video longer than ``window_seconds`` is scored window by window: each window is conditioned on
    its own frames and prompted with the last ``prompt_seconds`` of the previous window's codes, so
    the piece continues instead of restarting.
    """

    model: str = param("models/v2m", doc="exported model folder (config.json + model.safetensors + features.json)")
    cfg: float = param(3.0, lo=1.0, hi=20.0, doc="classifier-free guidance coefficient (1 = none)")
    top_k: int = param(250, lo=0, hi=1_000_000, doc="sample among the k likeliest codes (0 = all)")
    temperature: float = param(1.0, lo=0.01, hi=10.0, doc="softmax temperature")
    seed: int = param(0, lo=0, doc="sampling seed (same seed, same music)")
    window_seconds: float = param(0.0, lo=0.0, hi=600.0,
                                  doc="seconds per generation window; 0 = the model's training segment length")
    prompt_seconds: float = param(1.0, lo=0.0, hi=300.0, doc="tail of the previous window that prompts the next")
    loudness_lufs: float = param(-14.0, lo=-70.0, hi=0.0, doc="integrated loudness target (ITU-R BS.1770)")
    peak_dbfs: float = param(-1.0, lo=-40.0, hi=0.0, doc="sample peak ceiling after loudness normalisation")
    split: str = param("test", choices=("train", "val", "test"), doc="which split the stage scores")
    max_clips: int = param(0, lo=0, hi=10_000_000, doc="stage only: at most this many clips (0 = all)")
    batch_clips: int = param(8, lo=1, hi=4096, doc="stage only: clips of equal length sampled as one batch (its KV "
                                                   "cache grows with it: musicgen-small, 30 s windows, 8 clips "
                                                   "with guidance hold about 5 GB)")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto = CUDA when present")
    sampling_threads: int = param(0, lo=0, hi=1024,
                                  doc="CPU threads while sampling; 0 = auto (1 for decoders narrower than 512, "
                                      "whose per-step work is too small to split)")
    cpu_quantize: bool = param(False, doc="on CPU, int8 dynamic quantisation of the decoder's linear layers "
                                          "(faster sampling; off unless benchmarks/generation.py shows its CE within "
                                          "0.01 nats/token of float32)")
    static_kv_cache: bool = param(False, doc="preallocated KV cache while sampling (no per-step concatenation; same "
                                             "numbers up to float rounding)")


@section("evaluate")
@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """FAD / KLD / chroma cosine (../shared/docs/metrics.md; stage `evaluate` and `v2m evaluate`).

    The defaults are the published definitions (audiocraft's metrics, as VidMuse and the paper use).
    """

    vggish: str = param("", doc="VGGish state dict (torchvggish vggish-10086976.pth); empty = FAD not computed")
    fad_preset: str = param("google", choices=("google", "frechet_audio_distance"),
                            doc="VGGish front end: google = Google's FAD tool (1 s windows every 0.5 s, peak "
                                "-1 dBFS, 16-bit; published), frechet_audio_distance = that package's torchvggish "
                                "(non-overlapping 0.96 s examples, no normalisation)")
    passt: str = param("", doc="PaSST 20 s checkpoint (passt-s-f128-20sec-p16-s10-ap.474-swa.pt); empty = no KLD")
    chroma_argmax: bool = param(True, doc="one-hot chroma frames (audiocraft's default)")
    chroma_n_fft: int = param(16384, lo=256, hi=65536, doc="chroma STFT size = window")
    chroma_hop: int = param(4096, lo=64, hi=65536, doc="chroma STFT hop")
    kld_segment_seconds: float = param(20.0, lo=1.0, hi=60.0, doc="PaSST segment length (the 20 s checkpoint)")
    kld_min_seconds: float = param(0.15, lo=0.0, hi=10.0, doc="shorter tail segments are dropped")
    kld_eps: float = param(1e-6, lo=0.0, hi=0.1, doc="added to the predicted probabilities before the log")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="where VGGish and PaSST run")
    plot_clips: int = param(3, lo=0, hi=100, doc="clips shown in the chroma/spectrogram comparison plots")
    report_clips: int = param(6, lo=0, hi=1000, doc="clips whose videos the HTML report embeds")


def motion_patch(model: ModelParams) -> int:
    """The motion encoder's patch side in pixels: ``model.motion_patch``, or the preset's when 0."""
    return model.motion_patch or MODEL_PRESETS[model.size]["motion_patch"]
