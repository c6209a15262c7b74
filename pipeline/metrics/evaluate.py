"""Evaluate a folder of generated clips against a folder of reference clips.

Files pair by stem (``<video_id>.wav`` in both folders; other files are ignored). Three metrics,
each as shared docs/metrics.md defines it:

- ``chroma_cosine``: needs no weights (:mod:`.chroma`); the reference is cut or zero-padded to
  the generated clip's length.
- ``fad``: VGGish embeddings (:mod:`.vggish`) of every window of every file, each file at its
  full length, pooled per SET; Fréchet distance (:mod:`.fad`); needs a VGGish checkpoint, else
  null with ``fad_reason``.
- ``kld_ref_gen`` = KL(reference || generated) (audiocraft ``kld`` / ``kld_pq``), ``kld_gen_ref`` =
  KL(generated || reference) (``kld_qp``), ``kld_both`` = their sum: PaSST probabilities of 20 s
  segments (:mod:`.passt`, :mod:`.kld`), averaged over all segments; needs a PaSST checkpoint, else
  null with ``kld_reason``. Both clips of a pair are cut to the shorter one's length first
  (audiocraft cuts both to one ``sizes``), so segment i of one pairs with segment i of the other;
  should the counts still differ, only the common count is used.
- ``fd_passt``: Fréchet distance (:mod:`.fad`'s code) between the PaSST embeddings (the 768-d
  features beside the logits) of the same 20 s segments, pooled per SET; needs the PaSST
  checkpoint, else null with ``fd_passt_reason``.
- Sync (:mod:`.sync`): ``av_align`` of the generated music and ``av_align_reference`` of the
  reference music on the same video (needs the videos, matched by stem, else null with
  ``av_align_reason``); ``beat_hit`` / ``beat_coverage`` / ``beat_f1`` (LORIS, 1 s bins) and the
  finer ``beat_hit_50ms`` / ``beat_coverage_50ms`` / ``beat_f1_50ms`` (onsets within 50 ms).

A random-weight checkpoint makes numbers, but they mean nothing about audio quality: the
summary names the checkpoint (path and sha256 prefix) so a reader can tell.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import threads
from pipeline.config import EvaluateParams
from pipeline.errors import UserError
from pipeline.files import atomic_path, file_sha256
from pipeline.media import read_wav
from pipeline.audio import mono_resampled
from pipeline.metrics import chroma as chroma_metric
from pipeline.metrics import sync
from pipeline.metrics.fad import embedding_stats, frechet_distance
from pipeline.metrics.vggish import FRONT_END_PRESETS, embed, load_vggish

KLD_SAMPLE_RATE = 32000
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")
# Per-clip sync columns; the summary holds their means over the clips that have them.
SYNC_KEYS = ("av_align", "av_align_reference", "beat_hit", "beat_coverage", "beat_hit_50ms", "beat_coverage_50ms")

ROW_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("generated_seconds", pa.float64()),
    ("reference_seconds", pa.float64()),
    ("chroma_cosine", pa.float64()),
    ("chroma_frames", pa.int64()),
    ("kld_ref_gen", pa.float64()),
    ("kld_gen_ref", pa.float64()),
    ("kld_segments", pa.int64()),
    *((key, pa.float64()) for key in SYNC_KEYS),
    ("video_peaks", pa.int64()),
    ("generated_onsets", pa.int64()),
    ("reference_onsets", pa.int64()),
])


class EvaluationError(UserError):
    """Folders that cannot be evaluated; the message names them and the reason."""


def wav_files(folder: Path | str) -> dict[str, Path]:
    """``stem -> path`` of the ``*.wav`` files directly in ``folder`` (other files ignored).

    Raises:
        EvaluationError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    return {path.stem: path for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix.lower() == ".wav" and not path.name.startswith(".")}


