"""The embedded default's stand-ins: the sample set and the models no weights could be downloaded for.

No dataset or weights can be downloaded where this project is built, so four stages make stand-ins:
``sample`` renders v2m-synth (shard ``s0000``), ``separator_init`` a small HTDemucs trained a few
steps on its stems, ``visual_init`` a random-weights CLIP ViT-B/32 and ``codec_init`` a random EnCodec
32 kHz with calibrated codebooks. Each model stand-in is built only when the params use it: the
model's params key names the stand-in's folder (the stage's DVC output). Otherwise (real weights or real data configured) the stage writes a one-line marker
:data:`SKIPPED_FILE` into its output folder saying why, and ends in about a second: the heavy
libraries are imported only when there is something to build.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import (CodesFeatureParams, SampleParams, SeparateParams, SplitParams,
                             VisualFeatureParams)
from pipeline.errors import UserError
from pipeline.files import atomic_path, file_sha256

SKIPPED_FILE = "SKIPPED.txt"
# The stand-ins' folders, as dvc.yaml declares them (the init stages' outputs).
SAMPLE_DIR = Path("data/sample")
SAMPLE_SHARD = "s0000"
SEPARATOR_DIR = Path("models/demucs-v2m")
VISUAL_DIR = Path("models/visual-random")
CODEC_DIR = Path("models/encodec-calibrated")


def uses_stand_in(configured: str | Path, stand_in: Path) -> bool:
    """True when a params value (a weights folder) names the stand-in's folder ``stand_in``."""
    return Path(configured).resolve() == Path(stand_in).resolve()


def write_skipped(folder: Path | str, reason: str) -> str:
    """Replace ``folder`` (atomically) by one holding only :data:`SKIPPED_FILE` with ``reason``; returns it."""
    with atomic_path(folder) as temp:
        temp.mkdir(parents=True)
        (temp / SKIPPED_FILE).write_text(reason + "\n")
    return reason


def skipped_reason(folder: Path | str) -> str | None:
    """The reason a stand-in stage skipped ``folder``, or None when it built it."""
    marker = Path(folder) / SKIPPED_FILE
    return marker.read_text().strip() if marker.is_file() else None


def init_sample(params: SampleParams, out: Path = SAMPLE_DIR, manifest: Path | None = None) -> str:
    """Render v2m-synth into ``out`` and write its manifest shard (rows ``file:<out>/<id>.mp4`` with their
    sha256, so the download stage runs its real code offline).

    Unlike the model stand-ins this one never skips: it would have to depend on ``data.shards``, and then
    adding any shard would rerun it (new shards must run alone). A real-data run simply leaves ``s0000``
    out of ``data.shards``; nothing reads the rendered set then but ``separator_init`` when it builds.

    Returns:
        One line saying what was done.
    """
    from pipeline.acquire.manifest import ManifestEntry, shard_path, write_manifest
    from pipeline.synth import read_labels, render_sample_set

    manifest = manifest or shard_path(SAMPLE_SHARD)
    render_sample_set(out, params)
    entries = [ManifestEntry(row["video_id"], f"file:{out / row['video_file']}", file_sha256(out / row["video_file"]))
               for row in read_labels(out)]
    write_manifest(manifest, entries)
    return f"sample: wrote {len(entries)} clips into {out} and {manifest}"


def init_separator(params: SeparateParams, split: SplitParams, stems: Path = SAMPLE_DIR,
                   out: Path = SEPARATOR_DIR) -> str:
    """The embedded separator, named ``separate.model``, into ``out`` when ``separate.repo`` names it: a small
    HTDemucs, random init plus ``separate.embedded.train_steps`` Adam steps on the train-split stems of
    v2m-synth, in Demucs's own folder format. NOT htdemucs. Skipped when ``separate.repo`` is another folder.
    """
    if not uses_stand_in(params.repo, out):
        return write_skipped(out, f"separator_init: skipped: separate.repo is {params.repo} (real weights), "
                                  f"not the embedded separator's folder {out}")
    from pipeline import media
    from pipeline.separate import save_random_htdemucs
    from pipeline.split import ids_in
    from pipeline.synth import read_labels

    rows = {row["video_id"]: row for row in read_labels(stems)}
    train = [rows[v] for v in ids_in(rows, split, "train")]
    pairs = [(media.read_wav(stems / r["accompaniment_file"])[0], media.read_wav(stems / r["vocals_file"])[0])
             for r in train]
    init = params.embedded
    save_random_htdemucs(out, params.model, channels=init.channels, depth=init.depth,
                         transformer_layers=init.transformer_layers, seed=init.seed, stems=pairs,
                         train_steps=init.train_steps, train_batch=init.train_batch,
                         train_segment_seconds=init.train_segment_seconds, train_lr=init.train_lr)
    return (f"separator_init: wrote {out} ({params.model}): small HTDemucs, {init.train_steps} steps on "
            f"{len(pairs)} synthetic train clips (NOT htdemucs weights)")


