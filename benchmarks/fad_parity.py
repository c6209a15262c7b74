"""FAD parity: our VGGish FAD (``evaluate.fad_preset``) against the frechet-audio-distance package itself.

Both read the same two folders of wav files and the same VGGish weights (random ones saved in
torchvggish's format by ``save_random_vggish``, unless ``--vggish`` names the real file), and the
script prints each FAD and the relative difference |ours - package| / package per preset; the
target for ``frechet_audio_distance`` is < 1e-3 (``google`` is expected to differ: other windows).

The package is not a project dependency (its requirements pin numpy<2 and pull torchaudio,
laion_clap, encodec and torchvision). Its VGGish path needs only itself, resampy, torchlibrosa
(imported by its PANN module) and torchvggish's hub code, so it runs from a throwaway target:

    pip install --no-deps --target /tmp/fadpkg frechet-audio-distance==0.3.4 resampy==0.4.3 torchlibrosa
    git clone https://github.com/harritaylor/torchvggish /tmp/torchvggish   # what torch.hub would fetch
    PYTHONPATH=/tmp/fadpkg:. python benchmarks/fad_parity.py --torchvggish /tmp/torchvggish

``laion_clap`` and ``encodec`` are imported at the top of the package's ``fad.py`` but used only by
its CLAP and EnCodec models; the script registers empty modules under those two names so that the
import succeeds (the VGGish path never touches them; the real ``encodec`` needs torchaudio, which
has no build for this torch). torch.hub is pointed at a private folder holding the torchvggish
checkout and the weights under their release names, so nothing is downloaded.

Usage: python benchmarks/fad_parity.py --torchvggish DIR [--a DIR --b DIR] [--clips 24] [--seconds 10]
       [--vggish vggish-10086976.pth] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import soundfile
import torch

from pipeline.media import read_wav
from pipeline.metrics.fad import embedding_stats, frechet_distance
from pipeline.metrics.vggish import EMBEDDING_SIZE, FRONT_END_PRESETS, embed, load_vggish, save_random_vggish

WEIGHTS_NAME = "vggish-10086976.pth"          # torchvggish's release names, which torch.hub caches under
PCA_NAME = "vggish_pca_params-970ea276.pth"


def write_clips(folder: Path, clips: int, seconds: float, seed: int, base_hz: float) -> None:
    """``clips`` 16 kHz mono clips: a few partials around ``base_hz`` with a moving envelope and noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    for i in range(clips):
        partials = base_hz * rng.uniform(0.8, 1.25) * np.array([1, 2, 3, 5])
        tone = sum(rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in partials)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t)
        audio = 0.4 * envelope * tone + rng.uniform(0.01, 0.1) * rng.standard_normal(t.size)
        soundfile.write(folder / f"clip_{i:03d}.wav", (audio / max(1.0, np.abs(audio).max())).astype(np.float32),
                        16000, subtype="FLOAT")


def ours(folder_a: Path, folder_b: Path, weights: Path, preset: str) -> float:
    """Our FAD: :func:`embed` with the preset's front end on every file, stats per set, sqrtm route."""
    model = load_vggish(weights, device="cpu")
    sets = []
    for folder in (folder_a, folder_b):
        embeddings = []
        for path in sorted(folder.glob("*.wav")):
            audio, rate = read_wav(path)
            embeddings.append(embed(model, audio, rate, **FRONT_END_PRESETS[preset]))
        sets.append(embedding_stats(embeddings))
    return float(frechet_distance(*sets[0], *sets[1], method="sqrtm"))


def package(folder_a: Path, folder_b: Path, weights: Path, torchvggish: Path, hub: Path) -> float:
    """The frechet-audio-distance package's VGGish FAD (no PCA, no final activation: its defaults)."""
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(torchvggish, hub / "harritaylor_torchvggish_master", dirs_exist_ok=True)
    shutil.copy(weights, hub / "checkpoints" / WEIGHTS_NAME)
    # torchvggish loads its PCA file whenever postprocess is on at construction; the package turns it off after
    g = torch.Generator().manual_seed(1)
    torch.save({"pca_eigen_vectors": torch.randn(EMBEDDING_SIZE, EMBEDDING_SIZE, generator=g).numpy(),
                "pca_means": torch.randn(EMBEDDING_SIZE, generator=g).numpy()}, hub / "checkpoints" / PCA_NAME)
    for name in ("laion_clap", "encodec"):  # imported at the package's top, used only by CLAP / EnCodec
        stub = sys.modules.setdefault(name, types.ModuleType(name))
        stub.EncodecModel = None
    from frechet_audio_distance import FrechetAudioDistance

    fad = FrechetAudioDistance(ckpt_dir=str(hub), model_name="vggish", sample_rate=16000, use_pca=False,
                               use_activation=False, verbose=False, audio_load_worker=1)
    fad.model.device = torch.device("cpu")
    fad.model.to("cpu")
    score = fad.score(str(folder_a), str(folder_b))
    if score == -1:  # the package prints its exception and returns -1
        raise SystemExit("frechet-audio-distance failed (its message is printed above)")
    return float(score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchvggish", type=Path, required=True, help="a checkout of harritaylor/torchvggish")
    parser.add_argument("--a", type=Path, help="first folder of .wav (default: synthetic clips)")
    parser.add_argument("--b", type=Path, help="second folder of .wav")
    parser.add_argument("--clips", type=int, default=24, help="synthetic clips per folder")
    parser.add_argument("--seconds", type=float, default=10.0, help="synthetic clip length")
    parser.add_argument("--vggish", type=Path, help="VGGish weights (default: random, torchvggish's format)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.torchvggish / "hubconf.py").is_file():
        raise SystemExit(f"{args.torchvggish}: no hubconf.py; expected a checkout of harritaylor/torchvggish")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        folder_a, folder_b = args.a, args.b
        if folder_a is None or folder_b is None:
            folder_a, folder_b = scratch / "a", scratch / "b"
            write_clips(folder_a, args.clips, args.seconds, args.seed, base_hz=220.0)
            write_clips(folder_b, args.clips, args.seconds, args.seed + 1, base_hz=330.0)
        weights = args.vggish or save_random_vggish(scratch / WEIGHTS_NAME, seed=args.seed)
        theirs = package(folder_a, folder_b, weights, args.torchvggish, scratch / "hub")
        print(f"frechet-audio-distance package FAD: {theirs:.9g}")
        for preset in ("frechet_audio_distance", "google"):
            value = ours(folder_a, folder_b, weights, preset)
            relative = abs(value - theirs) / abs(theirs)
            print(f"ours, fad_preset={preset}: FAD {value:.9g}, relative difference {relative:.3e}")


if __name__ == "__main__":
    main()
