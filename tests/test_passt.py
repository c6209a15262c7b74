"""PaSST for the KL divergence: mel front end, network layout, checkpoints, segmenting, and the KL itself.

Known answers come from shared docs/metrics.md ("KL divergence") and from the published sources
named in pipeline/metrics/passt.py. Anything that runs the network uses a tiny width and depth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from pipeline.errors import UserError
from pipeline.metrics import kld
from pipeline.metrics.passt import (
    CHECKPOINT_FILE, MelFrontEnd, PaSST, PasstCheckpointError, PasstCheckpointMissing, frame_count,
    hz_to_kaldi_mel, kaldi_mel_banks, kaldi_mel_to_hz, load_passt, official_key_shapes, save_random_passt,
    segment_probabilities, split_segments,
)

SR = 32_000
TINY = dict(embed_dim=64, depth=1)   # heads = 64 // 64 = 1, the rule load_passt assumes


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_random_passt(tmp_path_factory.mktemp("passt") / "tiny.pt", seed=1, **TINY)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_passt(tiny_checkpoint)


@pytest.fixture(scope="module")
def front_end():
    return MelFrontEnd()


def tone(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


# ----------------------------------------------------------------------------------- mel banks

def test_kaldi_mel_scale():
    assert hz_to_kaldi_mel(700.0) == pytest.approx(1127.0 * math.log(2.0))
    assert hz_to_kaldi_mel(15_000.0) == pytest.approx(1127.0 * math.log(1.0 + 15_000.0 / 700.0))
    freqs = np.array([0.0, 100.0, 1000.0, 15_000.0])
    np.testing.assert_allclose(kaldi_mel_to_hz(hz_to_kaldi_mel(freqs)), freqs, atol=1e-9)


def test_mel_banks_are_kaldi_triangles():
    weights, centres = kaldi_mel_banks()          # PaSST eval: 128 bins, n_fft 1024, 32 kHz, 0-15000 Hz
    assert weights.shape == (128, 513) and centres.shape == (128,)
    delta = hz_to_kaldi_mel(15_000.0) / 129       # (mel(fmax) - mel(fmin)) / (n_mels + 1), fmin = 0
    centre_mel = hz_to_kaldi_mel(centres)
    np.testing.assert_allclose(centre_mel, delta * np.arange(1, 129), rtol=1e-12)
    # Each row is the triangle max(0, 1 - |mel(f_k) - centre| / delta) at f_k = k * 31.25 Hz, k < 512.
    fft_mel = hz_to_kaldi_mel(np.arange(512) * SR / 1024)
    expected = np.maximum(0.0, 1.0 - np.abs(fft_mel[None, :] - centre_mel[:, None]) / delta)
    np.testing.assert_allclose(weights[:, :512], expected, atol=1e-12)
    assert not weights[:, 512].any()              # Nyquist column: the zero pad
    # Peaks sit at the FFT bin nearest the centre mel (rows that reach any FFT bin).
    live = weights.max(axis=1) > 0
    nearest = np.abs(fft_mel[None, :] - centre_mel[:, None]).argmin(axis=1)
    np.testing.assert_array_equal(weights.argmax(axis=1)[live], nearest[live])
    assert weights.max() <= 1.0
    # Overlapping triangles sum to 1 between the first and last centre, rise from 0 below, 0 above fmax.
    sums = weights.sum(axis=0)
    inside = (fft_mel >= centre_mel[0]) & (fft_mel <= centre_mel[-1])
    np.testing.assert_allclose(sums[:512][inside], 1.0, atol=1e-12)
    below = fft_mel < centre_mel[0]
    np.testing.assert_allclose(sums[:512][below], fft_mel[below] / delta, atol=1e-12)
    assert not sums[np.arange(513) * SR / 1024 >= 15_000.0].any()


@pytest.mark.parametrize("mel_bin", [40, 90, 120])
def test_pure_tone_lands_in_its_mel_bin(front_end, mel_bin):
    _, centres = kaldi_mel_banks()
    mel = front_end(torch.from_numpy(tone(centres[mel_bin]))[None])[0]
    assert int(mel.mean(dim=1).argmax()) == mel_bin


# ----------------------------------------------------------------------------------- front end

def test_window_is_symmetric_hann(front_end):
    reference = scipy.signal.get_window("hann", 800, fftbins=False)   # torch.hann_window(800, periodic=False)
    np.testing.assert_allclose(front_end.window.numpy(), reference, atol=1e-7)
    assert front_end.window[0] == 0 and front_end.window[-1] == 0


@pytest.mark.parametrize("samples", [4801, 32_000, 32_319, 32_320, 32_321, 160_000])
def test_frame_counts(front_end, samples):
    audio = torch.zeros(1, samples)
    # The centered STFT itself gives 1 + L // 320; pre-emphasis leaves L = S - 1 samples.
    assert front_end.power_spectrogram(audio).shape[-1] == 1 + samples // 320
    assert front_end(audio).shape == (1, 128, 1 + (samples - 1) // 320) == (1, 128, frame_count(samples))
    assert frame_count(20 * SR) == 2000            # hear21passt base20sec: input_tdim=2000


def test_normalisation_constants(front_end):
    silent = front_end(torch.zeros(1, SR))
    np.testing.assert_allclose(silent.numpy(), (math.log(1e-5) + 4.5) / 5, rtol=1e-6)   # -1.40259
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(SR).astype(np.float32))[None]
    # Twice the amplitude: 4x the power, so +ln(4) / 5 wherever mel >> 1e-5 (here: mel > 0.1).
    quiet, loud = front_end(noise), front_end(2 * noise)
    strong = quiet > (math.log(0.1) + 4.5) / 5
    assert strong.float().mean() > 0.9
    np.testing.assert_allclose((loud - quiet)[strong].numpy(), math.log(4.0) / 5, atol=1e-4)


def test_front_end_matches_numpy_formula(front_end):
    x = (0.1 * np.random.default_rng(1).standard_normal(SR // 2)).astype(np.float32)
    y = x[1:].astype(np.float64) - 0.97 * x[:-1]                         # pre-emphasis [-0.97, 1]
    window = np.pad(scipy.signal.get_window("hann", 800, fftbins=False), (112, 112))
    padded = np.pad(y, (512, 512), mode="reflect")
    frames = np.stack([padded[i * 320:i * 320 + 1024] for i in range(1 + len(y) // 320)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    reference = (np.log(kaldi_mel_banks()[0] @ power.T + 1e-5) + 4.5) / 5
    ours = front_end(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4)


# ------------------------------------------------------------------------------------- network

def _official_20s_keys() -> dict[str, tuple[int, ...]]:
    """passt-s-f128-20sec-p16-s10-ap.474-swa.pt as PaSST's module layout spells it (hear21passt)."""
    keys = {"cls_token": (1, 1, 768), "dist_token": (1, 1, 768), "new_pos_embed": (1, 2, 768),
            "freq_new_pos_embed": (1, 768, 12, 1), "time_new_pos_embed": (1, 768, 1, 200),
            "patch_embed.proj.weight": (768, 1, 16, 16), "patch_embed.proj.bias": (768,),
            "norm.weight": (768,), "norm.bias": (768,), "head.0.weight": (768,), "head.0.bias": (768,),
            "head.1.weight": (527, 768), "head.1.bias": (527,),
            "head_dist.weight": (527, 768), "head_dist.bias": (527,)}
    for i in range(12):
        for name, shape in (("norm1.weight", (768,)), ("norm1.bias", (768,)),
                            ("attn.qkv.weight", (2304, 768)), ("attn.qkv.bias", (2304,)),
                            ("attn.proj.weight", (768, 768)), ("attn.proj.bias", (768,)),
                            ("norm2.weight", (768,)), ("norm2.bias", (768,)),
                            ("mlp.fc1.weight", (3072, 768)), ("mlp.fc1.bias", (3072,)),
                            ("mlp.fc2.weight", (768, 3072)), ("mlp.fc2.bias", (768,))):
            keys[f"blocks.{i}.{name}"] = shape
    return keys


