"""Evaluation metrics against the known answers of shared docs/metrics.md and their formulas."""

from __future__ import annotations

import json
import math

import librosa
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.media import write_wav
from pipeline.metrics import chroma, fad, vggish
from pipeline.metrics.evaluate import ROW_SCHEMA, EvaluationError, evaluate_pairs, write_results
from pipeline.metrics.plots import plot_clip_comparison, plot_metric_distributions

RATE = 32000
C_MAJOR = (60, 64, 67)
C_MAJOR_OCTAVE_UP = (72, 76, 79)
D_MAJOR = (62, 66, 69)


def chord(notes, seconds: float = 10.0, rate: int = RATE) -> np.ndarray:
    """Equal-amplitude sines at the MIDI notes' equal-tempered pitches (A4 = 440 Hz), float64 ``[S]``."""
    t = np.arange(int(round(seconds * rate))) / rate
    return sum(np.sin(2 * np.pi * 440.0 * 2 ** ((note - 69) / 12) * t) for note in notes) / len(notes)


def clip_score(generated, reference, rate=RATE, **options) -> float:
    total, frames = chroma.chroma_cosine_sums(generated, reference, rate, **options)
    return total / frames


# ------------------------------------------------------------------------------------------ chroma

@pytest.mark.parametrize("other, argmax, expected", [
    (C_MAJOR, True, 1.0), (C_MAJOR, False, 1.0),
    (C_MAJOR_OCTAVE_UP, True, 1.0), (C_MAJOR_OCTAVE_UP, False, 0.9982),
    (D_MAJOR, True, 0.0), (D_MAJOR, False, 0.1255),
    (None, True, 0.0), (None, False, 0.0),
])
def test_chroma_cosine_known_answers(other, argmax, expected):
    reference = np.zeros(10 * RATE) if other is None else chord(other)
    assert clip_score(chord(C_MAJOR), reference, argmax=argmax) == pytest.approx(expected, abs=5e-5)


