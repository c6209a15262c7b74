"""EnCodec 32 kHz codes: the configuration, the random-codebook trap and its calibration, loading formats."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (EncodecModel, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                          T5Config)

from pipeline.config import SampleParams
from pipeline.errors import UserError
from pipeline.features import codec
from pipeline.features.embedded_decoder import EmbeddedDecoder
from pipeline.synth.music import render_stems
from pipeline.synth.spec import sample_clip_spec

RATE = 32000


def clips(n: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic accompaniments, mono float32 ``[1, S]`` at 32 kHz."""
    params = SampleParams(seconds=seconds, sample_rate=RATE, seed=seed)
    return [render_stems(sample_clip_spec(params, i))[0].mean(0, keepdims=True) for i in range(n)]


def tiny_config():
    """A cheap codec with the 32 kHz hop: 4 codebooks of 64 entries at 50 Hz (6 bits * 50 Hz * 4 = 1.2 kbps)."""
    return codec.encodec_32khz_config(num_filters=4, hidden_size=16, codebook_size=64, target_bandwidths=[1.2])


def same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def calibrated():
    """The full-size 32 kHz codec, random weights, calibrated on 16 x 4 s clips (3200 frames)."""
    audios = clips(16, 4.0)
    model = codec.random_codec(0)
    stats = codec.calibrate_codebooks(model, audios, seed=0)
    return model, stats, audios


def test_config_is_encodec_32khz_at_50_hz_with_4_codebooks():
    config = codec.encodec_32khz_config()
    assert (config.sampling_rate, config.hop_length, config.frame_rate) == (32000, 640, 50)
    assert (config.codebook_size, config.codebook_dim, config.num_quantizers) == (2048, 128, 4)
    model = codec.random_codec(1)
    assert codec.num_codebooks(model, 2.2) == 4
    audio = clips(1, 4.0)[0]
    codes = codec.encode(model, audio)
    assert codes.dtype == np.int16 and codes.shape == (4, 200)
    # A partial hop still gets a frame: T = ceil(S / 640).
    assert codec.encode(model, audio[:, :127360]).shape == (4, 199)
    assert codec.encode(model, audio[:, :127361]).shape == (4, 200)
    assert codec.encode(model, audio[:, :100]).shape == (4, 1)
    with pytest.raises(ValueError, match="unknown EnCodec config keys"):
        codec.encodec_32khz_config(hop_length=320)


def test_uncalibrated_random_codec_gives_one_code_everywhere():
    # The trap: a random EncodecModel's codebooks are all zeros, so every frame is code 0.
    model = codec.random_codec(0)
    codes = [codec.encode(model, audio) for audio in clips(2, 2.0)]
    assert all(np.all(c == 0) for c in codes)
    assert codec.codebook_usage(codes)[0].tolist() == [1, 1, 1, 1]


def test_calibrated_codes_spread_over_the_fitted_entries(calibrated):
    model, stats, audios = calibrated
    # 3200 frames at >= 4 frames per entry: 800 entries fitted per codebook, and every one is used.
    assert stats["frames"] == 3200 and stats["entries_fitted"] == 800
    assert stats["entries_used"] == [800, 800, 800, 800]
    assert min(stats["entropy_nats"]) > 5.0             # measured 5.25 .. 6.42 (uniform: ln 800 = 6.68)
    left = stats["residual_variance"]
    assert all(a > b for a, b in zip(left, left[1:])) and left[0] < 0.5
    # The encode path gives the same codes as calibration saw.
    codes = [codec.encode(model, audio) for audio in audios]
    used, entropy = codec.codebook_usage(codes)
    assert used.tolist() == stats["entries_used"]
    assert np.allclose(entropy, stats["entropy_nats"], atol=1e-3)
    # Different clips get different codes.
    agreement = [(codes[i] == codes[j]).mean() for i in range(len(codes)) for j in range(i + 1, len(codes))]
    assert max(agreement) < 0.6 and np.mean(agreement) < 0.4
    # Codes are not float noise: batched float math (differences ~1e-7) changes almost none of them
    # (without the frames-per-entry cap, codebook 4 changed in 99% of the frames).
    batched = codec.encode_batch(model, np.stack(audios[:4]))
    assert batched.shape == (4, 4, 200)
    assert (batched != np.stack(codes[:4])).mean() < 0.005


def test_calibration_fills_every_entry_when_frames_suffice():
    model = codec.random_codec(0, tiny_config())
    stats = codec.calibrate_codebooks(model, clips(8, 4.0, seed=1), seed=0)
    assert stats["frames"] == 1600 and stats["entries_fitted"] == 64
    assert stats["entries_used"] == [64, 64, 64, 64]
    assert min(stats["entropy_nats"]) > 3.5             # uniform: ln 64 = 4.16