def test_full_size_state_dict_is_the_release_files():
    model = PaSST(random_init=False)           # paper defaults; not saved
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _official_20s_keys() == official_key_shapes()
    assert len(ours) == 159 and sum(math.prod(s) for s in ours.values()) == 86_231_326


def test_logits_use_the_averaged_token_features_not_head_dist(tiny_model):
    audio = torch.from_numpy(tone(440.0, 1.0))[None]
    with torch.no_grad():
        before = tiny_model(audio)
        saved = tiny_model.head_dist.weight.clone()
        tiny_model.head_dist.weight.mul_(-3.0)
        after = tiny_model(audio)
        tiny_model.head_dist.weight.copy_(saved)
    assert before.shape == (1, 527)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_time_embedding_is_cut_to_the_input_and_too_long_is_refused():
    model = PaSST(max_time_frames=200, random_init=True, **TINY, heads=1).eval()   # 20 patch columns
    with torch.no_grad():
        assert model(torch.zeros(1, SR)).shape == (1, 527)                            # 100 frames: 9 columns
        with pytest.raises(ValueError, match="patch columns"):
            model(torch.zeros(1, 3 * SR))                                           # 300 frames: 29 columns


# --------------------------------------------------------------------------------- checkpoints

def test_random_checkpoint_has_official_format_and_loads(tiny_checkpoint, tiny_model):
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert {k: tuple(v.shape) for k, v in state.items()} == official_key_shapes(TINY)
    assert not tiny_model.training and not any(p.requires_grad for p in tiny_model.parameters())
    assert tiny_model.arch == dict(embed_dim=64, depth=1, heads=1, mlp_ratio=4.0, patch=16, stride=10,
                                   n_mels=128, max_time_frames=2000, classes=527)
    for key, value in state.items():
        torch.testing.assert_close(tiny_model.state_dict()[key], value, rtol=0, atol=0)