def wav_files_of(folders: Path | str | Sequence[Path | str]) -> dict[str, Path]:
    """:func:`wav_files` of one folder or several (one per shard); a stem in several is taken from the first."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    found: dict[str, Path] = {}
    for folder in reversed(folders):
        found.update(wav_files(folder))
    return found


def video_files_of(folders: Path | str | Sequence[Path | str]) -> dict[str, Path]:
    """``stem -> path`` of the videos (``.mp4``, ``.mkv``, ``.mov``, ``.webm``, ``.avi``) directly in one
    folder or several (a stem in several is taken from the first).

    Raises:
        EvaluationError: a folder that is not one.
    """
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    found: dict[str, Path] = {}
    for folder in reversed([Path(f) for f in folders]):
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such video folder")
        found.update({path.stem: path for path in sorted(folder.iterdir()) if path.is_file()
                      and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")})
    return found


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def checkpoint_identity(path: Path | str, prefix_chars: int = 16) -> dict[str, str]:
    """``{"path": ..., "sha256": first prefix_chars hex digits}`` of a checkpoint file."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)[:prefix_chars]}


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def evaluate_pairs(generated_dir: Path | str, reference_dir: Path | str | Sequence[Path | str], *,
                   vggish: Path | str | None = None, passt: Path | str | None = None,
                   chroma_argmax: bool = True, chroma_n_fft: int = chroma_metric.N_FFT,
                   chroma_hop: int = chroma_metric.HOP,
                   fad_preset: str = "google", fad_method: str = "sqrtm",
                   kld_segment_seconds: float = 20.0, kld_min_seconds: float = 0.15, kld_eps: float = 1e-6,
                   device: str = "cpu", progress: bool = True,
                   videos: Path | str | Sequence[Path | str] | None = None,
                   workers: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All metrics of the generated clips against their references.

    Args:
        generated_dir: folder of generated ``<video_id>.wav``.
        reference_dir: folder of reference ``<video_id>.wav`` (other files, e.g. status.parquet, ignored),
            or a list of folders (one per shard; a stem found in several is taken from the first).
        vggish: torchvggish state dict (``vggish-10086976.pth``); None = no FAD.
        passt: PaSST 20 s checkpoint (``passt-s-f128-20sec-p16-s10-ap.474-swa.pt``); None = no KLD.
        chroma_argmax: one-hot chroma frames (published: True).
        chroma_n_fft, chroma_hop: chroma STFT size and hop (published: 16384, 4096).
        fad_preset: a key of :data:`pipeline.metrics.vggish.FRONT_END_PRESETS`: ``"google"`` (Google's FAD
            tool, as audiocraft runs it: the published figures) or ``"frechet_audio_distance"`` (that package's
            torchvggish conventions).
        fad_method: ``"sqrtm"`` (published) or ``"eigen"``, see :func:`pipeline.metrics.fad.frechet_distance`.
        kld_segment_seconds, kld_min_seconds: PaSST segments (published: 20 s, dropped at 0.15 s or less).
        kld_eps: added to the second distribution inside each KL (published: 1e-6).
        device: torch device for VGGish and PaSST.
        progress: show a progress bar over clips.
        videos: folder(s) of the videos the music is for (``<video_id>.mp4``, matched by stem), for
            AV-Align; None = no AV-Align (null with ``av_align_reason``).
        workers: threads computing the sync columns beside the other metrics; None = the cores the thread
            policy found free (:mod:`pipeline.threads`; 1 before any stage applied it).

    Returns:
        ``(summary, rows)``: the summary's keys are ``fad``, ``kld_ref_gen``, ``kld_gen_ref``,
        ``kld_both``, ``chroma_cosine`` (null where unavailable, with ``fad_reason`` /
        ``kld_reason`` / ``chroma_reason`` saying why), the counts ``pairs``, ``generated_files``,
        ``reference_files``, ``unpaired_generated`` (stems without a reference), ``unused_references``
        (a count: a reference folder usually holds more clips than were generated),
        ``chroma_frames``, ``fad_windows_generated``, ``fad_windows_reference``, ``kld_segments``,
        the checkpoints used (``fad_embedder``, ``kld_classifier``: path and sha256 prefix, or
        null) and ``settings``; ``fd_passt`` (``fd_passt_reason``), the sync means ``av_align``,
        ``av_align_reference`` (``av_align_reason``, ``av_align_videos``), ``beat_hit``,
        ``beat_coverage``, ``beat_f1`` and their ``_50ms`` variants. One row per pair, with the
        columns of :data:`ROW_SCHEMA`.

    Raises:
        EvaluationError: a folder is missing, or no stem is in both folders.
        UserError: an unreadable wav or checkpoint (the message names the file).
    """
    if fad_preset not in FRONT_END_PRESETS:
        raise UserError(f"fad_preset {fad_preset!r}: unknown; choose one of {sorted(FRONT_END_PRESETS)}")
    generated_files, reference_files = wav_files(generated_dir), wav_files_of(reference_dir)
    if not isinstance(reference_dir, (str, Path)):
        reference_dir = ", ".join(map(str, reference_dir))
    stems = sorted(set(generated_files) & set(reference_files))
    if not stems:
        raise EvaluationError(f"no clip to evaluate: none of the {len(generated_files)} .wav files in "
                              f"{generated_dir} has a namesake among the {len(reference_files)} in {reference_dir}")
    front_end = FRONT_END_PRESETS[fad_preset]
    video_files = video_files_of(videos) if videos is not None else {}
    vggish_model = load_vggish(vggish, device=device) if vggish is not None else None
    passt_model = None
    if passt is not None:
        # Imported here so that chroma and FAD work without the KLD modules' imports.
        from pipeline.metrics.kld import kl_rows
        from pipeline.metrics.passt import load_passt, segment_embeddings, segment_probabilities

        passt_model = load_passt(passt).to(device)

    chroma_options = dict(n_fft=chroma_n_fft, hop=chroma_hop, argmax=chroma_argmax)
    rows: list[dict[str, Any]] = []
    chroma_sum, chroma_total = 0.0, 0
    embeddings: dict[str, list[np.ndarray]] = {"generated": [], "reference": []}
    kld_ref_gen_sum, kld_gen_ref_sum, kld_total = 0.0, 0.0, 0
    passt_embeddings: dict[str, list[np.ndarray]] = {"generated": [], "reference": []}
    # The sync columns (onsets, and the video's optical flow for AV-Align) were most of the time and need
    # nothing from the loop below: side threads compute them meanwhile, in order (OpenCV, PyAV and
    # numpy's large operations release the GIL).
    side = ThreadPoolExecutor(max_workers=workers or threads.free_workers(), thread_name_prefix="sync")
    try:
        sync_rows = [side.submit(_sync_row_of_files, generated_files[stem], reference_files[stem], video_files.get(stem))
                     for stem in stems]
        for stem, sync_row in zip(tqdm(stems, desc="metrics", unit="clip", disable=not progress), sync_rows):
            generated, generated_rate = read_wav(generated_files[stem])
            reference, reference_rate = read_wav(reference_files[stem])
            gen32 = mono_resampled(generated, generated_rate, chroma_metric.SAMPLE_RATE)
            ref32 = mono_resampled(reference, reference_rate, chroma_metric.SAMPLE_RATE)
            clip_sum, clip_frames = chroma_metric.chroma_cosine_sums(gen32, ref32, chroma_metric.SAMPLE_RATE,
                                                                     **chroma_options)
            chroma_sum += clip_sum
            chroma_total += clip_frames
            row = {"video_id": stem, "generated_seconds": generated.shape[1] / generated_rate,
                   "reference_seconds": reference.shape[1] / reference_rate,
                   "chroma_cosine": clip_sum / clip_frames if clip_frames else None, "chroma_frames": clip_frames,
                   "kld_ref_gen": None, "kld_gen_ref": None, "kld_segments": None}
            row.update(sync_row.result())
            if vggish_model is not None:
                embeddings["generated"].append(embed(vggish_model, generated, generated_rate, **front_end))
                embeddings["reference"].append(embed(vggish_model, reference, reference_rate, **front_end))
            if passt_model is not None:
                common = min(gen32.shape[0], ref32.shape[0])
                gen_probs = segment_probabilities(passt_model, gen32[:common], KLD_SAMPLE_RATE,
                                                  segment_seconds=kld_segment_seconds, min_seconds=kld_min_seconds)
                ref_probs = segment_probabilities(passt_model, ref32[:common], KLD_SAMPLE_RATE,
                                                  segment_seconds=kld_segment_seconds, min_seconds=kld_min_seconds)
                segments = min(gen_probs.shape[0], ref_probs.shape[0])
                for name, clip in (("generated", gen32[:common]), ("reference", ref32[:common])):
                    passt_embeddings[name].append(segment_embeddings(passt_model, clip, KLD_SAMPLE_RATE,
                                                                     segment_seconds=kld_segment_seconds,
                                                                     min_seconds=kld_min_seconds))
                row["kld_segments"] = segments
                if segments:
                    ref_gen = kl_rows(ref_probs[:segments], gen_probs[:segments], kld_eps)
                    gen_ref = kl_rows(gen_probs[:segments], ref_probs[:segments], kld_eps)
                    row["kld_ref_gen"], row["kld_gen_ref"] = float(ref_gen.mean()), float(gen_ref.mean())
                    kld_ref_gen_sum += float(ref_gen.sum())
                    kld_gen_ref_sum += float(gen_ref.sum())
                    kld_total += segments
            rows.append(row)
    finally:
        side.shutdown(cancel_futures=True)   # on an error, the clips not started yet are not waited for

    summary: dict[str, Any] = {
        "fad": None, "fad_reason": None,
        "kld_ref_gen": None, "kld_gen_ref": None, "kld_both": None, "kld_reason": None,
        "chroma_cosine": chroma_sum / chroma_total if chroma_total else None,
        "chroma_reason": None if chroma_total else "every generated clip is empty: no chroma frames",
        "pairs": len(stems), "generated_files": len(generated_files), "reference_files": len(reference_files),
        "unpaired_generated": sorted(set(generated_files) - set(reference_files)),
        "unused_references": len(set(reference_files) - set(generated_files)),
        "chroma_frames": chroma_total,
        "fad_windows_generated": sum(e.shape[0] for e in embeddings["generated"]) if vggish_model else None,
        "fad_windows_reference": sum(e.shape[0] for e in embeddings["reference"]) if vggish_model else None,
        "kld_segments": kld_total if passt_model is not None else None,
        "fad_embedder": None, "kld_classifier": None,
        "settings": {
            "chroma": {"sample_rate": chroma_metric.SAMPLE_RATE, "n_fft": chroma_n_fft, "hop": chroma_hop,
                       "argmax": chroma_argmax, "norm_eps": chroma_metric.NORM_EPS,
                       "cosine_eps": chroma_metric.COSINE_EPS},
            "fad": {"preset": fad_preset, **front_end, "method": fad_method},
            "kld": {"sample_rate": KLD_SAMPLE_RATE, "segment_seconds": kld_segment_seconds,
                    "min_seconds": kld_min_seconds, "eps": kld_eps},
        },
    }
    if vggish_model is None:
        summary["fad_reason"] = ("no VGGish checkpoint given (vggish=PATH to torchvggish's vggish-10086976.pth); "
                                 "FAD needs the real embedding weights")
    else:
        summary["fad_embedder"] = {**checkpoint_identity(vggish), "model": "VGGish (torchvggish keys), "
                                   "128-d before the last activation, no PCA"}
        windows = (summary["fad_windows_generated"], summary["fad_windows_reference"])
        if min(windows) < 2:
            summary["fad_reason"] = (f"too few VGGish windows for a covariance (generated {windows[0]}, reference "
                                     f"{windows[1]}; at least 2 per set, clips shorter than 1 s give none)")
        else:
            summary["fad"] = frechet_distance(*embedding_stats(embeddings["generated"]),
                                              *embedding_stats(embeddings["reference"]), method=fad_method)
    if passt_model is None:
        summary["kld_reason"] = ("no PaSST checkpoint given (passt=PATH to passt-s-f128-20sec-p16-s10-ap.474-swa.pt); "
                                 "KL divergence needs the real classifier weights")
    else:
        summary["kld_classifier"] = {**checkpoint_identity(passt), "model": "PaSST-S 20 s (hear21passt), "
                                     "softmax over 527 AudioSet classes"}
        if kld_total == 0:
            summary["kld_reason"] = (f"no PaSST segment longer than {kld_min_seconds} s in any pair")
        else:
            summary["kld_ref_gen"] = kld_ref_gen_sum / kld_total
            summary["kld_gen_ref"] = kld_gen_ref_sum / kld_total
            summary["kld_both"] = summary["kld_ref_gen"] + summary["kld_gen_ref"]
    summary.update(_fd_passt(passt_embeddings if passt_model is not None else None))
    summary.update(_sync_summary(rows, videos is not None, len(video_files)))
    summary["settings"]["sync"] = {"onset_rate": sync.ONSET_RATE, "farneback": sync.FARNEBACK,
                                   "beat_onset": sync.BEAT_ONSET, "beat_bin_seconds": sync.BEAT_BIN_SECONDS,
                                   "fine_tolerance_seconds": sync.FINE_TOLERANCE}
    reasons = {"chroma_cosine": "chroma_reason", "fd_passt": "fd_passt_reason"}
    for key in ("fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "fd_passt"):
        if summary[key] is not None and not math.isfinite(summary[key]):
            summary[key] = None
            summary[reasons.get(key, f"{key.split('_')[0]}_reason")] = f"{key} came out non-finite"
    for row in rows:
        for key in ("chroma_cosine", "kld_ref_gen", "kld_gen_ref", *SYNC_KEYS):
            row[key] = _finite_or_none(row[key])
    return summary, rows


def _sync_row_of_files(generated: Path, reference: Path, video: Path | None) -> dict[str, Any]:
    return _sync_row(*read_wav(generated), *read_wav(reference), video)


def _sync_row(generated: np.ndarray, generated_rate: int, reference: np.ndarray, reference_rate: int,
              video: Path | None) -> dict[str, Any]:
    """One pair's sync columns: beat scores from LORIS onsets, AV-Align when the video is given."""
    gen_seconds, ref_seconds = generated.shape[1] / generated_rate, reference.shape[1] / reference_rate
    gen_beats = sync.onset_times(generated, generated_rate, **sync.BEAT_ONSET)
    ref_beats = sync.onset_times(reference, reference_rate, **sync.BEAT_ONSET)
    hit, coverage = sync.beat_hit_coverage(gen_beats, gen_seconds, ref_beats, ref_seconds)
    fine_hit, fine_coverage = sync.onset_hit_coverage(gen_beats, ref_beats)
    row = {"beat_hit": hit, "beat_coverage": coverage, "beat_hit_50ms": fine_hit,
           "beat_coverage_50ms": fine_coverage, "generated_onsets": int(gen_beats.size),
           "reference_onsets": int(ref_beats.size), "av_align": None, "av_align_reference": None,
           "video_peaks": None}
    if video is not None:
        motion = sync.video_motion(video)
        peaks = motion.peaks
        row["video_peaks"] = int(peaks.size)
        row["av_align"] = sync.av_align(sync.onset_times(generated, generated_rate), peaks, motion.fps)
        row["av_align_reference"] = sync.av_align(sync.onset_times(reference, reference_rate), peaks, motion.fps)
    return row


def _sync_summary(rows: list[dict[str, Any]], videos_given: bool, video_count: int) -> dict[str, Any]:
    out: dict[str, Any] = {key: _mean([row[key] for row in rows]) for key in SYNC_KEYS}
    out["beat_f1"] = sync.f1(out["beat_hit"], out["beat_coverage"])
    out["beat_f1_50ms"] = sync.f1(out["beat_hit_50ms"], out["beat_coverage_50ms"])
    out["av_align_videos"] = sum(row["video_peaks"] is not None for row in rows)
    out["av_align_reason"] = None
    if not videos_given:
        out["av_align_reason"] = ("no videos given (v2m evaluate --videos DIR, matched by stem): AV-Align needs "
                                  "the video's motion peaks")
    elif out["av_align_videos"] == 0:
        out["av_align_reason"] = f"none of the {video_count} videos given has the stem of an evaluated clip"
    elif out["av_align"] is None:
        out["av_align_reason"] = "no audio or video peak in any clip (0 / 0)"
    return out


def _fd_passt(embeddings: dict[str, list[np.ndarray]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"fd_passt": None, "fd_passt_reason": None, "fd_passt_segments": None}
    if embeddings is None:
        out["fd_passt_reason"] = ("no PaSST checkpoint given (passt=PATH to passt-s-f128-20sec-p16-s10-ap.474-swa.pt); "
                                  "FD_PaSST needs the real embedding weights")
        return out
    counts = [sum(e.shape[0] for e in embeddings[name]) for name in ("generated", "reference")]
    out["fd_passt_segments"] = counts[0]
    if min(counts) < 2:
        out["fd_passt_reason"] = (f"too few PaSST segments for a covariance (generated {counts[0]}, reference "
                                  f"{counts[1]}; at least 2 per set)")
        return out
    # eigen: with fewer segments than the 768 dimensions the covariances are singular, where sqrtm
    # can fail; the eigenvalue trace is the same quantity and stays finite.
    out["fd_passt"] = frechet_distance(*embedding_stats(embeddings["generated"]),
                                       *embedding_stats(embeddings["reference"]), method="eigen")
    return out


def evaluate_dirs(generated_dir: Path | str, reference_dir: Path | str | Sequence[Path | str],
                  params: EvaluateParams, *, progress: bool = True,
                  videos: Path | str | Sequence[Path | str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`evaluate_pairs` with the ``evaluate`` params section (empty checkpoint paths = not computed)."""
    from pipeline.device import resolve_device

    return evaluate_pairs(generated_dir, reference_dir, vggish=params.vggish or None, passt=params.passt or None,
                          chroma_argmax=params.chroma_argmax, chroma_n_fft=params.chroma_n_fft,
                          chroma_hop=params.chroma_hop, fad_preset=params.fad_preset,
                          kld_segment_seconds=params.kld_segment_seconds,
                          kld_min_seconds=params.kld_min_seconds, kld_eps=params.kld_eps,
                          device=resolve_device(params.device), progress=progress, videos=videos)


def write_results(summary: dict[str, Any], rows: list[dict[str, Any]], json_path: Path | str,
                  parquet_path: Path | str) -> tuple[Path, Path]:
    """Write the summary as JSON and the rows as Parquet (columns of :data:`ROW_SCHEMA`), each atomically."""
    with atomic_path(json_path) as temp:
        temp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    table = pa.Table.from_pylist([{name: row.get(name) for name in ROW_SCHEMA.names} for row in rows],
                                 schema=ROW_SCHEMA)
    with atomic_path(parquet_path) as temp:
        pq.write_table(table, temp)
    return Path(json_path), Path(parquet_path)


SHOWN_KEYS = ("fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "fd_passt", "av_align",
              "av_align_reference", "beat_f1", "beat_f1_50ms")


def evaluate_run(shards: Sequence[str], params: EvaluateParams, *, generated: Path = Path("data/generated"),
                 separated_root: Path = Path("data/separated"), clips_root: Path = Path("data/clips"),
                 out: Path = Path("metrics/eval"), summary_file: Path = Path("metrics/eval.json")) -> str:
    """The evaluate stage: the generated music of a pipeline run against the separated references of the
    listed shards (AV-Align on their clips' videos) -> ``summary_file``, ``out/clips.parquet`` and the plots
    in ``out/plots``; returns one line with the headline figures."""
    from pipeline.media import read_wav
    from pipeline.metrics.plots import plot_clip_comparison, plot_metric_distributions

    references = [separated_root / shard for shard in shards]
    videos = [clips_root / shard for shard in shards]
    summary, rows = evaluate_dirs(generated, references, params, videos=videos)
    write_results(summary, rows, summary_file, out / "clips.parquet")
    plots = out / "plots"
    for old in plots.glob("*.png") if plots.is_dir() else ():
        old.unlink()
    plot_metric_distributions(rows, plots / "distributions.png")
    reference_files = wav_files_of(references)
    for row in rows[:params.plot_clips]:
        video_id = row["video_id"]
        audio, rate = read_wav(generated / f"{video_id}.wav")
        reference, reference_rate = read_wav(reference_files[video_id])
        plot_clip_comparison(audio, reference, rate, plots / f"clip-{video_id}.png",
                             title=f"{video_id}: generated vs reference", reference_sample_rate=reference_rate)
    shown = ", ".join(f"{k} {summary[k]:.4f}" if summary[k] is not None else f"{k} null" for k in SHOWN_KEYS)
    return f"evaluate: {summary['pairs']} pairs: {shown}"

