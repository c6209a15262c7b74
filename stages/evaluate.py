"""Stage `evaluate`: FAD / KLD / chroma cosine / FD_PaSST / sync metrics of data/generated against the
separated references (AV-Align on the clips' videos) -> metrics/eval.json (summary),
metrics/eval/clips.parquet (per clip), metrics/eval/plots/*.png."""

import logging
from pathlib import Path

from pipeline.errors import user_errors
from pipeline.config import load_params
from pipeline.media import read_wav
from pipeline.metrics.evaluate import evaluate_dirs, wav_files_of, write_results
from pipeline.metrics.plots import plot_clip_comparison, plot_metric_distributions

SECTIONS = ("data", "evaluate")
GENERATED = Path("data/generated")
OUT = Path("metrics/eval")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    with user_errors("stage evaluate"):
        params = load_params(sections=SECTIONS)
        evaluate = params["evaluate"]
        references = [Path("data/separated") / shard for shard in params["data"].shards]
        videos = [Path("data/clips") / shard for shard in params["data"].shards]
        summary, rows = evaluate_dirs(GENERATED, references, evaluate, videos=videos)
        write_results(summary, rows, Path("metrics/eval.json"), OUT / "clips.parquet")
        plots = OUT / "plots"
        for old in plots.glob("*.png") if plots.is_dir() else ():
            old.unlink()
        plot_metric_distributions(rows, plots / "distributions.png")
        reference_files = wav_files_of(references)
        for row in rows[:evaluate.plot_clips]:
            video_id = row["video_id"]
            generated, rate = read_wav(GENERATED / f"{video_id}.wav")
            reference, reference_rate = read_wav(reference_files[video_id])
            plot_clip_comparison(generated, reference, rate, plots / f"clip-{video_id}.png",
                                 title=f"{video_id}: generated vs reference", reference_sample_rate=reference_rate)
        shown = ", ".join(f"{k} {summary[k]:.4f}" if summary[k] is not None else f"{k} null"
                          for k in ("fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "fd_passt",
                                    "av_align", "av_align_reference", "beat_f1", "beat_f1_50ms"))
        print(f"evaluate: {summary['pairs']} pairs: {shown}")


if __name__ == "__main__":
    main()