def test_dominant_pitch_class_of_c_major_triad_is_g():
    frames = chroma.chroma_frames(chord(C_MAJOR), RATE)
    assert frames.shape == (1 + 10 * RATE // 4096, 12)
    assert np.all(frames.argmax(axis=1) == 7)  # G
    assert np.all(frames.sum(axis=1) == 1.0)  # one-hot


def test_chroma_agrees_with_librosa_chroma_stft():
    rng = np.random.default_rng(0)
    audio = chord(C_MAJOR, 3.0) + 0.3 * rng.standard_normal(3 * RATE)
    ours = chroma.chroma_frames(audio, RATE, argmax=False)
    theirs = librosa.feature.chroma_stft(y=audio, sr=RATE, n_fft=16384, hop_length=4096, win_length=16384,
                                         window="hann", center=True, pad_mode="reflect", tuning=0.0, norm=np.inf)
    assert ours.shape == theirs.T.shape
    assert np.abs(ours - theirs.T).max() < 1e-6


def test_chroma_frame_count_and_short_clip_padding():
    short = chord(C_MAJOR, 5000 / RATE)
    assert chroma.chroma_frames(short, RATE).shape == (1 + 16384 // 4096, 12)  # padded to n_fft first
    total, frames = chroma.chroma_cosine_sums(short, short, RATE)
    assert (total, frames) == (2.0, 2)  # ceil(5000 / 4096) frames compared
    assert chroma.chroma_cosine_sums(np.zeros(0), short, RATE) == (0.0, 0)


def test_chroma_cuts_or_pads_the_reference_to_the_generated_length():
    generated = chord(C_MAJOR, 3.0)
    longer = np.concatenate([generated, chord(D_MAJOR, 3.0)])
    assert chroma.chroma_cosine_sums(generated, longer, RATE) == (24.0, 24)
    total, frames = chroma.chroma_cosine_sums(generated, generated[: RATE], RATE)
    assert frames == 24 and total < 24  # the zero-padded tail is silence: one-hot at C, not G


def test_chroma_resamples_other_rates_and_mixes_channels_down():
    stereo_16k = np.stack([chord(C_MAJOR, 2.0, 16000)] * 2)
    frames = chroma.chroma_frames(stereo_16k, 16000)
    assert frames.shape[0] == 1 + 2 * RATE // 4096
    assert np.all(frames[1:-1].argmax(axis=1) == 7)


def test_set_level_chroma_is_frame_weighted():
    pairs = [(chord(C_MAJOR), chord(C_MAJOR)), (chord(C_MAJOR, 2.0), chord(D_MAJOR, 2.0))]
    frames = math.ceil(10 * RATE / 4096), math.ceil(2 * RATE / 4096)
    assert chroma.chroma_cosine(pairs, RATE) == pytest.approx(frames[0] / sum(frames))
    with pytest.raises(ValueError):
        chroma.chroma_cosine([], RATE)


# --------------------------------------------------------------------------------------------- FAD

@pytest.mark.parametrize("method", ["sqrtm", "eigen"])
def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form(method):
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=8), rng.normal(size=8)
    var_a, var_b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = fad.frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_identical_sets_is_zero():
    rng = np.random.default_rng(2)
    files = [rng.normal(size=(40, 32)) @ rng.normal(size=(32, 32)) for _ in range(5)]
    mu, cov = fad.embedding_stats(files)
    for method in ("sqrtm", "eigen"):
        assert abs(fad.frechet_distance(mu, cov, mu, cov, method=method)) < 1e-8 * np.trace(cov)


def test_embedding_stats_pool_every_window_of_every_file_unbiased():
    rng = np.random.default_rng(3)
    files = [rng.normal(size=(n, 4)) + n for n in (3, 0, 7)]
    mu, cov = fad.embedding_stats(files)
    pooled = np.concatenate(files)
    assert np.allclose(mu, pooled.mean(axis=0))
    centred = pooled - pooled.mean(axis=0)
    assert np.allclose(cov, centred.T @ centred / (pooled.shape[0] - 1))
    with pytest.raises(ValueError):
        fad.embedding_stats([np.zeros((1, 4))])


def test_sqrtm_is_retried_with_an_offset_on_the_diagonals(monkeypatch):
    real_sqrtm = fad.linalg.sqrtm
    calls = []

    def flaky_sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(fad.linalg, "sqrtm", flaky_sqrtm)
    eye = np.eye(3)
    assert fad.frechet_distance(np.zeros(3), eye, np.zeros(3), eye) == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(calls[1], (eye + 1e-7 * eye) @ (eye + 1e-7 * eye))


# ------------------------------------------------------------------------------------------ VGGish

def test_mel_matrix_rows_are_htk_triangles_peaking_at_their_centres():
    matrix = vggish.mel_matrix()
    assert matrix.shape == (257, 64)
    assert np.all(matrix[0] == 0)  # no DC
    bin_hz = np.linspace(0, 8000, 257)
    edges_mel = np.linspace(vggish.hertz_to_mel(125.0), vggish.hertz_to_mel(7500.0), 66)
    edges_hz = 700.0 * (np.exp(edges_mel / 1127.0) - 1.0)
    centres = vggish.mel_band_centres_hz()
    assert np.allclose(centres, edges_hz[1:-1])
    for band in range(64):
        weights = matrix[:, band]
        inside = (bin_hz > edges_hz[band] + 1e-6) & (bin_hz < edges_hz[band + 2] - 1e-6)
        assert np.all(weights[~inside] < 1e-9) and np.all(weights[inside] > 0)
        assert abs(bin_hz[weights.argmax()] - centres[band]) <= 31.25  # the bin nearest the peak
        rising = (vggish.hertz_to_mel(bin_hz) - edges_mel[band]) / (edges_mel[band + 1] - edges_mel[band])
        falling = (edges_mel[band + 2] - vggish.hertz_to_mel(bin_hz)) / (edges_mel[band + 2] - edges_mel[band + 1])
        assert np.allclose(weights[1:], np.clip(np.minimum(rising, falling), 0, None)[1:])


def test_a_1khz_tone_lands_in_the_band_that_contains_1khz():
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(16000) / 16000)
    log_mel = vggish.log_mel_spectrogram(tone)
    assert log_mel.shape == (1 + (16000 - 400) // 160, 64)
    band = log_mel.mean(axis=0).argmax()
    edges_hz = 700.0 * np.expm1(np.linspace(vggish.hertz_to_mel(125.0), vggish.hertz_to_mel(7500.0), 66) / 1127.0)
    assert edges_hz[band] < 1000.0 < edges_hz[band + 2]
    frame = tone[:400] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400))
    by_hand = np.log(np.abs(np.fft.rfft(frame, 512)) @ vggish.mel_matrix() + 0.01)
    assert np.allclose(log_mel[0], by_hand)


