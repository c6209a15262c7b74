"""Exact first-N-second clips in the formats the later stages read.

Per video, in the shard's clip folder:
  ``<id>.mp4``      H.264 at ``fps``, at most ``max_height`` tall, upright (rotation tag applied) with
                    square pixels (status columns ``rotation`` and ``sar`` say what was undone), with its AAC audio: exactly
                    ``round(seconds * fps)`` frames (feature extraction, and the reference to play)
  ``<id>.32k.wav``  the audio, mono 32 kHz, exactly ``round(seconds * 32000)`` samples
  ``<id>.44k.wav``  the audio, stereo 44.1 kHz, sample-exact (Demucs's input)
A video shorter than ``min_seconds`` gives a clip of its own length only if it reaches
``min_seconds``; otherwise, and for inputs with no audio, no video, zero bytes or corrupt
data, a status row says why and the rest of the shard goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from pipeline import media
from pipeline.config import ClipParams, ComputeParams
from pipeline.engine import LOCAL_NODE, Lost, Work, fingerprint, in_temp_dir, journal_for, open_engine, put_files, results
from pipeline.files import atomic_path, file_sha256
from pipeline.status import (NODE_FIELD, OK, PICTURE_FIELDS, STATUS_FILE, failed_row, ok_row, picture_columns,
                             read_status, status_schema, summary, write_status)

log = logging.getLogger("v2m.clip")

STATUS_SCHEMA = status_schema(
    pa.field("seconds", pa.float64()),
    pa.field("video_frames", pa.int32()),
    pa.field("width", pa.int16()),
    pa.field("height", pa.int16()),
    pa.field("source_duration", pa.float64()),
    *PICTURE_FIELDS,
    NODE_FIELD,
)


def failed(video_id: str, error_class: str, message: str) -> dict:
    return failed_row(video_id, error_class, message)


def clip_one(source: Path, out_dir: Path, video_id: str, params: ClipParams) -> dict:
    """Cut one video into its three clip files; a status row, never an exception for bad input."""
    try:
        info = media.probe(source)
    except media.MediaError as error:
        kind = "empty" if "0 bytes" in str(error) else "unreadable"
        return failed(video_id, kind, str(error))
    if info.width is None:
        return failed(video_id, "no_video", f"{source}: {info.no_video_reason}")
    if info.audio_rate is None:
        return failed(video_id, "no_audio", f"{source}: has no audio stream")
    try:
        stereo, _ = media.decode_audio(source, params.separation_rate, channels=2)
        mono, _ = media.decode_audio(source, params.target_rate, channels=1)
        frames = media.count_frames(source)
    except media.MediaError as error:
        return failed(video_id, "corrupt", str(error))
    available = min(stereo.shape[1] / params.separation_rate, frames / info.fps if info.fps else 0.0)
    if available < params.min_seconds:
        return failed(video_id, "too_short",
                      f"{source}: {available:.2f} s of audio and video, clip.min_seconds is {params.min_seconds:g}")
    seconds = min(params.seconds, available)
    try:
        clip = media.cut_clip(source, out_dir / f"{video_id}.mp4", seconds, params.fps, params.max_height, info=info)
    except media.MediaError as error:
        return failed(video_id, "corrupt", str(error))
    media.write_wav(out_dir / f"{video_id}.44k.wav", stereo[:, : round(seconds * params.separation_rate)],
                    params.separation_rate)
    media.write_wav(out_dir / f"{video_id}.32k.wav", mono[:, : round(seconds * params.target_rate)],
                    params.target_rate)
    out = media.probe(clip)
    return ok_row(video_id, seconds=seconds, video_frames=out.video_frames, width=out.width, height=out.height,
                  source_duration=info.duration, **picture_columns(info.picture))


def clip_bytes(video_id: str, name: str, data: bytes, params: ClipParams, shown: str) -> tuple[dict, dict[str, bytes]]:
    """:func:`clip_one` of a video sent as bytes (a Ray task): ``(status row, {file name: bytes})``.

    ``shown`` is the input's path on the driver, which messages name instead of the worker's temp copy.
    """
    def run(folder: Path) -> tuple[dict, dict[str, bytes]]:
        source, out = folder / name, folder / "out"
        source.write_bytes(data)
        out.mkdir()
        row = clip_one(source, out, video_id, params)
        if row["error_message"]:
            row["error_message"] = row["error_message"].replace(str(source), shown)
        return row, {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    return in_temp_dir(run)


def clip_shard(raw_dir: Path | str, out_dir: Path | str, params: ClipParams, workers: int = 2,
               progress: bool = True, compute: ComputeParams | None = None) -> list[dict]:
    """Clip every video the download stage finished in ``raw_dir``; writes ``out_dir`` atomically.

    ``compute.engine: ray`` clips on Ray tasks (``compute.clip_cpus`` each) instead of ``workers`` threads.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    inputs = [(row["video_id"], raw_dir / row["file"]) for row in read_status(raw_dir) if row["status"] == OK]
    engine = open_engine(compute)
    if engine is not None:
        journal = journal_for(compute, "clip", raw_dir.name)
        recipe = dataclasses.asdict(params)
        work = [Work(vid, fingerprint(recipe, file_sha256(path)),
                     lambda vid=vid, path=path: (vid, path.name, path.read_bytes(), params, str(path)))
                for vid, path in inputs]
        lost = engine.tasks(clip_bytes, work, journal, cpus=compute.clip_cpus, desc=f"clip {raw_dir.name} (ray)",
                            progress=progress)
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        if engine is None:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                jobs = pool.map(lambda item: clip_one(item[1], temp, item[0], params), inputs)
                rows = [{**row, "node": LOCAL_NODE} for row in tqdm(jobs, total=len(inputs), desc=f"clip {raw_dir.name}",
                                                                    unit="clip", disable=not progress)]
        else:
            rows = []
            for video_id, node, value in results(work, journal, lost):
                if isinstance(value, Lost):
                    rows.append(failed_row(video_id, "worker_lost", f"{video_id}: {value.cause}", node=None))
                    continue
                row, files = value
                put_files(temp, files)
                rows.append({**row, "node": node})
        write_status(temp / STATUS_FILE, rows, STATUS_SCHEMA)
    if engine is not None:
        journal.clear()
    log.info("clip %s: %s", raw_dir.name, summary(rows))
    return rows


__all__ = ["clip_one", "clip_shard", "STATUS_SCHEMA"]
