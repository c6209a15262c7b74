"""Demucs vocal removal: the random-weights model goes through Demucs's real loading path, and the
plumbing around apply_model (normalisation, stems, resampling, files) is exact."""

from __future__ import annotations

import hashlib
import logging
import re

import numpy as np
import pytest
import soundfile
import torch
from demucs.api import Separator
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model
from demucs.repo import ModelLoadingError

from pipeline.config import SampleParams, SeparateParams
from pipeline.media import write_wav
from pipeline.separate import (load_separator, save_random_from_params, save_random_htdemucs,
                               separate_accompaniment, separate_file, to_target)
from pipeline.synth.music import render_stems
from pipeline.synth.spec import sample_clip_spec

NAME = "v2m-random"
TINY = dict(channels=8, depth=2, transformer_layers=1, seed=0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_random_htdemucs(tmp_path_factory.mktemp("demucs") / "repo", NAME, **TINY)


@pytest.fixture(scope="module")
def model(repo):
    return load_separator(repo, NAME, device="cpu")


@pytest.fixture(scope="module")
def clip():
    """(accompaniment, vocals) of a 4 s synthetic clip, float32 [2, S] at 44.1 kHz."""
    return render_stems(sample_clip_spec(SampleParams(seconds=4.0), 0))


def test_saved_folder_is_a_demucs_repo_with_checksummed_package(repo):
    files = sorted(path.name for path in repo.iterdir())
    assert len(files) == 2 and files[1] == f"{NAME}.yaml"
    sig, checksum = re.fullmatch(r"([0-9a-f]{8})-([0-9a-f]{8})\.th", files[0]).groups()
    assert hashlib.sha256((repo / files[0]).read_bytes()).hexdigest()[:8] == checksum
    assert sig in (repo / f"{NAME}.yaml").read_text()


def test_demucs_get_model_loads_it(repo):
    bag = get_model(NAME, repo=repo)
    assert isinstance(bag, BagOfModels) and len(bag.models) == 1
    assert isinstance(bag.models[0], HTDemucs)
    assert bag.sources == ["drums", "bass", "other", "vocals"]
    assert bag.samplerate == 44100 and bag.audio_channels == 2


def test_same_arguments_same_bytes_and_two_loads_same_output(repo, tmp_path, clip, caplog):
    again = save_random_htdemucs(tmp_path / "again", NAME, **TINY)
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in repo.iterdir())
    mix = sum(clip)[:, :44100]
    with caplog.at_level(logging.WARNING, logger="v2m.separate"):
        first = separate_accompaniment(load_separator(repo, NAME, "cpu"), mix)
        second = separate_accompaniment(load_separator(again, NAME, "cpu"), mix)
    assert "not htdemucs" in caplog.text
    assert np.array_equal(first.accompaniment, second.accompaniment)
    assert np.array_equal(first.vocals, second.vocals)


def test_stems_shapes_and_sums(model, clip):
    mix = sum(clip)
    stems = separate_accompaniment(model, mix, overlap=0.25, shifts=0, device="cpu")
    assert stems.samplerate == 44100 and list(stems.sources) == ["drums", "bass", "other", "vocals"]
    for audio in (stems.accompaniment, stems.vocals, *stems.sources.values()):
        assert audio.shape == mix.shape and audio.dtype == np.float32
    np.testing.assert_allclose(stems.accompaniment + stems.vocals, sum(stems.sources.values()), atol=1e-6)
    np.testing.assert_allclose(stems.accompaniment,
                               stems.sources["drums"] + stems.sources["bass"] + stems.sources["other"], atol=1e-6)