@pytest.mark.parametrize("seconds, preset, windows", [
    (10.0, "google", 19), (1.0, "google", 1), (0.99, "google", 0), (10.0, "frechet_audio_distance", 10),
])
def test_vggish_example_counts_and_shapes(seconds, preset, windows):
    audio = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * 16000)) / 16000)
    examples = vggish.vggish_examples(audio, 16000, **vggish.FRONT_END_PRESETS[preset])
    assert examples.shape == (windows, 96, 64) and examples.dtype == np.float32


def test_fad_tool_waveform_preparation():
    tone = 0.2 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
    counts = vggish.prepare_waveform(tone, 16000, positive_peak_floor=None)
    assert np.all(counts == np.round(counts)) and np.abs(counts).max() == round(10 ** (-1 / 20) * 2 ** 15)
    assert vggish.prepare_waveform(tone, 16000).max() == 1.0  # divided by the positive peak
    silence = vggish.prepare_waveform(np.zeros(16000), 16000)
    assert np.all(silence == 0)
    assert vggish.prepare_waveform(np.zeros((2, 32000)), 32000).shape == (16000,)


@pytest.fixture(scope="module")
def vggish_checkpoint(tmp_path_factory):
    return vggish.save_random_vggish(tmp_path_factory.mktemp("vggish") / "vggish-random.pth", seed=0)


OFFICIAL_VGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


def test_random_vggish_checkpoint_has_official_keys_loads_and_embeds(vggish_checkpoint):
    import torch

    state = torch.load(vggish_checkpoint, weights_only=True, mmap=True)
    assert {key: tuple(value.shape) for key, value in state.items()} == OFFICIAL_VGGISH_SHAPES
    model = vggish.load_vggish(vggish_checkpoint)
    audio = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(2 * 32000) / 32000)
    embeddings = vggish.embed(model, audio, 32000)
    assert embeddings.shape == (3, 128) and np.isfinite(embeddings).all()
    assert (embeddings < 0).any()  # taken before the final ReLU
    # Batching changes only float rounding.
    assert np.allclose(embeddings, vggish.embed(model, audio, 32000, batch_size=1), rtol=1e-4, atol=1e-4)
    assert vggish.embed(model, audio[:1000], 32000).shape == (0, 128)


