"""Music for a video: features -> windowed sampling -> codec decoding -> loudness -> mux.

What ``v2m generate`` and the generate stage run. The features are made by the same code as the
feature cache (:mod:`pipeline.features.extract`), following the recipe stored with the model
(:mod:`pipeline.features.recipe`), and rounded the way the cache stores them (CLIP tokens in
float16, flow magnitudes quantised to uint8), so the model sees at generation exactly the kind of
input it was trained on.

Windowing. The model was trained on segments of ``segment_seconds``; a longer video is scored in
windows of ``window_seconds`` (default: that length). Window ``w > 0`` starts ``prompt_seconds``
before the end of the music so far; it is conditioned on its own frames and prompted with those
last ``prompt_seconds`` of codes, which it continues (they are forced, not resampled). So the
piece carries on across windows instead of restarting every window, the complaint about VidMuse
and GVMGen on long videos. Windows start on the recipe's time grid (``StreamRates.time_grid``: 0.5 s
where 2 fps frames, 4 fps flow maps and 50 Hz codes line up), the grid training segments lie on.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline import media, threads
from pipeline.audio import normalize_loudness
from pipeline.config import GenerateParams, SplitParams
from pipeline.errors import UserError
from pipeline.device import resolve_device, torch_threads
from pipeline.features import codec as codec_lib
from pipeline.features.extract import extract_video
from pipeline.features.recipe import FeatureRecipe, read_recipe
from pipeline.features.visual import ClipModelEncoder
from pipeline.model.sampling import generate_codes, quantize_decoder
from pipeline.files import atomic_path
from pipeline.model.v2m import V2MConfig, V2MModel
from pipeline.split import ids_in
from pipeline.status import (PICTURE_FIELDS, STATUS_FILE, failed_row, ok_ids, ok_row, picture_columns, status_schema,
                             write_status)

log = logging.getLogger("v2m.generate")

# Below this decoder width one sampling step is too little work to split across CPU threads: measured
# on 2 cores, the tiny decoder sampled 15x faster on 1 thread than on 2 when the machine was busy.
SMALL_DECODER_WIDTH = 512


@dataclass
class Generator:
    """A loaded model with what its inputs and outputs need: CLIP, the codec and the recipe."""

    model: V2MModel
    clip_model: ClipModelEncoder
    codec: object
    recipe: FeatureRecipe
    device: str

    @classmethod
    def load(cls, model_dir: Path | str, device: str = "auto", cpu_quantize: bool = False) -> "Generator":
        """Load ``model_dir`` (the train stage's export) and the CLIP and codec folders its recipe names.

        ``cpu_quantize``: on CPU, int8 dynamic quantisation of the decoder's linear layers
        (:func:`pipeline.model.sampling.quantize_decoder`); ignored on CUDA.

        Raises:
            UserError: a missing folder or file, named.
        """
        recipe, config = check_model_folder(model_dir)
        device = resolve_device(device)
        try:
            model = V2MModel.from_pretrained(model_dir, device=device, config=config)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        if cpu_quantize and device == "cpu":
            quantize_decoder(model)
        features = recipe.features
        clip = ClipModelEncoder.load(features.visual, device=device)
        codec = codec_lib.load_codec(features.codes.codec, device=device)
        return cls(model, clip, codec, recipe, device)

    @property
    def sample_rate(self) -> int:
        return int(self.codec.config.sampling_rate)


@dataclass
class Music:
    """Generated music for one video.

    Attributes:
        audio: float32 ``[1, S]`` at ``sample_rate``, loudness-normalised, exactly the video's length.
        codes: int64 ``[K, T]`` at 50 Hz.
        windows: ``(start, end)`` seconds of each generation window.
        picture: the rotation and pixel shape undone for the features (the output plays as the input does).
    """

    audio: np.ndarray
    sample_rate: int
    codes: np.ndarray
    seconds: float
    windows: list[tuple[float, float]] = field(default_factory=list)
    gain_db: float = 0.0
    picture: media.Picture = field(default_factory=media.Picture)


def plan_windows(total_steps: int, window_steps: int, prompt_steps: int) -> list[tuple[int, int, int]]:
    """Generation windows over ``total_steps`` code frames.

    Returns:
        ``(start, prompt, new)`` per window, in code frames: the window starts at ``start``, is
        prompted with codes ``start .. start + prompt`` and generates ``new`` codes after them.
        The first window has no prompt; windows cover ``0 .. total_steps`` exactly once with new codes.
    """
    if not 0 <= prompt_steps < window_steps:
        raise ValueError(f"the prompt ({prompt_steps} steps) must be shorter than the window ({window_steps})")
    plan, done = [], 0
    while done < total_steps:
        prompt = 0 if done == 0 else prompt_steps
        new = min(window_steps - prompt, total_steps - done)
        plan.append((done - prompt, prompt, new))
        done += new
    return plan


def window_steps_of(params: GenerateParams, recipe: FeatureRecipe) -> tuple[int, int]:
    """``(window, prompt)`` in code frames for ``params``; checked before any work starts.

    Windows lie on the recipe's time grid (:meth:`StreamRates.time_grid`), the same grid the
    training segments lie on, so a window sees the rows of every stream that training would.

    Raises:
        UserError: a length off the time grid, or a prompt not shorter than the window.
    """
    rates = recipe.rates
    codes_per_step = rates.code_rate // rates.grid_rate
    window_seconds = params.window_seconds or recipe.segment_seconds
    window_steps = rates.grid_steps(window_seconds, "generate.window_seconds") * codes_per_step
    prompt_steps = (rates.grid_steps(params.prompt_seconds, "generate.prompt_seconds") * codes_per_step
                    if params.prompt_seconds > 0 else 0)
    if prompt_steps >= window_steps:
        raise UserError(f"generate.prompt_seconds ({params.prompt_seconds}) must be shorter than the window "
                        f"({window_seconds} s)")
    return window_steps, prompt_steps


def check_model_folder(model_dir: Path | str, params: GenerateParams | None = None
                       ) -> tuple[FeatureRecipe, V2MConfig]:
    """Fail fast, before loading any weights: the folder, its recipe, its config and (given params) the windowing.

    Returns:
        The folder's feature recipe and its parsed model config.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model folder; the train stage (`dvc repro train`) exports "
                        "models/v2m, or pass --model DIR")
    recipe = read_recipe(model_dir)
    try:
        config = V2MConfig.from_folder(model_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if params is not None:
        window_steps_of(params, recipe)
    return recipe, config


@dataclass
class VideoInput:
    """What sampling needs from one video: its length and features on the model's frame grids.

    Attributes:
        visual: float32 ``[N_v, 50, 768]``, ``N_v = round(seconds * visual_fps)``.
        motion: float32 ``[N_m, S, S]`` (``N_m = round(seconds * motion_fps)``) or None without motion.
    """

    video: Path
    seconds: float
    visual: torch.Tensor
    motion: torch.Tensor | None
    picture: media.Picture


def video_input(generator: Generator, video: Path | str) -> VideoInput:
    """The first phase of :func:`generate_music`: probe and decode ``video``, CLIP tokens and flow maps.

    Raises:
        UserError (MediaError): unreadable video, no video stream, shorter than 0.5 s.
    """
    video = Path(video)
    seconds = media.check_video(video).duration
    config = generator.model.config
    features = generator.recipe.features
    extracted = extract_video(video, visual=features.visual, encoder=generator.clip_model,
                              motion=features.motion if config.use_motion else None)
    visual = _fill(torch.from_numpy(extracted.tokens.astype(np.float32)), round(seconds * config.visual_fps))
    motion = None
    if config.use_motion:
        motion = _fill(torch.from_numpy(extracted.flow), round(seconds * config.motion_fps))
    return VideoInput(video, seconds, visual, motion, extracted.picture)


def sample_codes(generator: Generator, clip: VideoInput, params: GenerateParams, *, progress: bool = True,
                 step_callback: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The second phase of :func:`generate_music`: windowed sampling (:func:`sample_codes_batch` of one clip).

    Returns:
        int64 codes ``[K, T]`` (``T = round(seconds * 50)``) and each window's ``(start, end)`` seconds.
    """
    return sample_codes_batch(generator, [clip], params, progress=progress, step_callback=step_callback)[0]


def batch_key(clip: VideoInput, config: V2MConfig) -> tuple[int, int, int]:
    """Clips with equal keys sample as one batch: the same code steps (so the same windows) and frame counts."""
    motion = clip.motion.shape[0] if clip.motion is not None else 0
    return int(round(clip.seconds * config.codes_rate)), clip.visual.shape[0], motion


def sample_codes_batch(generator: Generator, clips: Sequence[VideoInput], params: GenerateParams, *,
                       progress: bool = True, step_callback: Callable[[int], None] | None = None
                       ) -> list[tuple[np.ndarray, list[tuple[float, float]]]]:
    """Windowed sampling of clips of one :func:`batch_key` as one batch: each decoder step runs every
    clip's rows at once (a tiny decoder's step is Python-bound: 18 six-second clips sampled in 37 s one
    by one). Every clip draws from its own generator seeded with ``params.seed``, so its music does not
    depend on which clips share the batch (up to the float rounding of batched matrix products).

    Returns:
        Per clip, int64 codes ``[K, T]`` (``T = round(seconds * 50)``) and each window's ``(start, end)`` seconds.

    Raises:
        ValueError: clips of different batch keys.
    """
    model, config = generator.model, generator.model.config
    keys = {batch_key(clip, config) for clip in clips}
    if len(keys) != 1:
        raise ValueError(f"clips of one batch need equal code steps and frame counts, got {sorted(keys)}")
    window_steps, prompt_steps = window_steps_of(params, generator.recipe)
    total_steps = next(iter(keys))[0]
    plan = plan_windows(total_steps, window_steps, prompt_steps)
    k = config.num_codebooks
    calls = sum(new + k - 1 for _, _, new in plan)
    name = clips[0].video.name if len(clips) == 1 else f"{len(clips)} clips"
    bar = tqdm(total=calls, desc=f"music {name}", unit="step", disable=not progress, leave=False)
    rngs = [torch.Generator(device="cpu").manual_seed(params.seed) for _ in clips]
    codes = torch.zeros(len(clips), k, 0, dtype=torch.long)
    windows = []

    def on_step(position: int, logits: torch.Tensor) -> None:
        bar.update(1)
        if step_callback is not None:
            step_callback(1)

    threads = params.sampling_threads or (1 if config.decoder_dim < SMALL_DECODER_WIDTH else 0)
    try:
        for start, prompt, new in plan:
            end = start + prompt + new
            frames = [window_frames(clip.visual, clip.motion, start, end, config) for clip in clips]
            window_visual = torch.stack([visual for visual, _ in frames]).to(generator.device)
            window_motion = (torch.stack([motion for _, motion in frames]).to(generator.device)
                             if frames[0][1] is not None else None)
            with torch.no_grad():
                # the window's code time 0 is its start: the aligned features are those of its own frames
                z, aligned = model.conditions(window_visual, window_motion, prompt + new)
            prompt_codes = codes[:, :, codes.shape[2] - prompt:] if prompt else None
            with torch_threads(threads if generator.device == "cpu" else 0):
                out = generate_codes(model, z, new, cfg=params.cfg, top_k=params.top_k or None,
                                     temperature=params.temperature, generator=rngs, prompt=prompt_codes,
                                     callback=on_step, static_cache=params.static_kv_cache, aligned=aligned)
            codes = torch.cat([codes, out.cpu()], dim=2)
            windows.append((start / config.codes_rate, end / config.codes_rate))
    finally:
        bar.close()
    return [(clip_codes.numpy(), list(windows)) for clip_codes in codes]


def render_music(generator: Generator, clip: VideoInput, codes: np.ndarray, windows: list[tuple[float, float]],
                 params: GenerateParams) -> Music:
    """The last phase of :func:`generate_music`: decode ``codes``, fit the video's length, normalise loudness."""
    audio = codec_lib.decode(generator.codec, codes)
    samples = int(round(clip.seconds * generator.sample_rate))
    audio = np.pad(audio, ((0, 0), (0, max(0, samples - audio.shape[1]))))[:, :samples]
    audio, gain_db = normalize_loudness(audio, generator.sample_rate, params.loudness_lufs, params.peak_dbfs)
    return Music(audio=audio, sample_rate=generator.sample_rate, codes=codes, seconds=clip.seconds,
                 windows=windows, gain_db=gain_db, picture=clip.picture)


def generate_music(generator: Generator, video: Path | str, params: GenerateParams, *, progress: bool = True,
                   step_callback: Callable[[int], None] | None = None) -> Music:
    """Music for ``video``: any size, orientation, pixel shape, frame rate or length, with or without audio.

    The features see the picture as it is played (upright, square pixels; :func:`media.sample_frames`).
    Three phases: :func:`video_input`, :func:`sample_codes`, :func:`render_music`.

    Args:
        params: sampling (cfg, top_k, temperature, seed), windowing and loudness.
        step_callback: called with the number of sampled positions after each (for progress displays).

    Raises:
        UserError (MediaError): unreadable video, no video stream, shorter than 0.5 s.
    """
    clip = video_input(generator, video)
    codes, windows = sample_codes(generator, clip, params, progress=progress, step_callback=step_callback)
    return render_music(generator, clip, codes, windows, params)


def window_frames(visual: torch.Tensor, motion: torch.Tensor | None, start: int, end: int, config: V2MConfig
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frames of the window of code steps ``start .. end``, by absolute time: ``visual [N_v, ...]``
    and ``motion [N_m, ...]`` (or None) of the whole video -> the window's, its first frames those at
    ``start / codes_rate`` seconds (the window's code time 0, for the aligned features too)."""
    window_visual = visual[_frames_of(start, end, config.visual_fps / config.codes_rate)]
    window_motion = None
    if motion is not None:
        window_motion = motion[_frames_of(start, end, config.motion_fps / config.codes_rate)]
    return window_visual, window_motion


def _frames_of(start: int, end: int, frames_per_step: float) -> slice:
    """The frames of code steps ``start .. end`` (at least one): from the frame at ``start`` to the
    first frame at or after ``end``."""
    first = round(start * frames_per_step)
    return slice(first, max(first + 1, math.ceil(end * frames_per_step)))


def _fill(frames: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` frames: cut, or the last one repeated when the picture ends before the sound."""
    if frames.shape[0] >= count:
        return frames[:count]
    tail = frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])
    return torch.cat([frames, tail])


def score_video(generator: Generator, video: Path | str, out: Path | str, params: GenerateParams, *,
                wav: Path | str | None = None, keep_audio: bool = False, progress: bool = True,
                plan: media.MuxPlan | None = None) -> Music:
    """Generate music for ``video`` and write ``out`` (the video with the music), plus ``wav`` if given.

    Both files are written atomically; the output lasts exactly as long as the input. Before any
    sampling, a one-frame trial mux proves ``out`` can be written (:func:`media.plan_mux`).

    Args:
        plan: the trial's result when the caller already made it (``v2m generate`` does, before loading models).
    """
    plan, clip = prepare_video(generator, video, out, wav=wav, keep_audio=keep_audio, plan=plan)
    codes, windows = sample_codes(generator, clip, params, progress=progress)
    return write_music(generator, plan, clip, codes, windows, params, out, wav=wav, keep_audio=keep_audio)


def prepare_video(generator: Generator, video: Path | str, out: Path | str, *, wav: Path | str | None = None,
                  keep_audio: bool = False, plan: media.MuxPlan | None = None) -> tuple[media.MuxPlan, VideoInput]:
    """:func:`score_video`'s checks (outputs writable, a trial mux) and then :func:`video_input`."""
    media.check_output(video, out, wav)
    plan = plan or media.plan_mux(video, keep_audio=keep_audio, info=media.check_video(video))
    return plan, video_input(generator, video)


def write_music(generator: Generator, plan: media.MuxPlan, clip: VideoInput, codes: np.ndarray,
                windows: list[tuple[float, float]], params: GenerateParams, out: Path | str, *,
                wav: Path | str | None = None, keep_audio: bool = False) -> Music:
    """:func:`render_music`, then ``wav`` (if given) and the muxed ``out``, each atomically."""
    music = render_music(generator, clip, codes, windows, params)
    if wav is not None:
        media.write_wav(wav, music.audio, music.sample_rate)
    media.mux_music(clip.video, music.audio, music.sample_rate, out, duration=music.seconds, keep_audio=keep_audio,
                    plan=plan)
    return music


GENERATED_STATUS = status_schema(pa.field("shard", pa.string()), pa.field("seconds", pa.float64()),
                                 pa.field("windows", pa.int32()), pa.field("gain_db", pa.float64()),
                                 pa.field("compute_seconds", pa.float64()), *PICTURE_FIELDS)


def split_clips(clip_dirs: dict[str, Path], split: SplitParams, which: str, max_clips: int = 0) -> list[tuple[str, Path]]:
    """``(shard, clip mp4)`` of every clip the clip stage finished in split ``which``, in shard order."""
    chosen = [(shard, Path(folder) / f"{video_id}.mp4") for shard, folder in clip_dirs.items()
              for video_id in ids_in(ok_ids(folder), split, which)]
    return chosen[:max_clips] if max_clips else chosen


def generate_set(generator: Generator, clips: list[tuple[str, Path]], out_dir: Path | str, params: GenerateParams,
                 *, progress: bool = True, workers: int | None = None) -> list[dict]:
    """Music for each clip: ``out_dir/<id>.wav`` and ``<id>.mp4`` (muxed) + status.parquet, atomically.

    A clip that fails gets a status row with the reason and the set goes on. The same music as
    :func:`score_video` clip by clip (up to the float rounding of batched matrix products), in a
    pipeline: clips go in groups of ``params.batch_clips``; ``workers`` side threads extract the
    features of group ``j + 1`` and render and mux group ``j - 1`` while the main thread samples
    group ``j``, its clips of equal length as one batch (:func:`sample_codes_batch`).
    ``compute_seconds`` is a clip's own extraction and rendering plus its share of its batch's sampling.

    Args:
        workers: side threads; None = the cores the thread policy found free (:mod:`pipeline.threads`; 1
            before any stage applied it).
    """
    def timed(work: Callable, *args) -> tuple[object, UserError | None, float]:
        """``(work(*args), None, seconds)``, or ``(None, the UserError it raised, seconds)``."""
        started = time.perf_counter()
        try:
            return work(*args), None, time.perf_counter() - started
        except UserError as error:
            return None, error, time.perf_counter() - started

    def prepare(clip: Path) -> tuple[media.MuxPlan, VideoInput]:
        return prepare_video(generator, clip, temp / f"{clip.stem}.mp4", wav=temp / f"{clip.stem}.wav")

    def finish(plan: media.MuxPlan, clip: VideoInput, codes: np.ndarray, windows: list[tuple[float, float]]) -> Music:
        return write_music(generator, plan, clip, codes, windows, params, temp / f"{clip.video.stem}.mp4",
                           wav=temp / f"{clip.video.stem}.wav")

    workers = workers or threads.free_workers()
    config = generator.model.config
    groups = [clips[i:i + params.batch_clips] for i in range(0, len(clips), params.batch_clips)]
    # per clip: (id, shard, seconds so far, the finishing Future, or the UserError that stopped it)
    results: list[tuple[str, str, float, Future | UserError]] = []
    bar = tqdm(total=len(clips), desc="generate", unit="clip", disable=not progress)
    with atomic_path(out_dir) as temp, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate-side") as side:
        temp.mkdir(parents=True)
        prepared = [side.submit(timed, prepare, clip) for _, clip in groups[0]] if groups else []
        for j, group in enumerate(groups):
            current = prepared
            prepared = [side.submit(timed, prepare, clip) for _, clip in groups[j + 1]] if j + 1 < len(groups) else []
            outcomes = [future.result() for future in current]
            ready: dict[tuple[int, int, int], list[int]] = {}
            for i, (ok, error, _) in enumerate(outcomes):
                if error is None:
                    ready.setdefault(batch_key(ok[1], config), []).append(i)
            sampled: dict[int, tuple[np.ndarray, list[tuple[float, float]], float]] = {}
            for members in ready.values():
                started = time.perf_counter()
                music = sample_codes_batch(generator, [outcomes[i][0][1] for i in members], params, progress=False)
                share = (time.perf_counter() - started) / len(members)
                sampled.update({i: (codes, windows, share) for i, (codes, windows) in zip(members, music)})
            for i, ((shard, clip), (ok, error, seconds)) in enumerate(zip(group, outcomes)):
                if error is not None:
                    results.append((clip.stem, shard, seconds, error))
                    continue
                codes, windows, share = sampled[i]
                results.append((clip.stem, shard, seconds + share, side.submit(timed, finish, *ok, codes, windows)))
            bar.update(len(group))
        bar.close()
        rows = []
        for video_id, shard, seconds, outcome in results:
            music, error, finish_seconds = outcome.result() if isinstance(outcome, Future) else (None, outcome, 0.0)
            if error is not None:
                log.warning("%s: %s", video_id, error)
                row = failed_row(video_id, type(error).__name__, str(error), shard=shard)
            else:
                row = ok_row(video_id, shard=shard, seconds=music.seconds, windows=len(music.windows),
                             gain_db=music.gain_db, **picture_columns(music.picture))
            rows.append({**row, "compute_seconds": seconds + finish_seconds})
        write_status(temp / STATUS_FILE, rows, GENERATED_STATUS)
    return rows


__all__ = ["Generator", "Music", "VideoInput", "check_model_folder", "generate_music", "generate_set", "plan_windows",
           "prepare_video", "render_music", "sample_codes", "sample_codes_batch", "score_video", "split_clips", "video_input",
           "write_music"]