def test_calibrated_codec_is_deterministic_for_a_seed(tmp_path, caplog):
    audios = clips(4, 2.0, seed=2)
    kwargs = dict(init_frames=64, iterations=4, config=tiny_config())
    first = codec.save_calibrated_random_codec(tmp_path / "a", audios, seed=3, **kwargs)
    second = codec.save_calibrated_random_codec(tmp_path / "b", audios, seed=3, **kwargs)
    codec.save_calibrated_random_codec(tmp_path / "c", audios, seed=4, **kwargs)
    assert first == second
    with caplog.at_level(logging.WARNING, logger="v2m.codec"):
        a, b, c = (codec.load_codec(tmp_path / name, device="cpu") for name in "abc")
    assert "RANDOM weights" in caplog.text and "NOT EnCodec's decoder" in caplog.text
    assert all(isinstance(getattr(m, codec.EMBEDDED_ATTR), EmbeddedDecoder) for m in (a, b, c))
    assert a.config.v2m_calibration["decoder"]["file"] == "embedded_decoder.npz"
    decoded = codec.decode(a, codec.encode(a, audios[0], 1.2))
    assert decoded.dtype == np.float32 and decoded.shape == audios[0].shape and np.isfinite(decoded).all()
    assert same_tensors(a, b) and not same_tensors(a, c)
    assert a.config.v2m_random_weights and a.config.v2m_calibration["entries_used"] == first["entries_used"]
    assert np.array_equal(codec.encode(a, audios[0], 1.2), codec.encode(b, audios[0], 1.2))


def test_calibration_clips_reuse_their_stored_encoder_frames_with_identical_codes(tmp_path, monkeypatch):
    audios = clips(3, 2.0, seed=5)
    codec.save_calibrated_random_codec(tmp_path / "c", audios[:2], seed=1, init_frames=64, iterations=3,
                                       config=tiny_config())
    model = codec.load_codec(tmp_path / "c", device="cpu")
    assert len(getattr(model, codec.LATENTS_ATTR)) == 2
    fresh = {i: codec.encode_batch(model, audios[i][None], 1.2)[0] for i in range(2)}
    through_encoder = [model.encode(torch.from_numpy(a[None]), bandwidth=1.2).audio_codes[0, 0].numpy() for a in audios]
    assert all(np.array_equal(fresh[i], through_encoder[i]) for i in range(2))

    calls = []
    original = type(model.encoder).forward
    monkeypatch.setattr(type(model.encoder), "forward", lambda self, x: calls.append(x.shape) or original(self, x))
    assert np.array_equal(codec.encode(model, audios[0], 1.2), through_encoder[0])
    assert calls == []                                       # a calibration clip: its stored frames, no encoder
    changed = audios[0].copy()
    changed[0, 5] += 1e-3
    codec.encode(model, changed, 1.2)
    assert np.array_equal(codec.encode(model, audios[2], 1.2), through_encoder[2])
    assert len(calls) == 2                                   # other audio, even one sample off: the encoder runs


def test_saved_codec_folder_loads_with_identical_codes(calibrated, tmp_path):
    model, _, audios = calibrated
    model.save_pretrained(tmp_path / "encodec")  # the format of facebook/encodec_32khz
    loaded = codec.load_codec(tmp_path / "encodec", device="cpu")
    assert isinstance(loaded, EncodecModel) and not loaded.training
    assert same_tensors(model, loaded)
    assert not hasattr(loaded, codec.EMBEDDED_ATTR)   # no random-weights marker: EnCodec's own decoder
    assert np.array_equal(codec.encode(model, audios[3]), codec.encode(loaded, audios[3]))


def test_hub_id_in_the_local_cache_loads(tmp_path):
    model = codec.random_codec(5, tiny_config())
    repo = tmp_path / "hub" / "models--facebook--encodec_32khz"
    model.save_pretrained(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    loaded = codec.load_codec("facebook/encodec_32khz", device="cpu", cache_dir=tmp_path / "hub")
    assert same_tensors(model, loaded)
    with pytest.raises(FileNotFoundError, match="no such hub id in the local Hugging Face cache"):
        codec.load_codec("facebook/musicgen-small", cache_dir=tmp_path / "hub")


def test_musicgen_folder_loads_its_audio_encoder_weights(tmp_path):
    config = MusicgenConfig(
        text_encoder=T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2),
        audio_encoder=tiny_config(),
        decoder=MusicgenDecoderConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      ffn_dim=32, num_codebooks=4, max_position_embeddings=64,
                                      pad_token_id=64, bos_token_id=64))
    torch.manual_seed(0)
    musicgen = MusicgenForConditionalGeneration(config)
    with torch.no_grad():  # non-zero codebooks, so that loading them is visible
        for layer in musicgen.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    musicgen.save_pretrained(tmp_path / "musicgen")
    loaded = codec.load_codec(tmp_path / "musicgen", device="cpu")
    assert isinstance(loaded, EncodecModel)
    assert same_tensors(musicgen.audio_encoder, loaded)
    # Why model_type is checked: EncodecModel.from_pretrained on this folder gives random weights.
    assert not same_tensors(musicgen.audio_encoder, EncodecModel.from_pretrained(tmp_path / "musicgen"))


