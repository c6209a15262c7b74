"""A static, offline HTML report of one evaluation run: one folder, ``index.html`` plus copies of its media.

The folder holds everything it shows (plots, generated and ground-truth videos, generated audio),
linked by relative paths, so it opens from ``file://`` and still works when moved or archived.
Nothing is fetched from a network: the CSS and the small media-state script (``pipeline/assets``) are inlined into the page.

The folder is written whole to a temporary sibling and renamed over the old one
(:func:`pipeline.files.atomic_path`), so a failed build leaves the previous report as it was.

A media or plot file that does not exist is an error (:class:`ReportError`, naming the clip and
the file) raised before anything is written: a report that silently lacks a clip would pass for
a complete one. A file that exists but cannot be decoded is shown in the browser, which marks it
``data-state="error"`` with a visible "could not load" label.

The media-state script: each ``<video>`` / ``<audio>`` gets ``data-state="loaded"`` on
``loadedmetadata`` (plus ``data-duration``, and ``data-size`` for a video), or ``"error"`` on
error or when a ``<video>`` has no picture (a browser drops a track it cannot decode and plays
the rest: Chromium does so with MPEG-4 Part 2 video); each ``<img>`` gets ``"loaded"`` when it
decoded (``naturalWidth > 0``), else ``"error"``; a failure also gets a visible "could not load"
label. Once every element has settled, ``<body>`` gets ``data-media-ready="yes"`` and
``data-media-errors`` (the count of failures), and the status line at the top says how many
failed.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.timing import read_timings


class ReportError(UserError, ValueError):
    """Report inputs that cannot make a complete report (a missing file, a duplicate clip); the message says which."""


# (key, label, direction/meaning) of the metrics table, in order.
METRICS = (
    ("fad", "FAD",
     "Fréchet Audio Distance between the embedding distributions of generated and reference audio; "
     "lower is better, 0 = same distribution"),
    ("kld_ref_gen", "KL(reference ‖ generated)",
     "KL divergence from the reference label distribution to the generated one; lower is better, 0 = same"),
    ("kld_gen_ref", "KL(generated ‖ reference)",
     "KL divergence from the generated label distribution to the reference one; lower is better, 0 = same"),
    ("kld_both", "KL, both directions",
     "kld_ref_gen + kld_gen_ref (symmetric); lower is better, 0 = same"),
    ("chroma_cosine", "chroma cosine",
     "frame-wise cosine of generated vs reference chroma (pitch classes), frame-weighted over all clips; "
     "with one-hot frames (the default) the share of frames whose dominant pitch class matches; higher is better"),
    ("fd_passt", "FD (PaSST)",
     "Fréchet distance between the PaSST embedding distributions of generated and reference audio (as MMAudio's "
     "av-benchmark reports FD_PaSST); lower is better, 0 = same distribution"),
    ("av_align", "AV-Align, generated",
     "IoU of the music's onsets and the video's motion peaks (within one frame; TempoTokens); higher = music "
     "follows the picture's motion more (TempoTokens' formula: several onsets on one peak all count)"),
    ("av_align_reference", "AV-Align, reference",
     "the same for the reference music on the same video: the ceiling av_align is measured against"),
    ("beat_hit", "beat hit (1 s bins)",
     "share of the reference's 1 s bins with an onset where the generated music also has one (LORIS); "
     "higher is better"),
    ("beat_coverage", "beat coverage (1 s bins)",
     "share of the generated music's 1 s bins with an onset where the reference also has one (LORIS); "
     "higher is better"),
    ("beat_f1", "beat F1 (1 s bins)", "harmonic mean of beat_hit and beat_coverage; higher is better"),
    ("beat_f1_50ms", "beat F1 (50 ms)",
     "harmonic mean of the shares of reference onsets matched by a generated onset within 50 ms and vice "
     "versa (finer than 1 s bins, which dense music fills whatever it plays); higher is better"),
)

# Where a null metric's reason is looked up, first match wins.
REASON_KEYS = {
    "fad": ("fad_reason",),
    "kld_ref_gen": ("kld_ref_gen_reason", "kld_reason"),
    "kld_gen_ref": ("kld_gen_ref_reason", "kld_reason"),
    "kld_both": ("kld_both_reason", "kld_reason"),
    "chroma_cosine": ("chroma_cosine_reason", "chroma_reason"),
    "fd_passt": ("fd_passt_reason",),
    "av_align": ("av_align_reason",),
    "av_align_reference": ("av_align_reason",),
}

COUNT_KEYS = ("pairs", "frames", "segments")

# Meanings of the learning figures that have a documented definition; other keys show without one.
LEARNING_MEANINGS = {
    "ce_true": "held-out cross-entropy with each clip's own video (nats/token); lower is better",
    "ce_shuffled": "held-out cross-entropy with other clips' videos, codes unchanged (nats/token)",
    "video_info_gain": "ce_shuffled − ce_true: how much the right video helps predict the music "
                       "(nats/token); > 0 means the model uses the video",
    "held_out_segments": "segments the cross-entropies are measured on",
    "held_out_clips": "clips those segments come from",
    "train_clips": "clips trained on",
    "steps": "optimizer steps",
    "best_val_loss": "best validation loss during training (nats/token)",
    "tokens_per_s": "training throughput (tokens per second)",
    "oracle_gain": "the same decoder conditioned on the true labels (key, mode, tempo) instead of the video: "
                   "the information available (nats/token)",
    "motion_gain": "motion-only sample set: ce without the motion branch − ce with it (nats/token)",
    "sync_gain": "ce with the motion shifted in time by half the segment − ce with the true motion, every code "
                 "frame (nats/token); > 0 means the model uses when the motion happens",
    "event_gain": "the same difference on the code frames of the video's motion events only (onset frame + the "
                  "next; nats/token): the model knows when the accent comes",
    "event_reason": "why event_gain is not computed",
    "held_out_events": "labelled motion events inside the held-out segments",
    "ce_true_events": "held-out cross-entropy on the event onset frames, true motion (nats/token)",
    "ce_shifted_events": "held-out cross-entropy on the event onset frames, motion shifted by half the segment "
                         "(nats/token)",
}


def _asset(name: str) -> str:
    """A file of the report's page (``pipeline/assets``: package data, so an installed wheel has it too)."""
    return (resources.files("pipeline") / "assets" / name).read_text(encoding="utf-8")