def test_same_stems_as_demucs_own_separator(repo, model, clip, monkeypatch):
    """Normalisation, chunking and its undoing exactly as demucs.api.Separator (what `demucs` runs): with
    its chunking for a clip longer than a chunk, and as its unsplit pass for one that fits in a chunk (its
    split would run a second chunk for the clip's last 0.15 s at 6 s, twice the work)."""
    long_mix = np.concatenate([sum(clip)] * 3, axis=1)[:, :9 * 44100]          # 9 s: two 7.8 s chunks
    short_mix = sum(clip)[:, :6 * 44100 // 4]                                   # 1.5 s: one chunk
    passes = []
    forward = type(model.models[0]).forward
    monkeypatch.setattr(type(model.models[0]), "forward", lambda self, mix: passes.append(1) or forward(self, mix))
    for mix, split in ((long_mix, True), (short_mix, False)):
        separator = Separator(model=NAME, repo=repo, device="cpu", shifts=0, overlap=0.25, split=split,
                              segment=7.8)
        _, theirs = separator.separate_tensor(torch.from_numpy(mix), 44100)
        passes.clear()
        ours = separate_accompaniment(model, mix, overlap=0.25, shifts=0, device="cpu")
        assert len(passes) == (2 if split else 1)
        for source, audio in theirs.items():
            np.testing.assert_array_equal(ours.sources[source], audio.numpy())


def test_mono_is_separated_as_identical_stereo(model, clip):
    mono = clip[0][:1, :44100]
    stems = separate_accompaniment(model, mono)
    assert stems.vocals.shape == (2, 44100)
    np.testing.assert_allclose(stems.vocals, separate_accompaniment(model, np.repeat(mono, 2, 0)).vocals, atol=1e-6)


def test_segment_longer_than_the_transformer_was_made_for_is_refused(model):
    with pytest.raises(ValueError, match="longer than"):
        separate_accompaniment(model, np.zeros((2, 1000), np.float32), segment=30.0)


@pytest.mark.parametrize("samples", [44100 * 4, 44100 * 4 + 1, 12345, 1])
def test_to_target_sample_count(samples):
    out = to_target(np.zeros((2, samples), np.float32), 44100, 32000)
    assert out.shape == (1, round(samples * 32000 / 44100)) and out.dtype == np.float32


def test_to_target_keeps_a_sine_at_440_hz():
    t = np.arange(3 * 44100) / 44100
    sine = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    out = to_target(np.stack([sine, sine]), 44100, 32000)[0]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert abs(np.fft.rfftfreq(out.size, 1 / 32000)[spectrum.argmax()] - 440.0) < 0.5
    assert abs(np.abs(out[1000:-1000]).max() - 1.0) < 1e-3  # the downmix of identical channels keeps level


def test_separate_file_writes_32k_mono_16bit(model, clip, tmp_path):
    source = write_wav(tmp_path / "in.wav", sum(clip)[:, :3 * 44100], 44100, subtype="FLOAT")
    facts = separate_file(model, source, tmp_path / "out" / "acc.wav", target_rate=32000, segment=0.0,
                          overlap=0.25, shifts=0, device="cpu")
    info = soundfile.info(str(tmp_path / "out" / "acc.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (32000, 1, "PCM_16", 96000)
    assert facts["output_samples"] == 96000 and facts["seconds"] == pytest.approx(3.0)
    assert facts["realtime_factor"] > 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["acc.wav"]  # no temp file left


def test_missing_folder_and_models_name_the_file(repo, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_separator(tmp_path / "nowhere", NAME)
    with pytest.raises(FileNotFoundError, match=r"htdemucs\.yaml.*955717e8-8726e21a\.th"):
        load_separator(repo, "htdemucs")
    (tmp_path / "bag.yaml").write_text("models: ['955717e8']\n")
    with pytest.raises(FileNotFoundError, match=r"955717e8-<checksum>\.th"):
        load_separator(tmp_path, "bag")


def test_corrupted_package_fails_its_checksum(tmp_path):
    repo = save_random_htdemucs(tmp_path / "repo", NAME, **TINY)
    package = next(repo.glob("*.th"))
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    with pytest.raises(ModelLoadingError, match=f"Invalid checksum for file .*{package.name}"):
        load_separator(repo, NAME)


def test_params_builder_writes_the_configured_model(tmp_path):
    params = SeparateParams(repo=str(tmp_path / "models"), model="tiny")
    repo = save_random_from_params(params)
    assert isinstance(load_separator(repo, "tiny", "cpu").models[0], HTDemucs)


def test_invalid_tiny_shapes_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        save_random_htdemucs(tmp_path / "a", NAME, channels=6, depth=1, transformer_layers=1, seed=0)
    with pytest.raises(ValueError, match="depth <= 5"):
        save_random_htdemucs(tmp_path / "b", NAME, channels=8, depth=6, transformer_layers=1, seed=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_training_on_stems_lowers_the_loss_and_is_deterministic(tmp_path, clip):
    accompaniment, vocals = clip
    stems = [(accompaniment, vocals)]
    common = dict(channels=8, depth=2, transformer_layers=1, seed=3, stems=stems, train_steps=20, train_batch=2,
                  train_segment_seconds=2.0, train_lr=3e-3)
    first = save_random_htdemucs(tmp_path / "a", NAME, **common)
    second = save_random_htdemucs(tmp_path / "b", NAME, **common)
    files_a = sorted(p.name for p in first.iterdir())
    assert files_a == sorted(p.name for p in second.iterdir())
    th = next(n for n in files_a if n.endswith(".th"))
    assert (first / th).read_bytes() == (second / th).read_bytes()
    untrained = save_random_htdemucs(tmp_path / "c", NAME, channels=8, depth=2, transformer_layers=1, seed=3)
    assert next(p.name for p in untrained.iterdir() if p.suffix == ".th") != th  # the recipe is in the sig
    from pipeline.separate import random_htdemucs, train_on_stems
    losses = train_on_stems(random_htdemucs(channels=8, depth=2, transformer_layers=1, seed=3), stems, steps=20,
                            batch=2, segment_seconds=2.0, lr=3e-3, seed=3)
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4]), losses
    # Trained, the accompaniment estimate is far closer to the clean stem than the random model's.
    mix = accompaniment + vocals
    sdr = lambda est: 10 * np.log10((accompaniment ** 2).sum() / ((accompaniment - est) ** 2).sum())
    trained = separate_accompaniment(load_separator(first, NAME, "cpu"), mix, device="cpu").accompaniment
    random_out = separate_accompaniment(load_separator(untrained, NAME, "cpu"), mix, device="cpu").accompaniment
    assert sdr(trained) > sdr(random_out) + 3.0
