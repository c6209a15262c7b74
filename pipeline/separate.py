"""Vocal removal with Demucs: keep the accompaniment (every source but vocals) as the target audio.

Models load through Demucs's own local-repo path, ``demucs.pretrained.get_model(name, repo=folder)``:
a folder of ``<sig>-<sha256[:8]>.th`` packages plus ``<name>.yaml`` bag files listing the sigs.
The real htdemucs is ``955717e8-8726e21a.th`` + ``htdemucs.yaml``; with no weights at hand,
``save_random_htdemucs`` writes a small HTDemucs of random weights in the same format, so every
code path but the weights is the real one.

Audio arrays are float32 ``[C, S]`` (channels first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np
import torch
import yaml
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model
from demucs.repo import ModelLoadingError
from demucs.states import save_with_checksum, serialize_model
from omegaconf import OmegaConf

import pyarrow as pa
from tqdm import tqdm

from pipeline.audio import RESAMPLE_QUALITY, mono_resampled
from pipeline.checkpoints import RANDOM_MARKER
from pipeline.config import ComputeParams, SeparateParams
from pipeline.device import resolve_device
from pipeline.engine import LOCAL_NODE, Lost, Work, fingerprint, in_temp_dir, journal_for, open_engine, results
from pipeline.files import atomic_path, file_sha256
from pipeline.media import MediaError, read_wav, write_wav
from pipeline.status import NODE_FIELD, OK, STATUS_FILE, failed_row, ok_ids, ok_row, status_schema, summary, write_status

log = logging.getLogger("v2m.separate")

SOURCES = ("drums", "bass", "other", "vocals")
HTDEMUCS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th"

Separator = Union[BagOfModels, HTDemucs]  # what get_model gives: a bag (name.yaml) or one model (sig)


def random_htdemucs(*, channels: int, depth: int, transformer_layers: int, seed: int,
                    samplerate: int = 44100, segment: float = 7.8):
    """A small ``demucs.htdemucs.HTDemucs`` of random weights (seeded), 4 sources, stereo.

    HTDemucs's transformer attends over every (frequency, frame) cell left at the bottom of the
    U-Net, 2 * S / stride**depth tokens for a chunk of S samples, and over S / stride**depth time
    steps: with htdemucs's stride of 4, a depth-2 model would attend over 16 times as many tokens as
    htdemucs, each way. So the stride is the power of two nearest 256 ** (1 / depth) (at least 4,
    kernel twice the stride): stride**depth stays near htdemucs's 4**4 = 256, and at depths 1, 2 and
    4 the bottom is htdemucs's own, 8 frequency bins x S / 1024 frames and S / 256 time steps.

    Args:
        channels: first-layer channels (htdemucs: 48); each layer doubles them.
        depth: encoder/decoder layers, 1 to 5 with a transformer (htdemucs: 4).
        transformer_layers: cross-domain transformer layers, 0 = none (htdemucs: 5).
        segment: seconds per chunk the model was "trained" on (htdemucs: 7.8).
    """
    width = channels * 2 ** (depth - 1)  # transformer channels
    if transformer_layers and width % 4:
        raise ValueError(f"channels * 2**(depth-1) = {width} must be a multiple of 4 for HTDemucs's "
                         f"2-D positional embedding (channels={channels}, depth={depth})")
    if transformer_layers and depth > 5:
        raise ValueError(f"depth={depth}: past depth 5 HTDemucs has no frequency axis left for its "
                         "transformer; use depth <= 5 or transformer_layers=0")
    stride = max(4, 2 ** round(8 / depth))
    kwargs = dict(
        sources=list(SOURCES), audio_channels=2, samplerate=samplerate,
        segment=Fraction(segment).limit_denominator(1000),  # Demucs stores 7.8 s as Fraction(39, 5)
        channels=channels, depth=depth, t_layers=transformer_layers,
        stride=stride, kernel_size=2 * stride, nfft=4096,
        # Heads of >= 8 channels: tiny heads only multiply the attention maps' cost.
        t_heads=next(h for h in (8, 4, 2, 1) if width % h == 0 and width // h >= 8 or h == 1),
        dconv_comp=min(8, channels),  # the residual branch has channels // dconv_comp > 0 channels
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HTDemucs(**kwargs)


def train_on_stems(model: HTDemucs, stems: list[tuple[np.ndarray, np.ndarray]], *, steps: int, batch: int,
                   segment_seconds: float, lr: float, seed: int) -> list[float]:
    """A few Adam steps teaching ``model`` to split accompaniment from vocals (L1 on both, as Demucs trains).

    Args:
        stems: ``(accompaniment, vocals)`` pairs, float32 ``[2, S]`` at ``model.samplerate``; the mix is
            their sum. The accompaniment target is the sum of every source but vocals.

    Returns:
        the loss of each step. Deterministic for a seed (segments drawn from a seeded generator).
    """
    rng = np.random.default_rng(seed)
    length = int(segment_seconds * model.samplerate)
    usable = [(a, v) for a, v in stems if a.shape[1] >= length]
    if steps and not usable:
        raise ValueError(f"no stems of at least {segment_seconds} s to train the separator on")
    vocals_index = model.sources.index("vocals")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in tqdm(range(steps), desc="separator_init: train", unit="step", leave=False):
            picks = rng.integers(len(usable), size=batch)
            starts = [int(rng.integers(0, usable[i][0].shape[1] - length + 1)) for i in picks]
            acc = torch.from_numpy(np.stack([usable[i][0][:, s:s + length] for i, s in zip(picks, starts)]))
            voc = torch.from_numpy(np.stack([usable[i][1][:, s:s + length] for i, s in zip(picks, starts)]))
            mix = acc + voc
            # Demucs's own normalisation (by the mono mix's mean and std), as at inference.
            ref = mix.mean(1, keepdim=True)
            mean, std = ref.mean((1, 2), keepdim=True), ref.std((1, 2), keepdim=True) + 1e-8
            out = model((mix - mean) / std) * std[:, None] + mean[:, None]   # [B, sources, 2, S]
            predicted_vocals = out[:, vocals_index]
            predicted_acc = out.sum(1) - predicted_vocals
            loss = (predicted_acc - acc).abs().mean() + (predicted_vocals - voc).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def save_random_htdemucs(repo: Path, name: str, *, channels: int, depth: int, transformer_layers: int,
                         seed: int, samplerate: int = 44100, segment: float = 7.8,
                         stems: list[tuple[np.ndarray, np.ndarray]] | None = None, train_steps: int = 0,
                         train_batch: int = 4, train_segment_seconds: float = 3.0, train_lr: float = 3e-3) -> Path:
    """Write a small HTDemucs (random init, optionally trained on ``stems``) as Demucs folder ``repo``.

    The folder holds ``<sig>-<sha256[:8]>.th`` (Demucs's ``serialize_model`` package, fp16 weights,
    named by ``save_with_checksum``) and ``<name>.yaml`` (``models: [<sig>]``), so
    ``demucs.pretrained.get_model(name, repo=repo)`` loads it. Replaced atomically; same arguments,
    same bytes. With ``train_steps`` > 0 the weights get that many steps of :func:`train_on_stems`;
    either way they are not htdemucs's, and the bag yaml carries the marker that makes loading warn.

    Returns:
        ``repo``.
    """
    model = random_htdemucs(channels=channels, depth=depth, transformer_layers=transformer_layers,
                            seed=seed, samplerate=samplerate, segment=segment)
    losses = []
    if train_steps:
        losses = train_on_stems(model, stems or [], steps=train_steps, batch=train_batch,
                                segment_seconds=train_segment_seconds, lr=train_lr, seed=seed)
    recipe = dict(channels=channels, depth=depth, transformer_layers=transformer_layers, seed=seed,
                  samplerate=samplerate, segment=str(model.segment), train_steps=train_steps,
                  final_loss=losses[-1] if losses else None)
    # Like a Demucs XP signature, the sig hashes the configuration: every constructor argument + seed
    # (+ the training recipe, when trained).
    _, kwargs = model._init_args_kwargs
    training = dict(steps=train_steps, batch=train_batch, segment=train_segment_seconds, lr=train_lr) if train_steps else {}
    sig = hashlib.sha256(json.dumps({**kwargs, "seed": seed, **training}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:8]
    package = serialize_model(model, OmegaConf.create({RANDOM_MARKER: True, **recipe}))
    bag = {"models": [sig], RANDOM_MARKER: True}
    with atomic_path(repo) as temp:
        temp.mkdir()
        save_with_checksum(package, temp / f"{sig}.th")
        what = f"trained {train_steps} steps on synthetic stems" if train_steps else "RANDOM weights"
        (temp / f"{name}.yaml").write_text(
            f"# Small HTDemucs, {what} (pipeline.separate.save_random_htdemucs): not htdemucs.\n"
            + yaml.safe_dump(bag, sort_keys=False))
    return Path(repo)


def save_random_from_params(params: SeparateParams, stems: list[tuple[np.ndarray, np.ndarray]] | None = None) -> Path:
    """``save_random_htdemucs`` for the ``separate`` section: ``params.repo`` / ``params.model``."""
    init = params.embedded
    return save_random_htdemucs(Path(params.repo), params.model, channels=init.channels, depth=init.depth,
                                transformer_layers=init.transformer_layers, seed=init.seed, stems=stems,
                                train_steps=init.train_steps if stems else 0, train_batch=init.train_batch,
                                train_segment_seconds=init.train_segment_seconds, train_lr=init.train_lr)


def _where_from(name: str) -> str:
    if name == "htdemucs":
        return (f"the real htdemucs is 955717e8-8726e21a.th ({HTDEMUCS_URL}) plus htdemucs.yaml "
                "(\"models: ['955717e8']\", a copy of demucs/remote/htdemucs.yaml); on a machine with internet, "
                "demucs < 4.1 get_model('htdemucs') leaves the .th in ~/.cache/torch/hub/checkpoints/")
    return ("a random-weights model is written by the separator_init stage "
            "(pipeline.separate.save_random_htdemucs); the real weights are model htdemucs")


def _check_repo(repo: Path, name: str) -> bool:
    """Raise FileNotFoundError unless ``repo`` has model ``name`` and every .th its bag lists.

    Returns:
        Whether the bag yaml marks the model as random weights.
    """
    if not repo.is_dir():
        raise FileNotFoundError(f"Demucs model folder {repo} does not exist; {_where_from(name)}")
    sigs = {path.stem.split("-")[0] for path in repo.glob("*.th")}
    if name in sigs:
        return False
    bag_file = repo / f"{name}.yaml"
    if not bag_file.is_file():
        raise FileNotFoundError(f"{bag_file} not found (no model {name!r} in {repo}); {_where_from(name)}")
    bag = yaml.safe_load(bag_file.read_text()) or {}
    for sig in bag.get("models", []):
        if sig not in sigs:
            raise FileNotFoundError(f"{bag_file} lists model {sig}, but {repo} has no {sig}-<checksum>.th; "
                                    f"{_where_from(name)}")
    return bool(bag.get(RANDOM_MARKER))


def load_separator(repo: Path, name: str, device: str = "auto") -> Separator:
    """Load model ``name`` (a bag yaml or a sig) from Demucs folder ``repo``, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder, the bag yaml or a .th it lists is missing.
        demucs.repo.ModelLoadingError: a .th whose sha256 does not match the checksum in its name.
    """
    repo = Path(repo)
    random_weights = _check_repo(repo, name)
    try:
        model = get_model(name, repo=repo)
    except ModelLoadingError as exc:
        raise ModelLoadingError(f"{exc}: the file is corrupt or incomplete; {_where_from(name)}") from None
    if random_weights:
        log.warning("%s/%s is not htdemucs: a small HTDemucs of random or briefly trained weights, "
                    "its separation is only rough (use model htdemucs for real vocal removal)", repo, name)
    return model.to(resolve_device(device)).eval()


@dataclass(frozen=True)
class Stems:
    """Separated sources at ``samplerate``, each float32 ``[2, S]``; the mix is their sum."""

    samplerate: int
    sources: dict[str, np.ndarray]

    @property
    def vocals(self) -> np.ndarray:
        return self.sources["vocals"]

    @property
    def accompaniment(self) -> np.ndarray:
        """Every source but vocals (drums + bass + other for htdemucs), ``[2, S]``."""
        return sum(audio for source, audio in self.sources.items() if source != "vocals")


@contextlib.contextmanager
def _seeded_python_random(seed: int):
    # apply_model draws its shift offsets from the global `random`: seed it so that the same
    # input gives the same output (DVC caches by content), then give the caller its state back.
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def separate_accompaniment(model: Separator, audio: np.ndarray, *, segment: float = 0.0, overlap: float = 0.25,
                           shifts: int = 0, device: str = "auto") -> Stems:
    """Separate ``audio`` into the model's sources, the way ``demucs.api.Separator`` does.

    Args:
        model: from ``load_separator``.
        audio: float ``[C, S]`` (C = 1 or 2; mono is duplicated) or ``[S]``, at ``model.samplerate``.
        segment: seconds per chunk; 0 = the model's own (HTDemucs cannot take longer ones).
        overlap: fraction of a chunk shared with the next.
        shifts: random-shift passes averaged (0 = none); seeded, so repeatable.

    Returns:
        ``Stems`` of float32 ``[2, S]`` arrays at ``model.samplerate``.
    """
    if "vocals" not in model.sources:
        raise ValueError(f"model has no vocals source to remove: {model.sources}")
    wav = torch.from_numpy(np.atleast_2d(np.asarray(audio, dtype=np.float32)))
    if wav.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [C, S] with C = 1 or 2, got shape {tuple(wav.shape)}")
    wav = wav.expand(model.audio_channels, -1)
    limit = (model.max_allowed_segment if isinstance(model, BagOfModels)
             else float(model.segment) if isinstance(model, HTDemucs) else float("inf"))
    if segment > limit:
        raise ValueError(f"segment {segment} s is longer than the {limit:g} s this transformer model was "
                         "trained on (0 = the model's own)")
    # Demucs's own normalisation (demucs.api.Separator.separate_tensor): by the mono mix's mean and std.
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    # A clip no longer than one chunk runs once: Demucs's split steps chunks by (1 - overlap) of a chunk,
    # so a 6 s clip in 7.8 s chunks ran twice, the second pass for 0.15 s it weighs by under a tenth.
    chunk = segment or (limit if math.isfinite(limit) else 0.0)
    one_pass = shifts == 0 and chunk > 0 and wav.shape[-1] <= int(chunk * model.samplerate)
    with _seeded_python_random(0), torch.inference_mode():
        out = apply_model(model, ((wav - mean) / std)[None], segment=segment or (chunk if one_pass else None),
                          shifts=shifts, split=not one_pass, overlap=overlap, device=resolve_device(device),
                          progress=False)
    out = (out[0] * std + mean).cpu().numpy()  # [sources, 2, S]
    return Stems(int(model.samplerate), dict(zip(model.sources, out)))


def to_target(audio: np.ndarray, sr_in: int, sr_out: int = 32000) -> np.ndarray:
    """Mono downmix and resample (soxr at the shared :data:`pipeline.audio.RESAMPLE_QUALITY`).

    Args:
        audio: float ``[C, S]`` at ``sr_in``.

    Returns:
        float32 ``[1, S_out]`` at ``sr_out``, S_out = round(S * sr_out / sr_in) exactly.
    """
    n_out = round(Fraction(np.shape(audio)[-1] * sr_out, sr_in))
    mono = mono_resampled(audio, sr_in, sr_out, quality=RESAMPLE_QUALITY)
    # soxr's length can differ from the exact one by a sample: trim or zero-pad to it.
    mono = np.pad(mono[:n_out], (0, max(0, n_out - mono.shape[0])))
    return mono[None].astype(np.float32)


def separate_file(model: Separator, in_wav: Path, out_wav: Path, *, target_rate: int = 32000, segment: float = 0.0,
                  overlap: float = 0.25, shifts: int = 0, device: str = "auto") -> dict:
    """Separate a stereo wav at the model's rate; write its accompaniment as mono 16-bit ``target_rate`` wav.

    Returns:
        Facts: ``seconds`` of audio, ``output_samples``, ``realtime_factor`` (audio seconds per wall
        second of separation), ``peak`` of the written audio before 16-bit clipping.
    """
    audio, rate = read_wav(in_wav)
    if rate != model.samplerate:
        raise ValueError(f"{in_wav}: {rate} Hz, but the separator takes {model.samplerate} Hz")
    start = time.perf_counter()
    stems = separate_accompaniment(model, audio, segment=segment, overlap=overlap, shifts=shifts, device=device)
    elapsed = time.perf_counter() - start
    target = to_target(stems.accompaniment, stems.samplerate, target_rate)
    write_wav(out_wav, target, target_rate, subtype="PCM_16")
    seconds = audio.shape[1] / rate
    return {"seconds": seconds, "output_samples": int(target.shape[1]),
            "realtime_factor": seconds / max(elapsed, 1e-9), "peak": float(np.abs(target).max(initial=0.0))}


# No timing column: this table is part of the hashed output that codec_init and codes depend on, so
# a wall-clock figure in it would rerun them after every identical separation (the stage prints
# its real-time factor instead).
SEPARATE_STATUS = status_schema(
    pa.field("seconds", pa.float64()),
    pa.field("samples", pa.int64()),
    NODE_FIELD,
)


def _separate_row(model: Separator, video_id: str, in_wav: Path, out_wav: Path, params: SeparateParams,
                  target_rate: int) -> dict:
    """One clip's status row (``out_wav`` written when ok); the per-video work of both engines."""
    try:
        facts = separate_file(model, in_wav, out_wav, target_rate=target_rate, segment=params.segment,
                              overlap=params.overlap, shifts=params.shifts, device=params.device)
    except (ValueError, RuntimeError, MediaError) as error:
        return failed_row(video_id, "separation_error", f"{video_id}: {error}")
    return ok_row(video_id, seconds=facts["seconds"], samples=facts["output_samples"])