def build_report(out_dir: Path | str, *, eval_summary: dict, clip_rows: list[dict], learning: dict | None,
                 plots: list[Path], media: list[dict], notice: str | None,
                 title: str = "v2m evaluation report", timings: list[dict] | None = None) -> Path:
    """Write the report folder ``out_dir`` (index.html, plots/, media/) atomically; return the index.html path.

    Args:
        eval_summary: the evaluation summary: metrics ``fad``, ``kld_ref_gen``, ``kld_gen_ref``,
            ``kld_both``, ``chroma_cosine`` (None = not computed, with the reason under
            ``fad_reason`` / ``kld_reason`` / ``<metric>_reason``), counts ``pairs``, ``frames``,
            ``segments``; any other fields are listed too.
        clip_rows: per-clip metrics, one dict per clip with a ``video_id``.
        learning: the learning figures (``ce_true``, ``ce_shuffled``, ``video_info_gain``, ...),
            every key shown; None = no such section content.
        plots: image files (PNG) to show, captioned with their file names.
        media: per clip ``{"video_id", "generated": mp4, "reference": mp4 or None,
            "generated_audio": wav (optional)}``; every file is copied into the folder.
        notice: a headline notice shown above everything; None for none.
        timings: the stages' last wall times (pipeline/timing.py rows: ``stage``, ``status``,
            ``seconds``, ``startup_seconds``, ``threads``, ``max_rss_mb``, ``finished``); None or
            empty = no timing section.

    Raises:
        ReportError: a plot or media file that does not exist, a media item without a
            ``video_id`` or ``generated`` video, or a clip listed twice. Nothing is written then.
    """
    out_dir = Path(out_dir)
    plot_files = _plan_plots(plots)
    clips = _plan_media(media)
    rows_by_id = {str(row.get("video_id")): row for row in clip_rows}
    with atomic_path(out_dir) as temp:
        temp.mkdir()
        for source, relative in plot_files + [f for clip in clips for f in clip["files"]]:
            target = temp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(source, target)
        page = _page(title=title, notice=notice, eval_summary=eval_summary, clip_rows=clip_rows,
                     learning=learning, plot_files=plot_files, clips=clips, rows_by_id=rows_by_id,
                     timings=timings or [])
        (temp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


# ---- planning: check inputs and choose file names before anything is written ----

def _safe_name(text: str, taken: set[str]) -> str:
    """A file-name-safe, unique form of ``text`` (letters, digits, ``._-``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "item"
    base = base[:80]
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name.lower())
    return name


def _existing_file(path: Any, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ReportError(f"report: {what} {path} {state}")
    return path


def _plan_plots(plots: Iterable[Path]) -> list[tuple[Path, str]]:
    taken: set[str] = set()
    planned = []
    for plot in plots:
        source = _existing_file(plot, "plot")
        name = _safe_name(source.stem, taken) + source.suffix.lower()
        planned.append((source, f"plots/{name}"))
    return planned


def _plan_media(media: Iterable[dict]) -> list[dict]:
    taken: set[str] = set()
    seen: set[str] = set()
    clips = []
    for index, item in enumerate(media):
        video_id = item.get("video_id")
        if video_id is None or str(video_id) == "":
            raise ReportError(f"report: media item {index} has no video_id")
        video_id = str(video_id)
        if video_id in seen:
            raise ReportError(f"report: clip {video_id!r} is listed twice in media")
        seen.add(video_id)
        if item.get("generated") is None:
            raise ReportError(f"report: clip {video_id!r} has no generated video")
        folder = f"media/{_safe_name(video_id, taken)}"
        clip = {"video_id": video_id, "files": []}
        for key, what, stem in (("generated", "generated video", "generated"),
                                ("reference", "ground-truth video", "reference"),
                                ("generated_audio", "generated audio", "generated_audio")):
            if item.get(key) is None:
                clip[key] = None
                continue
            source = _existing_file(item[key], f"{what} of clip {video_id!r}:")
            relative = f"{folder}/{stem}{source.suffix.lower()}"
            clip[key] = relative
            clip["files"].append((source, relative))
        clips.append(clip)
    return clips


# ---- rendering ----

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _url(relative: str) -> str:
    return _e(quote(relative))


def fmt(value: Any) -> str:
    """How a value shows in the tables: ints as they are, floats to 4 decimals (or 3 significant in
    exponent form when tiny or huge), None as an em dash, other values as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        if abs(value) >= 100:
            return f"{value:.2f}"
        return f"{value:.4f}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _raw(value: Any) -> str:
    """The exact value, as JSON, for a ``data-value`` attribute."""
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _value_cell(value: Any) -> str:
    cls = ' class="num"' if _is_number(value) else ""
    return f'<td{cls} data-value="{_e(_raw(value))}">{_e(fmt(value))}</td>'


def _reason(summary: dict, metric: str) -> str | None:
    for key in REASON_KEYS.get(metric, (f"{metric}_reason",)):
        if summary.get(key):
            return str(summary[key])
    return None


def _metrics_section(summary: dict) -> str:
    rows = []
    for key, label, meaning in METRICS:
        value = summary.get(key)
        if value is None:
            reason = _reason(summary, key) or "no reason given"
            cell = (f'<td class="missing" data-value="null">not computed '
                    f'<span class="reason">({_e(reason)})</span></td>')
        else:
            cell = _value_cell(value)
        rows.append(f'<tr data-metric="{_e(key)}"><th scope="row">{_e(label)} <code>{_e(key)}</code></th>'
                    f'{cell}<td class="meaning">{_e(meaning)}</td></tr>')
    used = {k for k, _, _ in METRICS} | {r for keys in REASON_KEYS.values() for r in keys}
    counts = [(k, summary[k]) for k in COUNT_KEYS if k in summary]
    other = [(k, v) for k, v in summary.items() if k not in used and k not in COUNT_KEYS]
    parts = ['<h2 id="metrics-heading">Metrics</h2>',
             '<table id="metrics"><thead><tr><th>metric</th><th>value</th><th>direction / meaning</th></tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>']
    if counts:
        parts.append("<h3>Counts</h3>" + _key_value_table("counts", counts))
    if other:
        parts.append("<h3>Other summary fields</h3>" + _key_value_table("summary-other", other))
    return "\n".join(parts)


def _key_value_table(table_id: str, items: list[tuple[str, Any]], meanings: dict | None = None) -> str:
    head = "<th>meaning</th>" if meanings is not None else ""
    rows = []
    for key, value in items:
        meaning = f'<td class="meaning">{_e(meanings.get(key, ""))}</td>' if meanings is not None else ""
        rows.append(f'<tr data-key="{_e(key)}"><th scope="row"><code>{_e(key)}</code></th>'
                    f'{_value_cell(value)}{meaning}</tr>')
    return (f'<table id="{_e(table_id)}"><thead><tr><th>name</th><th>value</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _learning_section(learning: dict | None) -> str:
    heading = '<h2 id="learning-heading">Learning figures</h2>'
    if learning is None:
        return heading + '<p id="learning-missing">No learning figures were given for this run.</p>'
    return heading + _key_value_table("learning", _flatten(learning), LEARNING_MEANINGS)


def _caption(path: str) -> str:
    return Path(path).stem.replace("_", " ").replace("-", " ")


def _plots_section(plot_files: list[tuple[Path, str]]) -> str:
    if not plot_files:
        return ""
    figures = []
    for source, relative in plot_files:
        caption = _caption(source.name)
        figures.append(f'<figure><img src="{_url(relative)}" alt="{_e(caption)}" loading="eager">'
                       f'<figcaption>{_e(caption)} <span class="meaning">({_e(source.name)})</span>'
                       '</figcaption></figure>')
    return '<h2 id="plots-heading">Plots</h2><div class="plots">' + "".join(figures) + "</div>"


def _media_tag(kind: str, relative: str | None, role: str, missing_text: str) -> str:
    if relative is None:
        return f'<div class="placeholder" data-role="{_e(role)}">{_e(missing_text)}</div>'
    return (f'<{kind} controls preload="metadata" data-role="{_e(role)}" src="{_url(relative)}"></{kind}>'
            f'<a class="file-link" href="{_url(relative)}">{_e(Path(relative).name)}</a>')


def _clip_anchor(video_id: str) -> str:
    return "clip-" + re.sub(r"[^A-Za-z0-9_-]", "_", video_id)


def _media_section(clips: list[dict], rows_by_id: dict) -> str:
    if not clips:
        return ""
    blocks = []
    for clip in clips:
        video_id = clip["video_id"]
        row = rows_by_id.get(video_id)
        if row is None:
            metrics = '<p class="meaning">No per-clip metrics for this clip.</p>'
        else:
            metrics = _key_value_table(f"clip-metrics-{_clip_anchor(video_id)}",
                                       [(k, v) for k, v in row.items() if k != "video_id"])
        audio = ""
        if clip["generated_audio"] is not None:
            audio = ('<figure><figcaption>generated audio</figcaption>'
                     + _media_tag("audio", clip["generated_audio"], "generated-audio", "") + "</figure>")
        blocks.append(
            f'<div class="clip" id="{_e(_clip_anchor(video_id))}" data-video-id="{_e(video_id)}">'
            f'<h3>{_e(video_id)}</h3><div class="pair">'
            f'<figure><figcaption>generated</figcaption>'
            f'{_media_tag("video", clip["generated"], "generated", "")}</figure>'
            f'<figure><figcaption>ground truth</figcaption>'
            f'{_media_tag("video", clip["reference"], "reference", "no ground-truth video")}</figure>'
            f'{audio}</div>{metrics}</div>')
    return '<h2 id="media-heading">Clips: generated vs ground truth</h2>' + "".join(blocks)


def _clips_table(clip_rows: list[dict], with_media: set[str]) -> str:
    if not clip_rows:
        return '<h2 id="clips-heading">Per-clip metrics</h2><p>No per-clip rows.</p>'
    columns: list[str] = ["video_id"]
    for row in clip_rows:
        columns.extend(k for k in row if k not in columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in clip_rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "video_id":
                text = _e(fmt(value))
                if str(value) in with_media:
                    text = f'<a href="#{_e(_clip_anchor(str(value)))}">{text}</a>'
                cells.append(f"<td>{text}</td>")
            else:
                cells.append(_value_cell(value))
        body.append(f'<tr data-video-id="{_e(row.get("video_id"))}">{"".join(cells)}</tr>')
    return (f'<h2 id="clips-heading">Per-clip metrics</h2><div class="scroll"><table id="clips">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _timings_section(timings: list[dict]) -> str:
    if not timings:
        return ""
    columns = (("stage", "stage"), ("status", "status"), ("seconds", "wall s"),
               ("startup_seconds", "of which start-up s"), ("threads", "torch threads"),
               ("max_rss_mb", "max RSS MB"), ("finished", "finished (UTC)"))
    head = "".join(f'<th scope="col">{_e(label)}</th>' for _, label in columns)
    body = []
    for row in timings:
        cells = "".join(_value_cell(row.get(key)) if key not in ("stage", "status", "finished")
                        else f"<td>{_e(row.get(key))}</td>" for key, _ in columns)
        body.append(f'<tr data-stage="{_e(row.get("stage"))}">{cells}</tr>')
    total = sum(row.get("seconds") or 0 for row in timings if row.get("status") == "ok")
    return ('<h2 id="timings-heading">Stage wall times</h2><p class="meaning">Each stage\'s last run on this '
            'machine, from its process start (Python start-up and imports included), as recorded in '
            f'.cache/v2m/timings; total of the ok rows {total:.1f} s. The report stage itself is not in it.</p>'
            f'<table id="timings"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _page(*, title: str, notice: str | None, eval_summary: dict, clip_rows: list[dict], learning: dict | None,
          plot_files: list[tuple[Path, str]], clips: list[dict], rows_by_id: dict, timings: list[dict]) -> str:
    notice_html = (f'<div class="notice" id="notice" role="note"><strong>Note:</strong> {_e(notice)}</div>'
                   if notice else "")
    sections = [
        _metrics_section(eval_summary),
        _learning_section(learning),
        _plots_section(plot_files),
        _media_section(clips, rows_by_id),
        _clips_table(clip_rows, {c["video_id"] for c in clips}),
        _timings_section(timings),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_asset('report.css')}</style></head>\n"
        f"<body><h1>{_e(title)}</h1>"
        '<p id="media-status">Loading media…</p>'
        f"{notice_html}\n" + "\n".join(s for s in sections if s) +
        f"\n<script>{_asset('report.js')}</script>\n</body></html>\n"
    )


RANDOM_DECODER_NOTICE = (
    "This run uses the embedded default's codec ({codec}): its codebooks are calibrated, but its decoder has "
    "RANDOM weights, so the generated audio below is not music and FAD/KLD/chroma on it say nothing about "
    "musical quality. The quality signal of the embedded default is in token space: the learning figures "
    "(held-out cross-entropy with the right video vs shuffled videos). With real weights (facebook/musicgen-small, "
    "CLIP, VGGish, PaSST; see the README's paper configuration) this page shows real music and real metrics.")
EMBEDDED_DECODER_NOTICE = (
    "This run uses the embedded default's codec ({codec}): random weights with calibrated codebooks, and its audio "
    "comes from the embedded decoder that codec_init fitted: a spectral lookup (one log-spectrum table per codebook, "
    "summed) plus Griffin-Lim phase recovery, NOT EnCodec's decoder. It carries key, chords and rhythm, so chroma "
    "and the sync metrics below say whether the music follows the video; it sounds smeared and phasey, so it says "
    "nothing about audio quality. With real weights (facebook/musicgen-small, CLIP, VGGish, PaSST; see the README's "
    "paper configuration) this page shows real music and real metrics.")


def report_run(shards: list[str], model_dir: Path | str, report_clips: int, *, metrics_dir: Path = Path("metrics"),
               clips_root: Path = Path("data/clips"), generated: Path = Path("data/generated")) -> str:
    """The report stage: the report of a pipeline run from its outputs (``metrics/eval.json``, the clips
    table, the learning figures, the plots, the generated and ground-truth videos) into
    ``metrics/report``; returns one line saying what it holds."""
    import pyarrow.parquet as pq

    from pipeline.features.codec import has_embedded_decoder, is_random_codec
    from pipeline.features.recipe import read_recipe

    summary = json.loads((metrics_dir / "eval.json").read_text())
    rows = pq.read_table(metrics_dir / "eval" / "clips.parquet").to_pylist()
    learning_file = metrics_dir / "learning.json"
    learning = json.loads(learning_file.read_text()) if learning_file.is_file() else None
    codec = read_recipe(model_dir).features.codes.codec
    notice = None
    if is_random_codec(codec):
        notice = (EMBEDDED_DECODER_NOTICE if has_embedded_decoder(codec) else RANDOM_DECODER_NOTICE).format(codec=codec)
    media = []
    for row in rows[:report_clips]:
        video_id = row["video_id"]
        reference = next((clips_root / shard / f"{video_id}.mp4" for shard in shards
                          if (clips_root / shard / f"{video_id}.mp4").is_file()), None)
        media.append({"video_id": video_id, "generated": generated / f"{video_id}.mp4", "reference": reference})
    plots = sorted((metrics_dir / "eval" / "plots").glob("*.png"))
    index = build_report(metrics_dir / "report", eval_summary=summary, clip_rows=rows, learning=learning,
                         plots=plots, media=media, notice=notice, timings=read_timings())
    return f"report: {index} ({len(media)} clips with video, {len(plots)} plots)"