def test_random_checkpoint_is_seeded(tmp_path):
    a = torch.load(save_random_passt(tmp_path / "a.pt", seed=3, **TINY), weights_only=True)
    b = torch.load(save_random_passt(tmp_path / "b.pt", seed=3, **TINY), weights_only=True)
    c = torch.load(save_random_passt(tmp_path / "c.pt", seed=4, **TINY), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_missing_checkpoint_is_a_clear_user_error(tmp_path):
    path = tmp_path / "nowhere" / CHECKPOINT_FILE
    with pytest.raises(PasstCheckpointMissing) as caught:
        load_passt(path)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    assert str(path) in message and "github.com/kkoutini/PaSST/releases" in message


def test_mismatched_checkpoints_are_clear_user_errors(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    renamed = dict(state)
    renamed["head_dist.b"] = renamed.pop("head_dist.bias")
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(PasstCheckpointError, match=r"1 missing \(e\.g\. head_dist\.bias\).*1 unexpected"):
        load_passt(tmp_path / "renamed.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PasstCheckpointError, match="not a PaSST checkpoint"):
        load_passt(tmp_path / "other.pt")
    with pytest.raises(PasstCheckpointError, match="other shapes.*freq_new_pos_embed"):
        load_passt(tiny_checkpoint, n_mels=64)       # 6 frequency patches, the file has 12
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_passt(tmp_path / "junk.pt")


# ---------------------------------------------------------------------------------- segmenting

@pytest.mark.parametrize("seconds, lengths", [
    (45.0, [640_000, 640_000, 160_000]),        # 20 s + 20 s + 5 s
    (40.1, [640_000, 640_000]),                 # the 0.1 s tail (3200 samples) is dropped
    (20.0, [640_000]),
    (0.15, []),                                 # 4800 samples: not more than 0.15 s
])
def test_split_segments(seconds, lengths):
    audio = np.zeros(round(seconds * SR), dtype=np.float32)
    assert [len(s) for s in split_segments(audio)] == lengths


def test_split_segments_keeps_just_over_min_seconds():
    assert [len(s) for s in split_segments(np.zeros(640_000 + 4801))] == [640_000, 4801]
    assert [len(s) for s in split_segments(np.zeros(640_000 + 4800))] == [640_000]


def test_segment_probabilities(tiny_model):
    audio = 0.1 * np.random.default_rng(2).standard_normal(45 * SR).astype(np.float32)
    probs = segment_probabilities(tiny_model, audio)
    assert probs.shape == (3, 527)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs > 0).all()
    # The same clip at 16 kHz is resampled to 32 kHz first: same segment count.
    assert segment_probabilities(tiny_model, audio[::2].copy(), sample_rate=16_000).shape == (3, 527)
    # The shortest kept segment (4801 samples -> 16 frames -> one patch column) runs; shorter gives no rows.
    assert segment_probabilities(tiny_model, audio[:4801]).shape == (1, 527)
    assert segment_probabilities(tiny_model, audio[:4800]).shape == (0, 527)
    assert segment_probabilities(tiny_model, audio[:round(40.1 * SR)]).shape == (2, 527)


# --------------------------------------------------------------------------------------------- KL

def test_kl_known_answers():
    p = np.array([[0.2, 0.3, 0.5]])
    assert kld.kl_rows(p, p, eps=0.0)[0] == 0.0
    assert kld.kl_rows([[0.5, 0.5]], [[0.9, 0.1]], eps=0.0)[0] == pytest.approx(0.510826, abs=1e-6)
    assert kld.kl_rows([[0.5, 0.5]], [[0.9, 0.1]])[0] == pytest.approx(0.510820, abs=1e-6)
    assert kld.kl_rows([[1.0, 0.0]], [[0.5, 0.5]], eps=0.0)[0] == pytest.approx(math.log(2.0))   # 0 log 0 = 0


def test_kl_rows_is_audiocrafts_kl_div():
    rng = np.random.default_rng(3)
    target, pred = rng.dirichlet(np.ones(527), size=5), rng.dirichlet(np.ones(527) * 0.1, size=5)
    published = torch.nn.functional.kl_div((torch.from_numpy(pred) + 1e-6).log(), torch.from_numpy(target),
                                           reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(kld.kl_rows(target, pred, eps=1e-6), published, rtol=1e-12)


def test_kld_summary_names_the_direction():
    ref, gen = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    summary = kld.kld_summary(ref, gen)
    assert summary["kld_ref_gen"] == pytest.approx(0.510820, abs=1e-6)     # KL(reference || generated)
    assert summary["kld_gen_ref"] == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-5)
    assert summary["kld_both"] == pytest.approx(summary["kld_ref_gen"] + summary["kld_gen_ref"])
    assert summary["segments"] == 1
    one = kld.kld_summary(ref, gen, eps=0.0)
    two = kld.kld_summary(np.vstack([ref, ref]), np.vstack([gen, ref]), eps=0.0)   # mean over all rows
    assert two["kld_ref_gen"] == pytest.approx(one["kld_ref_gen"] / 2) and two["segments"] == 2
    with pytest.raises(ValueError):
        kld.kld_summary(ref, np.vstack([gen, gen]))