def separate_batch(model: Separator, batch: list[tuple]) -> list[tuple[dict, bytes | None]]:
    """A Demucs actor's call (engine ray): items ``(video_id, 44.1 kHz wav bytes, driver path, params,
    target_rate)`` -> ``(status row, target wav bytes)`` each."""
    def one(folder: Path, video_id: str, data: bytes, shown: str, params: SeparateParams, target_rate: int):
        in_wav, out_wav = folder / f"{video_id}.44k.wav", folder / f"{video_id}.wav"
        in_wav.write_bytes(data)
        row = _separate_row(model, video_id, in_wav, out_wav, params, target_rate)
        if row["error_message"]:
            row["error_message"] = row["error_message"].replace(str(in_wav), shown)
        return row, out_wav.read_bytes() if row["status"] == OK else None

    return [in_temp_dir(lambda folder, item=item: one(folder, *item)) for item in batch]


def _load_for_actor(repo: str, name: str, device: str) -> Separator:
    return load_separator(Path(repo), name, device)


def separate_shard(clips_dir: Path | str, out_dir: Path | str, params: SeparateParams, target_rate: int,
                   progress: bool = True, compute: ComputeParams | None = None) -> list[dict]:
    """Remove the vocals of every clip the clip stage finished; ``out_dir/<id>.wav`` + status.parquet.

    Writes ``out_dir`` atomically; a clip whose separation fails gets a status row and the shard goes on.
    ``compute.engine: ray`` separates on a pool of Demucs actors (``compute.separate``).
    """
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    video_ids = ok_ids(clips_dir)
    engine = open_engine(compute)
    if engine is None:
        model = load_separator(Path(params.repo), params.model, params.device)
    else:
        _check_repo(Path(params.repo), params.model)   # a missing model is one line here, not one per actor
        journal = journal_for(compute, "separate", clips_dir.name)
        recipe = (dataclasses.asdict(params), target_rate)
        work = []
        for video_id in video_ids:
            path = clips_dir / f"{video_id}.44k.wav"
            work.append(Work(video_id, fingerprint(recipe, file_sha256(path)),
                             lambda video_id=video_id, path=path: (video_id, path.read_bytes(), str(path), params,
                                                                   target_rate)))
        lost = engine.actors(_load_for_actor, (str(Path(params.repo).resolve()), params.model, params.device),
                             separate_batch, work, journal, pool=compute.separate,
                             desc=f"separate {clips_dir.name} (ray)", progress=progress)
    rows = []
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        if engine is None:
            for video_id in tqdm(video_ids, desc=f"separate {clips_dir.name}", unit="clip", disable=not progress):
                row = _separate_row(model, video_id, clips_dir / f"{video_id}.44k.wav", temp / f"{video_id}.wav",
                                    params, target_rate)
                rows.append({**row, "node": LOCAL_NODE})
        else:
            for video_id, node, value in results(work, journal, lost):
                if isinstance(value, Lost):
                    rows.append(failed_row(video_id, "worker_lost", f"{video_id}: {value.cause}", node=None))
                    continue
                row, data = value
                if data is not None:
                    (temp / f"{video_id}.wav").write_bytes(data)
                rows.append({**row, "node": node})
        write_status(temp / STATUS_FILE, rows, SEPARATE_STATUS)
    if engine is not None:
        journal.clear()
    log.info("separate %s: %s", clips_dir.name, summary(rows))
    return rows
