"""The `v2m` command: a thin face over the library functions the DVC stages call.

Every expected failure (bad params, unreadable media, missing checkpoints...) ends with one
line ``v2m: error: ...`` and exit status 2, never a bare traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pipeline import config, timing
from pipeline.errors import use_thread_policy, user_errors
from pipeline.media import ffmpeg_exe

FORBIDDEN_PACKAGES = ("torchaudio", "audiocraft")


def _cmd_synth(args: argparse.Namespace) -> None:
    from pipeline.synth import render_sample_set

    values = {"n_clips": args.n, "seconds": args.seconds, "seed": args.seed, "motion_only": args.motion_only,
              "fps": args.fps, "width": args.width, "height": args.height}
    params = config.build(config.SampleParams, {k: v for k, v in values.items() if v is not None},
                          prefix="sample", source="v2m synth")
    labels = render_sample_set(args.out, params, progress=not args.quiet)
    print(f"wrote {params.n_clips} clips and {labels}")


def _cmd_manifest_add_shard(args: argparse.Namespace) -> None:
    from pipeline.acquire.manifest import add_shard

    exclude = args.exclude
    if exclude is None and args.params.is_file():
        exclude = Path(config.load_params(args.params, ["data"])["data"].exclude_file)
    path, skipped = add_shard(args.ids, args.n, manifest_dir=args.manifests, params_file=args.params,
                              exclude_file=exclude)
    count = sum(1 for _ in open(path)) - 1
    print(f"wrote {path} ({count} videos; {skipped} ids skipped as already in a shard or excluded) "
          f"and added {path.stem} to data.shards in {args.params}; `dvc repro` runs only its stages")


def _cmd_manifest_status(args: argparse.Namespace) -> None:
    import json

    from pipeline.acquire.download import RAW_DIR, ShardSummary, shard_summary, summary_table
    from pipeline.acquire.manifest import SHARD_NAME, ManifestError, existing_shards

    names = args.shards or [path.stem for path in existing_shards(args.manifests)]
    if not names:
        raise ManifestError(f"{args.manifests}: no manifest shards (sNNNN.csv)")
    for name in names:
        if not SHARD_NAME.fullmatch(name):
            raise ManifestError(f"{name!r} is not a shard name (s0000, s0001, ...)")
    summaries = [shard_summary(name, args.manifests, args.raw or RAW_DIR) for name in names]
    if args.json:
        print(json.dumps({"shards": [s.as_json() for s in summaries],
                          "total": ShardSummary.total(summaries).as_json()}, indent=2))
    else:
        print(summary_table(summaries))


def _cmd_download(args: argparse.Namespace) -> None:
    import logging

    from pipeline.acquire.download import download_shard
    from pipeline.status import summary

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    params = config.load_params(args.params, ["download", "clip"]) if args.params.is_file() else {}
    download = params.get("download", config.DownloadParams())
    seconds = args.seconds if args.seconds is not None else params.get("clip", config.ClipParams()).seconds
    rows = download_shard(args.manifest, args.out, download, seconds=seconds, proxies=args.proxies,
                          progress=not args.quiet)
    print(f"download {args.manifest}: {summary(rows)}; status table {args.out / 'status.parquet'}")


def _cmd_params_check(args: argparse.Namespace) -> None:
    loaded = config.load_params(args.file)
    print(f"{args.file}: OK ({len(loaded)} sections: {', '.join(loaded) or 'none'})")


def _cmd_params_show(args: argparse.Namespace) -> None:
    for name, cls in config.known_sections().items():
        for key, default, doc in config.describe(cls, name):
            print(f"{key:<34} {default!r:<14} {doc}")


def _section_with_options(args: argparse.Namespace, name: str, cls: type, options: dict) -> object:
    """Section ``name`` of ``args.params`` (when the file exists) with the given command-line options
    on top, validated like params.yaml: a bad value is one error naming the option's key."""
    base = config.load_params(args.params, [name])[name] if args.params.is_file() else cls()
    values = {**config.as_dict(base), **{k: v for k, v in options.items() if v is not None}}
    return config.build(cls, values, prefix=name, source=f"v2m {name}")


def _cmd_generate(args: argparse.Namespace) -> None:
    from pipeline import media

    params = _section_with_options(args, "generate", config.GenerateParams, {
        "model": str(args.model) if args.model else None, "cfg": args.cfg, "top_k": args.top_k,
        "temperature": args.temperature, "seed": args.seed, "window_seconds": args.window_seconds,
        "prompt_seconds": args.prompt_seconds, "device": args.device})
    # The input and output are proven (probe + one-frame trial mux) before torch is even imported:
    # a video that cannot be handled is refused in well under a second, not after the sampling.
    media.check_output(args.video, args.output, args.wav)
    plan = media.plan_mux(args.video, keep_audio=args.keep_audio, info=media.check_video(args.video))
    from pipeline.generate import Generator, check_model_folder, score_video

    check_model_folder(params.model, params)
    use_thread_policy()
    _quiet_transformers()
    generator = Generator.load(params.model, device=params.device, cpu_quantize=params.cpu_quantize)
    music = score_video(generator, args.video, args.output, params, wav=args.wav, keep_audio=args.keep_audio,
                        progress=not args.quiet, plan=plan)
    extra = f" and {args.wav}" if args.wav else ""
    fixes = "".join(f"; {fix} for the features" for fix in music.picture.fixes)
    print(f"wrote {args.output}{extra}: {music.seconds:.2f} s of music in {len(music.windows)} window(s), "
          f"{'mixed over' if args.keep_audio else 'replacing'} the original audio; {plan.description}{fixes}")


