"""Feature extraction for a shard of clips, overlapping decode, flow and CLIP.

One decode pass per clip yields both frame streams (RGB at ``features.visual.fps`` for CLIP,
grayscale at ``features.motion.fps`` for Farneback). A producer thread decodes and preprocesses
clip after clip while flow runs in a small thread pool and the calling thread feeds CLIP with
batches that span clips, so CLIP's compute, not decoding, flow or I/O, sets the pace.

The DVC stages ask for one table each (``visual``, ``motion``) so that a
flow-only params change reruns only the motion stages; ``v2m generate`` and the benchmark ask
for both in one pass.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipeline import media
from pipeline.config import CodesFeatureParams, ComputeParams, MotionFeatureParams, VisualFeatureParams
from pipeline.engine import LOCAL_NODE, Lost, Work, fingerprint, in_temp_dir, journal_for, open_engine, results
from pipeline.features.motion import dequantize, flow_kwargs, flow_magnitudes, quantize
from pipeline.features.store import ShardWriter, tensor_column
from pipeline.files import file_sha256
from pipeline.status import (NODE_FIELD, OK, PICTURE_FIELDS, failed_row, ok_ids, ok_row, picture_columns, read_status,
                             status_schema, summary, write_status)

if TYPE_CHECKING:
    from pipeline.features.visual import ClipModelEncoder

# CLIP (pipeline.features.visual) and EnCodec (pipeline.features.codec) are imported where they are
# used: they load torch and transformers, seconds of start-up that the motion stage never needs.

log = logging.getLogger("v2m.features")

FEATURE_STATUS = status_schema(pa.field("rows", pa.int32()), NODE_FIELD)
# The frame tables' rows also say what rotation and pixel shape were undone before the features.
FRAME_FEATURE_STATUS = status_schema(pa.field("rows", pa.int32()), *PICTURE_FIELDS, NODE_FIELD)


@dataclass
class ClipInput:
    """A clip to extract: its id, video file and length in seconds (from the clip stage's status)."""

    video_id: str
    path: Path
    seconds: float


def clip_inputs(clips_dir: Path | str) -> list[ClipInput]:
    """The clips the clip stage finished, in its status order."""
    clips_dir = Path(clips_dir)
    return [ClipInput(row["video_id"], clips_dir / f"{row['video_id']}.mp4", row["seconds"])
            for row in read_status(clips_dir) if row["status"] == OK]


@dataclass
class _Decoded:
    clip: ClipInput
    pixels: "np.ndarray | None" = None    # [N_v, 3, 224, 224] float32, preprocessed for CLIP
    flow: "Future | None" = None           # -> float32 [N_m, S, S]
    picture: media.Picture = dataclasses.field(default_factory=media.Picture)
    error: "str | None" = None


def extract_tables(clips: list[ClipInput], *, visual: VisualFeatureParams | None = None, model=None,
                   motion: MotionFeatureParams | None = None, visual_out: Path | None = None,
                   motion_out: Path | None = None, motion_workers: int = 1, progress: bool = True,
                   desc: str = "features") -> list[dict]:
    """Write the visual table (``visual_out``) and/or the motion table (``motion_out``) for ``clips``.

    Args:
        visual, model: CLIP params and their loaded model (``load_visual_model``; needed for ``visual_out``).
        motion: Farneback params (needed for ``motion_out``).

    Returns:
        One status row per clip (``rows`` = frames written per table); a clip that cannot be
        decoded gets a failed row and is left out of the tables.
    """
    want_rgb, want_gray = visual_out is not None, motion_out is not None
    decoded: queue.Queue[_Decoded | None] = queue.Queue(maxsize=4)
    flow_pool = ThreadPoolExecutor(max_workers=motion_workers) if want_gray else None
    stop = threading.Event()

    def produce() -> None:
        try:
            for clip in clips:
                if stop.is_set():
                    return
                item = _Decoded(clip)
                try:
                    frames = media.sample_frames(clip.path, rgb_fps=visual.fps if want_rgb else None,
                                                 gray_fps=motion.fps if want_gray else None, seconds=clip.seconds)
                    item.picture = frames.picture
                    if want_rgb:
                        item.pixels = model.preprocess(frames.rgb)
                    if want_gray:
                        item.flow = flow_pool.submit(flow_magnitudes, frames.gray, **flow_kwargs(motion))
                except media.MediaError as error:
                    item.error = str(error)
                decoded.put(item)
        finally:
            decoded.put(None)

    producer = threading.Thread(target=produce, name="decode", daemon=True)
    writers = []
    visual_writer = motion_writer = None
    if want_rgb:
        visual_writer = visual_table_writer(visual_out, visual, (model.tokens, model.width))
        writers.append(visual_writer)
    if want_gray:
        motion_writer = motion_table_writer(motion_out, motion)
        writers.append(motion_writer)

    rows: list[dict] = []
    pending: list[_Decoded] = []   # clips waiting for CLIP, in order
    bar = tqdm(total=len(clips), desc=desc, unit="clip", disable=not progress)

    def finish(items: list[_Decoded], tokens: np.ndarray | None) -> None:
        offset = 0
        for item in items:
            count = 0
            if visual_writer is not None:
                n = item.pixels.shape[0]
                visual_writer.write_clip(item.clip.video_id, {
                    "frame": np.arange(n, dtype=np.int32), "time": np.arange(n, dtype=np.float32) / visual.fps,
                    "tokens": tensor_column(tokens[offset:offset + n])})
                offset += n
                count = n
            if motion_writer is not None:
                q, scale = quantize(item.flow.result())
                n = q.shape[0]
                motion_writer.write_clip(item.clip.video_id, {
                    "frame": np.arange(n, dtype=np.int32), "time": np.arange(n, dtype=np.float32) / motion.fps,
                    "magnitude": tensor_column(q), "scale": scale})
                count = count or n
            rows.append(ok_row(item.clip.video_id, rows=count, **picture_columns(item.picture), node=LOCAL_NODE))
            bar.update(1)

    try:
        for writer in writers:
            writer.__enter__()
        producer.start()
        while True:
            item = decoded.get()
            if item is not None and item.error is not None:
                rows.append(failed_row(item.clip.video_id, "unreadable", item.error, rows=0, node=LOCAL_NODE))
                bar.update(1)
                continue
            if item is not None:
                pending.append(item)
            frames_waiting = sum(p.pixels.shape[0] for p in pending) if want_rgb else 0
            if pending and (item is None or not want_rgb or frames_waiting >= visual.batch_size):
                tokens = None
                if want_rgb:
                    tokens = model.encode(np.concatenate([p.pixels for p in pending]), visual.batch_size)
                finish(pending, tokens)
                pending = []
            if item is None:
                break
    except BaseException as error:
        stop.set()
        for writer in reversed(writers):
            writer.__exit__(type(error), error, error.__traceback__)
        raise
    finally:
        bar.close()
        if flow_pool is not None:
            flow_pool.shutdown(wait=True)
    for writer in reversed(writers):
        writer.__exit__(None, None, None)
    producer.join()
    return rows


@dataclass
class VideoFeatures:
    """One video's features as the cache holds them.

    ``tokens``: float16 ``[N_v, 50, 768]`` CLIP tokens; ``flow``: float32 ``[N_m, S, S]`` magnitudes after
    the cache's uint8 quantisation round trip (None when not asked for); ``seconds``: span sampled;
    ``picture``: the rotation and pixel shape undone before both (see :func:`media.sample_frames`).
    """

    tokens: np.ndarray
    flow: np.ndarray | None
    seconds: float
    picture: media.Picture = dataclasses.field(default_factory=media.Picture)


def extract_video(path: Path | str, *, visual: VisualFeatureParams, encoder: "ClipModelEncoder",
                  motion: MotionFeatureParams | None = None, seconds: float | None = None) -> VideoFeatures:
    """The features of one whole video (or its first ``seconds``), for generation.

    The same decode, preprocessing, CLIP and Farneback as :func:`extract_tables`, with the same
    storage rounding, so a model sees the kind of input it was trained on.
    """
    frames = media.sample_frames(path, rgb_fps=visual.fps, gray_fps=motion.fps if motion is not None else None,
                                 seconds=seconds)
    if frames.rgb is None or not len(frames.rgb):
        raise media.MediaError(f"{path}: too short for one frame at {visual.fps} fps")
    tokens = encoder.encode(frames.rgb)
    maps = None
    if motion is not None:
        maps = dequantize(*quantize(flow_magnitudes(frames.gray, **flow_kwargs(motion))))
    return VideoFeatures(tokens, maps, frames.seconds, frames.picture)


def visual_table_writer(path: Path, visual: VisualFeatureParams, shape: tuple[int, int]) -> ShardWriter:
    """The visual table's writer; ``shape``: the CLIP's ``(tokens per frame, width)``. The metadata names the
    backend that made the tokens (both give the same tokens for the same weights, within float error)."""
    from pipeline.features.visual import HIDDEN_STATE

    tokens_type = pa.fixed_shape_tensor(pa.float16(), list(shape))
    return ShardWriter(path, "visual", [
        pa.field("frame", pa.int32()), pa.field("time", pa.float32()), pa.field("tokens", tokens_type)],
        {"model": visual.model, "backend": visual.backend, "params": dataclasses.asdict(visual),
         "hidden_state": HIDDEN_STATE, "units": "CLIP hidden states, CLS token first then 7x7 patches row by row"})


def motion_table_writer(path: Path, flow: MotionFeatureParams) -> ShardWriter:
    return ShardWriter(path, "motion", [
        pa.field("frame", pa.int32()), pa.field("time", pa.float32()),
        pa.field("magnitude", pa.fixed_shape_tensor(pa.uint8(), [flow.size, flow.size])),
        pa.field("scale", pa.float32())],
        {"params": dataclasses.asdict(flow), "method": "cv2.calcOpticalFlowFarneback, magnitude only",
         "units": "pixels of the size x size frame per frame interval; map 0 repeats map 1 (no previous frame)",
         "quantization": "magnitude = q * scale / 255"}, compression="zstd")


def codes_table_writer(path: Path, params: CodesFeatureParams, n_codebooks: int) -> ShardWriter:
    return ShardWriter(path, "codes", [pa.field("frame", pa.int32()),
                                       pa.field("codes", pa.fixed_shape_tensor(pa.int16(), [n_codebooks]))],
                       {"model": params.codec, "params": dataclasses.asdict(params), "frame_rate": 50,
                        "units": "EnCodec RVQ indices, one row per 20 ms frame, codebooks 0..K-1"})


def codes_table(video_ids: Iterable[str], audio_dir: Path, out: Path, params: CodesFeatureParams, model,
                progress: bool = True, desc: str = "codes") -> list[dict]:
    """EnCodec codes of ``audio_dir/<id>.wav`` (32 kHz mono) for each id; one status row per clip."""
    from pipeline.features import codec as codec_lib

    video_ids = list(video_ids)
    rows = []
    n_codebooks = None
    bar = tqdm(total=len(video_ids), desc=desc, unit="clip", disable=not progress)
    with codes_table_writer(out, params, codec_lib.num_codebooks(model, params.bandwidth)) as writer:
        # in groups, so that the encoder's LSTM runs on several clips at once (codec_lib.encode_clips)
        for start in range(0, len(video_ids), codec_lib.ENCODER_TAIL_BATCH):
            group = video_ids[start:start + codec_lib.ENCODER_TAIL_BATCH]
            audios = {video_id: _clip_audio(model, audio_dir / f"{video_id}.wav") for video_id in group}
            readable = [video_id for video_id in group if not isinstance(audios[video_id], str)]
            encoded = dict(zip(readable, codec_lib.encode_clips(model, [audios[v] for v in readable], params.bandwidth)))
            for video_id in group:
                if video_id not in encoded:
                    rows.append(failed_row(video_id, "unreadable", audios[video_id], rows=0, node=LOCAL_NODE))
                    continue
                codes = encoded[video_id]                                                  # [K, T]
                n_codebooks = codes.shape[0]
                _write_codes(writer, video_id, codes)
                rows.append(ok_row(video_id, rows=int(codes.shape[1]), node=LOCAL_NODE))
            bar.update(len(group))
    bar.close()
    log.info("%s: %s (K=%s)", desc, summary(rows), n_codebooks)
    return rows


def _clip_audio(model, wav: Path) -> np.ndarray | str:
    """float32 ``[1, S]`` of one 32 kHz mono wav, or the one-line reason the codec cannot take it."""
    try:
        audio, rate = media.read_wav(wav)
    except media.MediaError as error:
        return str(error)
    if rate != model.config.sampling_rate or audio.shape[0] != 1:
        return (f"{wav}: {audio.shape[0]} channel(s) at {rate} Hz, "
                f"the codec takes mono {model.config.sampling_rate} Hz")
    return audio


def _write_codes(writer: ShardWriter, video_id: str, codes: np.ndarray) -> None:
    writer.write_clip(video_id, {"frame": np.arange(codes.shape[1], dtype=np.int32),
                                 "codes": tensor_column(np.ascontiguousarray(codes.T))})


def write_feature_status(path: Path, rows: list[dict], schema: pa.Schema = FEATURE_STATUS) -> Path:
    """Write a feature stage's status rows: :data:`FEATURE_STATUS`, or :data:`FRAME_FEATURE_STATUS` for the
    rows of :func:`extract_tables`."""
    return write_status(path, rows, schema)


# ------------------------------------------------------------------------------------ per-shard, either engine

def _decode_sent(folder: Path, name: str, data: bytes, shown: str, **sample) -> "media.SampledFrames | str":
    """Frames of a clip sent as bytes, or the decode error naming the driver's path ``shown``."""
    path = folder / name
    path.write_bytes(data)
    try:
        return media.sample_frames(path, **sample)
    except media.MediaError as error:
        return str(error).replace(str(path), shown)


def visual_tokens_batch(model, batch: list[tuple]) -> list[np.ndarray | str]:
    """A CLIP actor's call (engine ray): items ``(clip name, mp4 bytes, seconds, driver path, visual params)``
    -> ``(float16 [N_v, 50, 768] tokens, picture columns)`` each, or the reason the clip could not be decoded.

    As in :func:`extract_tables`, a thread decodes while CLIP runs, and CLIP's batches span the clips.
    """
    def decode(item: tuple) -> np.ndarray | str:
        name, data, seconds, shown, visual = item
        frames = in_temp_dir(lambda folder: _decode_sent(folder, name, data, shown, rgb_fps=visual.fps,
                                                         gray_fps=None, seconds=seconds))
        return frames if isinstance(frames, str) else (model.preprocess(frames.rgb), picture_columns(frames.picture))

    batch_size = batch[0][4].batch_size
    decoded, waiting, encoded = [], [], []
    with ThreadPoolExecutor(max_workers=1) as decoder:
        for future in [decoder.submit(decode, item) for item in batch]:
            decoded.append(future.result())
            if not isinstance(decoded[-1], str):
                waiting.append(decoded[-1][0])
            if waiting and (sum(p.shape[0] for p in waiting) >= batch_size or len(decoded) == len(batch)):
                encoded.append(model.encode(np.concatenate(waiting), batch_size))
                waiting = []
    tokens = np.concatenate(encoded) if encoded else None
    out, offset = [], 0
    for item in decoded:
        if isinstance(item, str):
            out.append(item)
        else:
            pixels, picture = item
            out.append((tokens[offset:offset + pixels.shape[0]], picture))
            offset += pixels.shape[0]
    return out


def flow_task(name: str, data: bytes, seconds: float, shown: str, flow: MotionFeatureParams) -> tuple | str:
    """A Ray task (engine ray): one clip's quantized flow maps ``(q uint8 [N_m, S, S], scale [N_m], picture
    columns)``, or the reason it could not be decoded."""
    frames = in_temp_dir(lambda folder: _decode_sent(folder, name, data, shown, rgb_fps=None, gray_fps=flow.fps,
                                                     seconds=seconds))
    if isinstance(frames, str):
        return frames
    return (*quantize(flow_magnitudes(frames.gray, **flow_kwargs(flow))), picture_columns(frames.picture))


def codes_batch(model, batch: list[tuple]) -> list[np.ndarray | str]:
    """A codec actor's call (engine ray): items ``(wav bytes, driver path, codes params)`` -> int16 ``[K, T]``
    codes each, or the reason the audio could not be read; the readable ones encoded together
    (``codec_lib.encode_clips``)."""
    from pipeline.features import codec as codec_lib

    def read(folder: Path, data: bytes, shown: str, params: CodesFeatureParams):
        wav = folder / Path(shown).name
        wav.write_bytes(data)
        audio = _clip_audio(model, wav)
        return audio.replace(str(wav), shown) if isinstance(audio, str) else audio

    out = [in_temp_dir(lambda folder, item=item: read(folder, *item)) for item in batch]
    readable = [i for i, audio in enumerate(out) if not isinstance(audio, str)]
    for bandwidth in sorted({batch[i][2].bandwidth for i in readable}):
        members = [i for i in readable if batch[i][2].bandwidth == bandwidth]
        for i, codes in zip(members, codec_lib.encode_clips(model, [out[i] for i in members], bandwidth)):
            out[i] = codes
    return out


def _load_visual_for_actor(visual: VisualFeatureParams):
    from pipeline.features.visual import load_visual_model

    return load_visual_model(visual)


def _load_codec_for_actor(path: str, device: str):
    from pipeline.features.codec import load_codec

    return load_codec(path, device=device)


def _model_path(name: str) -> str:
    """A model folder or file as an absolute path (workers share the driver's layout); a hub id as it is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def _clip_work(clips: list[ClipInput], recipe) -> list[Work]:
    return [Work(c.video_id, fingerprint(recipe, c.seconds, file_sha256(c.path)),
                 lambda c=c: (c.path.name, c.path.read_bytes(), c.seconds, str(c.path)))
            for c in clips]


def _lost_row(video_id: str, lost: Lost) -> dict:
    return failed_row(video_id, "worker_lost", f"{video_id}: {lost.cause}", rows=0, node=None)


def _ray_rows(work: list, journal, lost, write_ok: Callable[[str, object], dict]) -> list[dict]:
    """Status rows of a Ray run's per-video results, in work order: a lost video gets a ``worker_lost`` row,
    a string (the worker's one-line error) an ``unreadable`` row, and any other value is written by
    ``write_ok(video_id, value)``, which returns the ok row's own columns. The caller clears the journal
    once the table is closed (renamed into place), so a failure before that still resumes."""
    rows = []
    for video_id, node, value in results(work, journal, lost):
        if isinstance(value, Lost):
            rows.append(_lost_row(video_id, value))
        elif isinstance(value, str):
            rows.append(failed_row(video_id, "unreadable", value, rows=0, node=node))
        else:
            rows.append(ok_row(video_id, **write_ok(video_id, value), node=node))
    return rows


def visual_shard(clips_dir: Path, out: Path, visual: VisualFeatureParams, compute: ComputeParams | None = None,
                 progress: bool = True) -> list[dict]:
    """The CLIP table of a shard's clips (``out``), on this process or on Ray's CLIP actors; status rows."""
    clips, shard = clip_inputs(clips_dir), Path(clips_dir).name
    engine = open_engine(compute)
    from pipeline.features.visual import load_visual_model, visual_token_shape

    if engine is None:
        model = load_visual_model(visual)
        return extract_tables(clips, visual=visual, model=model, visual_out=out, desc=f"visual {shard}", progress=progress)
    shape = visual_token_shape(visual)   # fails early, cheaply
    journal = journal_for(compute, "visual", shard)
    work = [Work(w.key, w.request, lambda w=w: (*w.args(), visual))
            for w in _clip_work(clips, dataclasses.asdict(visual))]
    lost = engine.actors(_load_visual_for_actor, (dataclasses.replace(visual, model=_model_path(visual.model)),),
                         visual_tokens_batch, work, journal, pool=compute.visual, desc=f"visual {shard} (ray)",
                         progress=progress)
    with visual_table_writer(out, visual, shape) as writer:
        def write(video_id: str, value) -> dict:
            tokens, picture = value
            n = tokens.shape[0]
            writer.write_clip(video_id, {"frame": np.arange(n, dtype=np.int32),
                                         "time": np.arange(n, dtype=np.float32) / visual.fps,
                                         "tokens": tensor_column(tokens)})
            return {"rows": n, **picture}

        rows = _ray_rows(work, journal, lost, write)
    journal.clear()
    return rows


def motion_shard(clips_dir: Path, out: Path, flow: MotionFeatureParams, compute: ComputeParams | None = None,
                 workers: int = 1, progress: bool = True) -> list[dict]:
    """The flow table of a shard's clips (``out``), in ``workers`` threads here or on Ray CPU tasks; status rows."""
    clips, shard = clip_inputs(clips_dir), Path(clips_dir).name
    engine = open_engine(compute)
    if engine is None:
        return extract_tables(clips, motion=flow, motion_out=out, motion_workers=workers, desc=f"motion {shard}",
                              progress=progress)
    journal = journal_for(compute, "motion", shard)
    work = [Work(w.key, w.request, lambda w=w: (*w.args(), flow)) for w in _clip_work(clips, dataclasses.asdict(flow))]
    lost = engine.tasks(flow_task, work, journal, cpus=compute.motion_cpus, desc=f"motion {shard} (ray)",
                        progress=progress)
    with motion_table_writer(out, flow) as writer:
        def write(video_id: str, value) -> dict:
            q, scale, picture = value
            n = q.shape[0]
            writer.write_clip(video_id, {"frame": np.arange(n, dtype=np.int32),
                                         "time": np.arange(n, dtype=np.float32) / flow.fps,
                                         "magnitude": tensor_column(q), "scale": scale})
            return {"rows": n, **picture}

        rows = _ray_rows(work, journal, lost, write)
    journal.clear()
    return rows


def codes_shard(audio_dir: Path, out: Path, params: CodesFeatureParams, compute: ComputeParams | None = None,
                progress: bool = True) -> list[dict]:
    """The codes table of a shard's separated audio (``out``), here or on Ray's codec actors; status rows."""
    from pipeline.features import codec as codec_lib

    audio_dir, shard = Path(audio_dir), Path(audio_dir).name
    video_ids = ok_ids(audio_dir)
    engine = open_engine(compute)
    if engine is None:
        model = codec_lib.load_codec(params.codec, device=params.device)
        return codes_table(video_ids, audio_dir, out, params, model, progress=progress, desc=f"codes {shard}")
    journal = journal_for(compute, "codes", shard)
    recipe = dataclasses.asdict(params)
    work = [Work(v, fingerprint(recipe, file_sha256(audio_dir / f"{v}.wav")),
                 lambda v=v: ((audio_dir / f"{v}.wav").read_bytes(), str(audio_dir / f"{v}.wav"), params))
            for v in video_ids]
    lost = engine.actors(_load_codec_for_actor, (_model_path(params.codec), params.device), codes_batch, work,
                         journal, pool=compute.codec, desc=f"codes {shard} (ray)", progress=progress)
    found = (value for _, _, value in results(work, journal, lost) if isinstance(value, np.ndarray))
    first = next(found, None)
    n_codebooks = first.shape[0] if first is not None else codec_lib.num_codebooks(
        codec_lib.load_codec(params.codec, device="cpu"), params.bandwidth)
    with codes_table_writer(out, params, n_codebooks) as writer:
        def write(video_id: str, codes: np.ndarray) -> dict:
            _write_codes(writer, video_id, codes)
            return {"rows": int(codes.shape[1])}

        rows = _ray_rows(work, journal, lost, write)
    journal.clear()
    log.info("codes %s: %s (K=%s)", shard, summary(rows), n_codebooks)
    return rows