def test_missing_codec_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        codec.load_codec(tmp_path / "nowhere", cache_dir=tmp_path / "hub")
    message = str(missing.value)
    for needed in ("config.json", "model.safetensors", "facebook/encodec_32khz", "facebook/musicgen-small",
                   "save_pretrained", "codec_init"):
        assert needed in message
    (tmp_path / "half").mkdir()
    codec.random_codec(0, tiny_config()).config.to_json_file(tmp_path / "half" / "config.json")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        codec.load_codec(tmp_path / "half")


def test_incomplete_checkpoint_is_an_error_not_random_weights(tmp_path):
    codec.random_codec(0, tiny_config()).save_pretrained(tmp_path / "codec")
    weights = tmp_path / "codec" / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "quantizer" not in k}, weights,
              metadata={"format": "pt"})
    with pytest.raises(UserError, match="lacks 16 EnCodec weights"):
        codec.load_codec(tmp_path / "codec")


def test_decode_gives_audio_of_the_clip_length(calibrated):
    model, _, audios = calibrated
    audio = codec.decode(model, codec.encode(model, audios[0]))
    assert audio.dtype == np.float32 and audio.shape == audios[0].shape == (1, 128000)
    assert np.isfinite(audio).all()


def test_codebook_usage_counts_entries_and_entropy():
    used, entropy = codec.codebook_usage([np.array([[0, 0], [3, 3]]), np.array([[1, 1], [3, 3]])])
    assert used.tolist() == [2, 1]
    assert np.allclose(entropy, [math.log(2), 0.0])


def test_the_embedded_codec_takes_its_encoder_width_from_the_calibration_params(tmp_path):
    """features.codes.calibration.num_filters narrows the random stand-in's encoder (3.5x faster at 32 than
    EnCodec's 64), keeping what the rest of the pipeline reads: 4 codebooks of 2048 entries at 50 Hz."""
    from pipeline.config import CodecCalibrationParams
    audios = clips(2, 2.0, seed=6)
    calibration = CodecCalibrationParams(num_filters=8, init_frames=64, iterations=2)
    codec.calibrate_embedded_codec(tmp_path / "c", audios, calibration)
    model = codec.load_codec(tmp_path / "c", device="cpu")
    assert model.config.num_filters == 8 and model.encoder.layers[0].conv.out_channels == 8
    fresh = clips(1, 2.0, seed=7)[0]                                    # not stored: through the narrow encoder
    codes = codec.encode(model, fresh, 2.2)
    assert codes.shape == (4, 100) and int(codes.max()) < 2048 == model.config.codebook_size


def test_encoder_frames_batch_the_lstm_and_keep_each_clips_frames_in_order(monkeypatch):
    """encoder_frames runs the layers before the LSTM clip by clip and the rest in batches of equal length:
    the same frames as the encoder on each clip alone, in clip order, whatever the batch boundaries."""
    model = codec.random_codec(0, tiny_config())
    assert any(isinstance(layer, codec.EncodecLSTM) for layer in model.encoder.layers)
    audios = clips(3, 2.0, seed=8) + clips(2, 1.3, seed=9) + clips(2, 2.0, seed=10)   # 100, 65, 100 frames
    monkeypatch.setattr(codec, "ENCODER_TAIL_BATCH", 2)
    frames = codec.encoder_frames(model, audios)
    with torch.inference_mode():
        alone = torch.cat([model.encoder(torch.from_numpy(audio[None]))[0].t() for audio in audios])
    assert frames.shape == alone.shape == (3 * 100 + 2 * 65 + 2 * 100, model.config.hidden_size)
    assert torch.allclose(frames, alone, atol=1e-5 * float(alone.abs().max()))


def test_encode_clips_gives_each_clip_its_own_codes_stored_or_fresh(tmp_path, monkeypatch):
    """The codes stage's call: calibration clips from their stored frames, the others through the encoder
    with its LSTM batched; each clip's codes as encode gives them alone, in order."""
    audios = clips(4, 2.0, seed=11)
    codec.save_calibrated_random_codec(tmp_path / "c", audios[:2], seed=1, init_frames=64, iterations=3,
                                       config=tiny_config())
    model = codec.load_codec(tmp_path / "c", device="cpu")
    monkeypatch.setattr(codec, "ENCODER_TAIL_BATCH", 2)
    mixed = [audios[2], audios[0], audios[3], clips(1, 1.3, seed=12)[0], audios[1]]     # fresh, stored, fresh, ...
    together = codec.encode_clips(model, mixed, 1.2)
    alone = [codec.encode(model, audio, 1.2) for audio in mixed]
    assert [c.shape for c in together] == [c.shape for c in alone] == [(4, 100)] * 3 + [(4, 65), (4, 100)]
    assert all(c.dtype == np.int16 for c in together)
    for batched, single in zip(together, alone):
        assert (batched == single).mean() >= 0.99              # a near-tie in a late codebook may flip, no more
    assert not np.array_equal(together[0], together[2])