def test_vggish_checkpoint_errors_name_the_file_and_its_source(tmp_path):
    import torch

    missing = tmp_path / "vggish-10086976.pth"
    with pytest.raises(UserError) as error:
        vggish.load_vggish(missing)
    message = str(error.value)
    assert str(missing) in message and "no such file" in message
    assert "harritaylor/torchvggish" in message and "vggish_model.ckpt" in message
    with pytest.raises(vggish.VGGishCheckpointError, match="TensorFlow"):
        vggish.load_vggish(tmp_path / "vggish_model.ckpt")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, wrong)
    with pytest.raises(vggish.VGGishCheckpointError, match="missing keys"):
        vggish.load_vggish(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(vggish.VGGishCheckpointError, match="not a readable"):
        vggish.load_vggish(garbage)


# -------------------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """Generated and reference folders of 2 s clips: three pairs, one unpaired clip on each side."""
    root = tmp_path_factory.mktemp("evaluation")
    generated, reference = root / "generated", root / "reference"
    pairs = {"vid_same": (C_MAJOR, C_MAJOR), "vid_octave": (C_MAJOR, C_MAJOR_OCTAVE_UP), "vid_other": (C_MAJOR, D_MAJOR)}
    for stem, (gen_notes, ref_notes) in pairs.items():
        write_wav(generated / f"{stem}.wav", chord(gen_notes, 2.0)[None] * 0.5, RATE)
        write_wav(reference / f"{stem}.wav", np.stack([chord(ref_notes, 2.0, 44100)] * 2) * 0.5, 44100)
    write_wav(generated / "only_generated.wav", chord(C_MAJOR, 1.0)[None], RATE)
    write_wav(reference / "only_reference.wav", chord(C_MAJOR, 1.0)[None], RATE)
    (reference / "status.parquet").write_bytes(b"not audio")
    return generated, reference


def test_evaluate_without_checkpoints_reports_chroma_and_says_why_the_rest_is_missing(clip_folders):
    summary, rows = evaluate_pairs(*clip_folders, progress=False)
    assert summary["fad"] is None and "VGGish" in summary["fad_reason"]
    assert all(summary[key] is None for key in ("kld_ref_gen", "kld_gen_ref", "kld_both"))
    assert "PaSST" in summary["kld_reason"]
    assert summary["pairs"] == 3 and summary["generated_files"] == 4 and summary["reference_files"] == 4
    assert summary["unpaired_generated"] == ["only_generated"] and summary["unused_references"] == 1
    frames_per_clip = math.ceil(2 * RATE / 4096)
    assert summary["chroma_frames"] == 3 * frames_per_clip
    by_id = {row["video_id"]: row for row in rows}
    assert by_id["vid_same"]["chroma_cosine"] == 1.0 and by_id["vid_other"]["chroma_cosine"] == 0.0
    assert summary["chroma_cosine"] == pytest.approx(sum(r["chroma_cosine"] for r in rows) / 3)
    assert by_id["vid_same"]["reference_seconds"] == pytest.approx(2.0)
    assert by_id["vid_same"]["kld_ref_gen"] is None and by_id["vid_same"]["kld_segments"] is None


def test_evaluate_with_a_vggish_checkpoint_gives_a_numeric_fad(clip_folders, vggish_checkpoint):
    summary, _ = evaluate_pairs(*clip_folders, vggish=vggish_checkpoint, progress=False)
    assert isinstance(summary["fad"], float) and math.isfinite(summary["fad"]) and summary["fad_reason"] is None
    assert summary["fad_windows_generated"] == summary["fad_windows_reference"] == 3 * 3  # 2 s -> 3 windows
    assert summary["fad_embedder"]["path"] == str(vggish_checkpoint.resolve())
    assert len(summary["fad_embedder"]["sha256"]) == 16


def test_fad_preset_from_params_selects_the_frechet_audio_distance_front_end(clip_folders, vggish_checkpoint):
    from pipeline.config import EvaluateParams
    from pipeline.metrics.evaluate import evaluate_dirs

    google, _ = evaluate_dirs(*clip_folders, EvaluateParams(vggish=str(vggish_checkpoint), device="cpu"),
                              progress=False)
    package, _ = evaluate_dirs(*clip_folders, EvaluateParams(vggish=str(vggish_checkpoint), device="cpu",
                                                             fad_preset="frechet_audio_distance"), progress=False)
    assert google["settings"]["fad"]["preset"] == "google" and google["fad_windows_generated"] == 3 * 3
    # one log-mel over each 2 s clip (198 frames) cut into non-overlapping 96-frame examples: 2 per clip
    assert package["settings"]["fad"]["preset"] == "frechet_audio_distance"
    assert package["settings"]["fad"]["peak_dbfs"] is None
    assert package["fad_windows_generated"] == package["fad_windows_reference"] == 3 * 2
    assert math.isfinite(package["fad"]) and package["fad"] != google["fad"]


def test_evaluate_with_a_passt_checkpoint_gives_both_kl_directions(clip_folders, tmp_path):
    from pipeline.metrics import passt

    checkpoint = passt.save_random_passt(tmp_path / "passt-random.pt", seed=0, embed_dim=64, depth=1, heads=1)
    summary, rows = evaluate_pairs(*clip_folders, passt=checkpoint, progress=False)
    assert summary["kld_segments"] == 3 and summary["kld_reason"] is None
    assert summary["kld_both"] == pytest.approx(summary["kld_ref_gen"] + summary["kld_gen_ref"])
    by_id = {row["video_id"]: row for row in rows}
    assert by_id["vid_same"]["kld_segments"] == 1
    assert by_id["vid_same"]["kld_ref_gen"] == pytest.approx(0.0, abs=1e-3)  # same notes; only resampling differs
    assert summary["kld_ref_gen"] == pytest.approx(np.mean([r["kld_ref_gen"] for r in rows]))
    assert summary["kld_classifier"]["path"] == str(checkpoint.resolve())


def test_evaluate_without_pairs_names_both_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_wav(tmp_path / "a" / "x.wav", np.zeros((1, 100)), RATE)
    with pytest.raises(EvaluationError) as error:
        evaluate_pairs(tmp_path / "a", tmp_path / "b", progress=False)
    assert str(tmp_path / "a") in str(error.value) and str(tmp_path / "b") in str(error.value)
    with pytest.raises(UserError, match="no such folder"):
        evaluate_pairs(tmp_path / "a", tmp_path / "missing", progress=False)


def test_write_results_round_trip(clip_folders, tmp_path):
    summary, rows = evaluate_pairs(*clip_folders, progress=False)
    json_path, parquet_path = write_results(summary, rows, tmp_path / "out" / "metrics.json",
                                            tmp_path / "out" / "clips.parquet")
    assert json.loads(json_path.read_text()) == summary
    table = pq.read_table(parquet_path)
    assert table.schema.equals(ROW_SCHEMA)
    assert table.to_pylist() == rows
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clips.parquet", "metrics.json"]


def test_plots_write_png_files(tmp_path):
    comparison = plot_clip_comparison(chord(C_MAJOR, 2.0), np.stack([chord(D_MAJOR, 2.0, 16000)] * 2), RATE,
                                      tmp_path / "clip.png", "vid: C vs D", reference_sample_rate=16000)
    rows = [{"chroma_cosine": 0.5, "kld_ref_gen": 1.0, "kld_gen_ref": 2.0},
            {"chroma_cosine": 0.7, "kld_ref_gen": None, "kld_gen_ref": None}]
    distributions = plot_metric_distributions(rows, tmp_path / "dist.png")
    only_chroma = plot_metric_distributions([{"chroma_cosine": None}], tmp_path / "empty.png")
    for path in (comparison, distributions, only_chroma):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_v2m_evaluate_writes_the_summary_and_the_clip_table_and_names_a_missing_checkpoint(clip_folders, tmp_path):
    import subprocess
    import sys

    generated, reference = clip_folders
    out = tmp_path / "eval.json"
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--generated", str(generated),
                         "--reference", str(reference), "--out", str(out), "--quiet", "--fad-preset",
                         "frechet_audio_distance", "--params", str(tmp_path / "none.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(out.read_text())
    assert summary["settings"]["fad"]["preset"] == "frechet_audio_distance"
    assert {"fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "pairs"} <= set(summary)
    assert summary["pairs"] == 3 and summary["fad"] is None
    assert pq.read_table(tmp_path / "eval.clips.parquet").num_rows == 3
    assert "3 pairs" in ok.stdout and "chroma_cosine" in ok.stdout

    missing = tmp_path / "vggish-10086976.pth"
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--generated", str(generated),
                          "--reference", str(reference), "--out", str(tmp_path / "x.json"), "--quiet",
                          "--vggish", str(missing)], capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and str(missing) in lines[0], bad.stderr
    assert not (tmp_path / "x.json").exists()
