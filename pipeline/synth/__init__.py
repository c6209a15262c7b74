"""v2m-synth: a synthetic video-music sample set where the mapping from video to music is known.

Layout of a rendered set (``DIR``)::

    DIR/<video_id>.mp4                       H.264 video + AAC stereo mix (accompaniment + vocals)
    DIR/stems/<video_id>.accompaniment.wav   clean accompaniment, stereo, 16-bit
    DIR/stems/<video_id>.vocals.wav          vocal stand-in, stereo, 16-bit
    DIR/labels.parquet                       one row per clip (see LABEL_COLUMNS)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import media, threads
from pipeline.config import SampleParams, as_dict
from pipeline.files import atomic_path
from pipeline.synth.music import render_stems
from pipeline.synth.scene import background_rgb, render_frames
from pipeline.synth.spec import KEY_NAMES, ClipSpec, sample_clip_spec

LABELS_FILE = "labels.parquet"

LABEL_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("video_file", pa.string()),
    ("accompaniment_file", pa.string()),
    ("vocals_file", pa.string()),
    ("key", pa.int8()),
    ("key_name", pa.string()),
    ("mode", pa.string()),
    ("bpm", pa.float32()),
    ("first_beat", pa.float32()),
    ("chord_change_times", pa.list_(pa.float32())),
    ("chord_roots", pa.list_(pa.int8())),
    ("cut_times", pa.list_(pa.float32())),
    ("event_times", pa.list_(pa.float32())),
    ("object_speed", pa.float32()),
    ("object_speed_per_width", pa.float32()),
    ("n_objects", pa.int8()),
    ("background_rgb", pa.list_(pa.uint8(), 3)),
    ("motion_only", pa.bool_()),
    ("seconds", pa.float32()),
    ("fps", pa.int16()),
    ("width", pa.int16()),
    ("height", pa.int16()),
    ("sample_rate", pa.int32()),
    ("vocal_gain", pa.float32()),
    ("seed", pa.int64()),
])


def label_row(spec: ClipSpec) -> dict:
    """The labels.parquet row of one clip."""
    return {
        "video_id": spec.video_id,
        "video_file": f"{spec.video_id}.mp4",
        "accompaniment_file": f"stems/{spec.video_id}.accompaniment.wav",
        "vocals_file": f"stems/{spec.video_id}.vocals.wav",
        "key": spec.key, "key_name": KEY_NAMES[spec.key], "mode": spec.mode, "bpm": spec.bpm,
        "first_beat": spec.first_beat,
        "chord_change_times": list(spec.chord_change_times),
        "chord_roots": [spec.chord_root(d) for _, d in spec.chords],
        "cut_times": list(spec.cut_times),
        "event_times": list(spec.event_times),
        "object_speed": spec.object_speed,
        "object_speed_per_width": spec.object_speed / spec.width,
        "n_objects": len(spec.scenes[0].objects),
        "background_rgb": list(background_rgb(spec.key, spec.mode)),
        "motion_only": spec.motion_only, "seconds": spec.seconds, "fps": spec.fps,
        "width": spec.width, "height": spec.height, "sample_rate": spec.sample_rate,
        "vocal_gain": spec.vocal_gain, "seed": spec.seed,
    }


def render_clip(spec: ClipSpec, out_dir: Path) -> dict:
    """Write one clip's mp4 and stems into ``out_dir``; returns its label row."""
    row = label_row(spec)
    accompaniment, vocals = render_stems(spec)
    media.write_wav(out_dir / row["accompaniment_file"], accompaniment, spec.sample_rate)
    media.write_wav(out_dir / row["vocals_file"], vocals, spec.sample_rate)
    media.write_mp4(out_dir / row["video_file"], render_frames(spec), spec.fps,
                    accompaniment + vocals, spec.sample_rate)
    return row


def render_sample_set(out: Path | str, params: SampleParams, progress: bool = True, workers: int | None = None) -> Path:
    """Render the whole set into ``out``, replacing it atomically (a killed run leaves no half set).

    Clips are independent (each from its own spec), so ``workers`` processes render them; the files
    are the same for any count. ``workers`` None: the cores the thread policy found free
    (:mod:`pipeline.threads`; 1 before any stage applied it).

    Returns:
        the path of labels.parquet.
    """
    out = Path(out)
    workers = workers or threads.free_workers()
    specs = [sample_clip_spec(params, index) for index in range(params.n_clips)]
    with atomic_path(out) as temp:
        (temp / "stems").mkdir(parents=True)
        with contextlib.ExitStack() as stack:
            if workers > 1 and len(specs) > 1:
                # fork: the workers need nothing but this module, and start in milliseconds.
                pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(workers, len(specs)),
                                                               mp_context=multiprocessing.get_context("fork")))
                rendered = pool.map(render_clip, specs, repeat(temp))
            else:
                rendered = map(render_clip, specs, repeat(temp))
            rows = list(tqdm(rendered, desc=f"v2m synth -> {out}", total=len(specs), unit="clip", disable=not progress))
        table = pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
        table = table.replace_schema_metadata({"v2m.synth.params": json.dumps(as_dict(params))})
        pq.write_table(table, temp / LABELS_FILE)
    return out / LABELS_FILE


def read_labels(directory: Path | str) -> list[dict]:
    """The rows of a set's labels.parquet, as dicts."""
    return pq.read_table(Path(directory) / LABELS_FILE).to_pylist()


def read_event_times(directory: Path | str) -> dict[str, list[float]] | None:
    """Clip id -> motion event times (seconds) of a set, or None when it has no labels.parquet or a
    labels file from before events (no ``event_times`` column)."""
    path = Path(directory) / LABELS_FILE
    if not path.is_file() or "event_times" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path, columns=["video_id", "event_times"]).to_pydict()
    return {v: [float(t) for t in times] for v, times in zip(table["video_id"], table["event_times"])}


__all__ = ["ClipSpec", "render_clip", "render_sample_set", "read_labels", "read_event_times", "sample_clip_spec", "label_row",
           "LABELS_FILE"]
