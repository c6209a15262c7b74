"""Where the chain loses the music: chroma_cosine of each link on the test split of a finished run.

Per test clip (the first generation window, the model's training segment by default):
  1. ``true``: the clip's true codes (the codec on its separated accompaniment), decoded;
  2. ``teacher_forced``: the model's argmax prediction of every code given the video and the true
     codes before it (one forward), decoded;
  3. ``sampled``: codes sampled as the generate stage does (cfg, top_k, temperature from params.yaml's
     generate section, or each ``--setting``), decoded.
Each against the clip's separated reference, and against another clip's reference (``mismatched``,
chance). Run in a folder where ``dvc repro`` finished (models/v2m, data/clips, data/separated).

Usage: python benchmarks/chain.py [--max-clips N] [--setting cfg=3,top_k=250,temperature=1.0 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline import media
from pipeline.config import load_params
from pipeline.features import codec as codec_lib
from pipeline.features.extract import extract_video
from pipeline.generate import Generator, _fill, _frames_of, split_clips, window_steps_of
from pipeline.metrics import chroma
from pipeline.model.sampling import generate_codes


def chroma_cosine(generated: np.ndarray, reference: np.ndarray) -> float:
    total, frames = chroma.chroma_cosine_sums(np.asarray(generated, np.float64)[0], np.asarray(reference, np.float64)[0],
                                              chroma.SAMPLE_RATE)
    return total / frames if frames else float("nan")


def parse_setting(text: str) -> dict:
    values = dict(item.split("=", 1) for item in text.split(","))
    return {"cfg": float(values.get("cfg", 3.0)), "top_k": int(values.get("top_k", 250)),
            "temperature": float(values.get("temperature", 1.0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-clips", type=int, default=0, help="0 = every test clip")
    parser.add_argument("--setting", action="append", default=[], metavar="cfg=C,top_k=K,temperature=T",
                        help="sampling settings to compare (default: params.yaml's generate section)")
    args = parser.parse_args()
    params = load_params(sections=("data", "generate", "split"))
    gen_params = params["generate"]
    settings = [parse_setting(s) for s in args.setting] or [
        {"cfg": gen_params.cfg, "top_k": gen_params.top_k, "temperature": gen_params.temperature}]
    generator = Generator.load(gen_params.model, device="cpu")
    model, config = generator.model, generator.model.config
    features = generator.recipe.features
    window_steps, _ = window_steps_of(gen_params, generator.recipe)
    hop = int(np.prod(generator.codec.config.upsampling_ratios))
    clips = split_clips({s: Path("data/clips") / s for s in params["data"].shards}, params["split"], gen_params.split,
                        args.max_clips)
    links: dict[str, list[np.ndarray]] = {"true": [], "teacher_forced": []}
    links.update({json.dumps(s): [] for s in settings})
    references = []
    rng = torch.Generator().manual_seed(gen_params.seed)
    for shard, clip in clips:
        reference, rate = media.read_wav(Path("data/separated") / shard / f"{clip.stem}.wav")
        codes = codec_lib.encode(generator.codec, reference)
        steps = min(window_steps, codes.shape[1])
        references.append(reference[:, :steps * hop])
        true = torch.from_numpy(codes[:, :steps].astype(np.int64))
        seconds = media.probe(clip).duration
        extracted = extract_video(clip, visual=features.visual, encoder=generator.clip_model,
                                  motion=features.motion if config.use_motion else None)
        visual = _fill(torch.from_numpy(extracted.tokens.astype(np.float32)), round(seconds * config.visual_fps))
        visual = visual[_frames_of(0, steps, config.visual_fps / config.codes_rate)][None]
        motion = None
        if config.use_motion:
            motion = _fill(torch.from_numpy(extracted.flow), round(seconds * config.motion_fps))
            motion = motion[_frames_of(0, steps, config.motion_fps / config.codes_rate)][None]
        with torch.no_grad():
            forced = model(visual, motion, true[None]).logits.argmax(-1)[0]
            z = model.condition(visual, motion)
        links["true"].append(codec_lib.decode(generator.codec, true.numpy()))
        links["teacher_forced"].append(codec_lib.decode(generator.codec, forced.numpy()))
        for setting in settings:
            sampled = generate_codes(model, z, steps, cfg=setting["cfg"], top_k=setting["top_k"] or None,
                                     temperature=setting["temperature"], generator=rng)[0]
            links[json.dumps(setting)].append(codec_lib.decode(generator.codec, sampled.numpy()))
    n = len(references)
    for name, audios in links.items():
        same = np.nanmean([chroma_cosine(a, r) for a, r in zip(audios, references)])
        mismatched = np.nanmean([chroma_cosine(a, references[(i + 1) % n]) for i, a in enumerate(audios)]) if n > 1 else None
        print(json.dumps({"link": name, "clips": n, "chroma_cosine": round(float(same), 4),
                          "chroma_cosine_mismatched": None if mismatched is None else round(float(mismatched), 4)}))


if __name__ == "__main__":
    main()
