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

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from pipeline import media
from pipeline.config import ClipParams
from pipeline.files import atomic_path
from pipeline.status import (OK, PICTURE_FIELDS, STATUS_FILE, failed_row, ok_row, picture_columns, read_status,
                             status_schema, summary, write_status)

log = logging.getLogger("v2m.clip")

STATUS_SCHEMA = status_schema(
    pa.field("seconds", pa.float64()),
    pa.field("video_frames", pa.int32()),
    pa.field("width", pa.int16()),
    pa.field("height", pa.int16()),
    pa.field("source_duration", pa.float64()),
    *PICTURE_FIELDS,
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


def clip_shard(raw_dir: Path | str, out_dir: Path | str, params: ClipParams, workers: int = 2,
               progress: bool = True) -> list[dict]:
    """Clip every video the download stage finished in ``raw_dir``; writes ``out_dir`` atomically."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    inputs = [(row["video_id"], raw_dir / row["file"]) for row in read_status(raw_dir) if row["status"] == OK]
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(lambda item: clip_one(item[1], temp, item[0], params), inputs)
            rows = list(tqdm(jobs, total=len(inputs), desc=f"clip {raw_dir.name}", unit="clip", disable=not progress))
        write_status(temp / STATUS_FILE, rows, STATUS_SCHEMA)
    log.info("clip %s: %s", raw_dir.name, summary(rows))
    return rows


__all__ = ["clip_one", "clip_shard", "STATUS_SCHEMA"]