def _quiet_transformers() -> None:
    """No per-checkpoint "Loading weights" bars from transformers: v2m shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from pipeline.metrics.evaluate import evaluate_dirs, write_results

    params = _section_with_options(args, "evaluate", config.EvaluateParams, {
        "vggish": str(args.vggish) if args.vggish else None, "passt": str(args.passt) if args.passt else None,
        "fad_preset": args.fad_preset})
    use_thread_policy()
    summary, rows = evaluate_dirs(args.generated, args.reference, params, progress=not args.quiet, videos=args.videos)
    table = args.clips or args.out.with_suffix(".clips.parquet")
    write_results(summary, rows, args.out, table)
    shown = ", ".join(f"{key} {summary[key]:.4f}" if isinstance(summary[key], float) else f"{key} n/a"
                      for key in ("fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "fd_passt",
                                  "av_align", "av_align_reference", "beat_f1", "beat_f1_50ms"))
    print(f"{summary['pairs']} pairs: {shown}; wrote {args.out} and {table}")


def _cmd_timings(args: argparse.Namespace) -> None:
    rows = timing.read_timings(args.folder)
    if not rows:
        raise FileNotFoundError(f"{args.folder or timing.timings_dir()}: no stage timings recorded yet (run dvc repro)")
    print(timing.format_table(rows))


def _cmd_doctor(args: argparse.Namespace) -> None:
    import torch

    problems = []
    print(f"python          {sys.version.split()[0]}")
    print(f"torch           {torch.__version__} (cuda: {torch.cuda.is_available()})")
    for name in ("torchvision", "open_clip_torch", "transformers", "dvc", "av", "yt-dlp", "demucs", "accelerate",
                 "pyarrow"):
        print(f"{name:<15} {importlib.metadata.version(name)}")
    try:
        ffmpeg = ffmpeg_exe()
        version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout
        print(f"ffmpeg          {version.split()[2]} ({ffmpeg})")
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        problems.append(f"no working ffmpeg program ({exc}); setup.sh installs one with imageio-ffmpeg")
    for name in FORBIDDEN_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version(name)
            problems.append(f"{name} is installed; it does not work with this torch (README: your stack)")
    for problem in problems:
        print(f"v2m doctor: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print("v2m doctor: OK")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as the one line every other error is: ``v2m CMD: error: ...``."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="v2m", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="render the synthetic sample set v2m-synth")
    synth.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    synth.add_argument("--n", type=int, help="number of clips")
    synth.add_argument("--seconds", type=float, help="clip length in seconds")
    synth.add_argument("--seed", type=int, help="random seed (same seed, same files)")
    synth.add_argument("--motion-only", action="store_true", default=None,
                       help="tempo visible only through motion (for the motion ablation)")
    synth.add_argument("--fps", type=int)
    synth.add_argument("--width", type=int)
    synth.add_argument("--height", type=int)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)

    manifest = sub.add_parser("manifest", help="manifest shards of video ids")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    add = manifest_sub.add_parser("add-shard", help="write the next shard from a V2M-style id list")
    add.add_argument("--ids", type=Path, required=True, help="one YouTube id per line (V2M.txt, V2M-20k.txt...)")
    add.add_argument("--n", type=int, required=True, help="how many new ids to take")
    add.add_argument("--exclude", type=Path, help="ids never to take (default: data.exclude_file)")
    add.add_argument("--manifests", type=Path, default=Path("data/manifests"), help="shard folder")
    add.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS_FILE, help="params file to update")
    add.set_defaults(func=_cmd_manifest_add_shard)
    status = manifest_sub.add_parser(
        "status", help="per shard: ids downloaded, failed by class, not yet tried, share that still resolves",
        description="Summarise shards from their download status tables (data/raw/<shard>/status.parquet). "
                    "'resolves' is downloaded / (downloaded + permanent failures); transient failures and "
                    "ids not yet tried are left out of it, and bound it: low = all dead, high = all alive.")
    status.add_argument("shards", nargs="*", metavar="SHARD",
                        help="shard names, e.g. s0001 (default: every shard in --manifests)")
    status.add_argument("--json", action="store_true", help="one JSON object: per shard and the total")
    status.add_argument("--manifests", type=Path, default=Path("data/manifests"), metavar="DIR", help="shard folder")
    status.add_argument("--raw", type=Path, metavar="DIR",
                        help="download outputs, DIR/<shard>/status.parquet (default data/raw)")
    status.set_defaults(func=_cmd_manifest_status)

    download = sub.add_parser("download", help="download a manifest shard with yt-dlp (as the download stage)")
    download.add_argument("--manifest", type=Path, required=True, help="a shard CSV (video_id[,url][,sha256])")
    download.add_argument("--out", type=Path, required=True, help="output folder: videos + status.parquet")
    download.add_argument("--proxies", type=Path, help="proxy list, one URL per line (default: download.proxies)")
    download.add_argument("--seconds", type=float, help="clip length to fetch (+ download.margin_seconds)")
    download.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS_FILE,
                          help="the download section is read from here when the file exists")
    download.add_argument("--verbose", action="store_true", help="log every attempt")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=_cmd_download)

    params = sub.add_parser("params", help="check or list params.yaml keys")
    params_sub = params.add_subparsers(dest="params_command", required=True, metavar="ACTION")
    check = params_sub.add_parser("check", help="validate a params file (default params.yaml)")
    check.add_argument("file", nargs="?", type=Path, default=config.DEFAULT_PARAMS_FILE)
    check.set_defaults(func=_cmd_params_check)
    show = params_sub.add_parser("show", help="every known key with its default")
    show.set_defaults(func=_cmd_params_show)

    generate = sub.add_parser("generate", help="compose music for a video and mux it on",
                              description="Compose music for VIDEO (any size, orientation, frame rate or length, "
                                          "with or without sound) and write it muxed onto the video.")
    generate.add_argument("video", type=Path, metavar="VIDEO", help="input video")
    generate.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.mp4",
                          help="output video with the music (the input's length)")
    generate.add_argument("--model", type=Path, help="exported model folder (default: generate.model, models/v2m)")
    generate.add_argument("--cfg", type=float, help="classifier-free guidance coefficient (default 3.0)")
    generate.add_argument("--top-k", type=int, help="sample among the k likeliest codes (default 250; 0 = all)")
    generate.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    generate.add_argument("--seed", type=int, help="sampling seed (default 0; same seed, same music)")
    generate.add_argument("--wav", type=Path, metavar="OUT.wav", help="also write the music alone as a WAV")
    generate.add_argument("--keep-audio", action="store_true",
                          help="mix the music over the original audio instead of replacing it")
    generate.add_argument("--window-seconds", type=float,
                          help="generation window (default: the model's training segment length)")
    generate.add_argument("--prompt-seconds", type=float, help="overlap that prompts each next window (default 1)")
    generate.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto (CUDA when present)")
    generate.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS_FILE,
                          help="defaults come from this file's generate section when it exists")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(func=_cmd_generate)

    evaluate = sub.add_parser("evaluate", help="FAD / KLD / chroma cosine / sync metrics of generated vs reference audio",
                              description="Score generated audio against references, pairs matched by file stem "
                                          "(<id>.wav in both folders); metric definitions in the README.")
    evaluate.add_argument("--generated", type=Path, required=True, metavar="DIR", help="generated <id>.wav files")
    evaluate.add_argument("--reference", type=Path, required=True, metavar="DIR", help="reference <id>.wav files")
    evaluate.add_argument("--out", type=Path, required=True, metavar="FILE.json", help="summary metrics")
    evaluate.add_argument("--clips", type=Path, metavar="FILE.parquet",
                          help="per-clip table (default: beside --out, .clips.parquet)")
    evaluate.add_argument("--videos", type=Path, metavar="DIR",
                          help="the videos (<id>.mp4, matched by stem) for AV-Align; without them av_align is null")
    evaluate.add_argument("--vggish", type=Path, metavar="CKPT",
                          help="VGGish weights (torchvggish vggish-10086976.pth); without them FAD is null")
    evaluate.add_argument("--fad-preset", choices=("google", "frechet_audio_distance"),
                          help="VGGish front end (evaluate.fad_preset): google = Google's FAD tool (published), "
                               "frechet_audio_distance = that package's")
    evaluate.add_argument("--passt", type=Path, metavar="CKPT",
                          help="PaSST 20 s checkpoint (passt-s-f128-20sec-p16-s10-ap.474-swa.pt); without it KLD is null")
    evaluate.add_argument("--params", type=Path, default=config.DEFAULT_PARAMS_FILE,
                          help="defaults come from this file's evaluate section when it exists")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=_cmd_evaluate)

    timings = sub.add_parser("timings", help="each stage's last wall time (recorded in .cache/v2m/timings)")
    timings.add_argument("--folder", type=Path, help="timings folder (default .cache/v2m/timings or $V2M_TIMINGS)")
    timings.set_defaults(func=_cmd_timings)

    doctor = sub.add_parser("doctor", help="check the installation (torch, ffmpeg, forbidden packages)")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with user_errors():
        args.func(args)


if __name__ == "__main__":
    main()