def init_visual(visual: VisualFeatureParams, out: Path = VISUAL_DIR) -> str:
    """The embedded CLIP (ViT-B/32 architecture with ``init_layers`` layers, RANDOM weights, seed ``init_seed``)
    into ``out`` when ``features.visual.model`` names it; skipped when it names another folder or hub id.

    Raises:
        UserError: ``init_layers`` other than ViT-B/32's 12 with the open_clip backend.
    """
    if not uses_stand_in(visual.model, out):
        return write_skipped(out, f"visual_init: skipped: features.visual.model is {visual.model} (real weights), "
                                  f"not the embedded CLIP's folder {out}")
    from pipeline.features.visual import VIT_B32

    published = VIT_B32["num_hidden_layers"]
    if visual.backend == "open_clip":
        if visual.init_layers != published:
            raise UserError(f"features.visual.init_layers is {visual.init_layers}: the open_clip backend's random "
                            f"stand-in is open_clip's ViT-B-32 as published ({published} layers); set "
                            f"init_layers: {published} or use backend: transformers")
        from pipeline.features.open_clip_backend import save_random_open_clip

        save_random_open_clip(out, seed=visual.init_seed)
        return f"visual_init: wrote {out} (open_clip ViT-B-32, RANDOM weights)"
    save_visual_stand_in(out, visual)
    return (f"visual_init: wrote {out} (CLIP ViT-B/32 architecture with {visual.init_layers} of its "
            f"{published} layers, RANDOM weights)")


def save_visual_stand_in(out: Path, visual: VisualFeatureParams) -> Path:
    """The embedded default's CLIP (transformers backend): ViT-B/32 with ``init_layers`` layers, RANDOM
    weights of seed ``init_seed``, saved to ``out``: the one recipe ``visual_init`` and the benchmarks use."""
    from pipeline.features.visual import save_random_clip_model

    return save_random_clip_model(out, seed=visual.init_seed, num_hidden_layers=visual.init_layers)


def init_codec(codes: CodesFeatureParams, split: SplitParams, separated_root: Path = Path("data/separated"),
               out: Path = CODEC_DIR) -> str:
    """The embedded codec into ``out`` when ``features.codes.codec`` names it: EnCodec 32 kHz with random
    weights and codebooks calibrated on the train-split separated audio of ``calibration.shard``, and the
    embedded decoder (spectral lookup + Griffin-Lim, :mod:`pipeline.features.embedded_decoder`) fitted on the
    same audio and codes (:func:`pipeline.features.codec.calibrate_embedded_codec`). Skipped for another codec.

    Raises:
        FileNotFoundError: the calibration shard has no train-split clips.
    """
    if not uses_stand_in(codes.codec, out):
        return write_skipped(out, f"codec_init: skipped: features.codes.codec is {codes.codec} (real weights), "
                                  f"not the embedded codec's folder {out}")
    from pipeline import media
    from pipeline.features.codec import calibrate_embedded_codec
    from pipeline.split import ids_in
    from pipeline.status import ok_ids

    calibration = codes.calibration
    folder = Path(separated_root) / calibration.shard
    train = ids_in(ok_ids(folder), split, "train")
    if not train:
        raise FileNotFoundError(f"{folder}: no train-split clips to calibrate the codec on")
    if calibration.max_clips:
        train = train[:calibration.max_clips]
    audios = [media.read_wav(folder / f"{video_id}.wav")[0] for video_id in train]
    stats = calibrate_embedded_codec(out, audios, calibration)
    return f"codec_init: wrote {out} from {len(train)} train clips of {calibration.shard}: {stats}"


__all__ = ["VISUAL_DIR", "CODEC_DIR", "SAMPLE_DIR", "SAMPLE_SHARD", "SEPARATOR_DIR", "SKIPPED_FILE", "init_visual",
           "init_codec", "init_sample", "init_separator", "skipped_reason", "uses_stand_in", "write_skipped"]
