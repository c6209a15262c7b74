"""The embedded decoder (spectral lookup + Griffin-Lim): its ceiling on held-out clips, its file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import SampleParams
from pipeline.errors import UserError
from pipeline.features import codec
from pipeline.features.embedded_decoder import FILE, EmbeddedDecoder, EmbeddedDecoderError
from pipeline.metrics import chroma
from pipeline.synth.music import render_stems
from pipeline.synth.spec import sample_clip_spec

TRAIN, HELD_OUT, SECONDS = 48, 12, 4.0


def clips(n: int, seconds: float, seed: int) -> list[np.ndarray]:
    """``n`` v2m-synth accompaniments (what separation gives codec_init), mono float32 ``[1, S]`` at 32 kHz."""
    params = SampleParams(seconds=seconds, sample_rate=32000, seed=seed)
    return [render_stems(sample_clip_spec(params, i))[0].mean(0, keepdims=True) for i in range(n)]


def chroma_cosine(generated: np.ndarray, reference: np.ndarray) -> float:
    total, frames = chroma.chroma_cosine_sums(generated[0].astype(np.float64), reference[0].astype(np.float64),
                                              chroma.SAMPLE_RATE)
    return total / frames


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """codec_init's path: the full-size random codec calibrated on TRAIN synthetic accompaniments, its
    embedded decoder fitted on the same clips, saved and loaded back; plus HELD_OUT clips it never saw."""
    audios = clips(TRAIN + HELD_OUT, SECONDS, seed=3)
    folder = tmp_path_factory.mktemp("codec") / "encodec-calibrated"
    stats = codec.save_calibrated_random_codec(folder, audios[:TRAIN], seed=0)
    return folder, codec.load_codec(folder, device="cpu"), stats, audios[TRAIN:]


def test_true_codes_of_held_out_clips_resynthesise_their_chroma(fitted):
    folder, model, stats, held_out = fitted
    assert isinstance(getattr(model, codec.EMBEDDED_ATTR), EmbeddedDecoder)
    assert stats["decoder"]["frames"] == TRAIN * SECONDS * 50 and stats["decoder"]["explained"][-1] > 0.6
    decoded = [codec.decode(model, codec.encode(model, audio)) for audio in held_out]
    assert all(d.shape == a.shape and d.dtype == np.float32 for d, a in zip(decoded, held_out))
    same = np.mean([chroma_cosine(d, a) for d, a in zip(decoded, held_out)])
    mismatched = np.mean([chroma_cosine(d, held_out[(i + 1) % HELD_OUT]) for i, d in enumerate(decoded)])
    # The ceiling: the music's pitch classes survive codes -> lookup -> Griffin-Lim (measured: see the
    # README); a mismatched clip's chroma stays near chance.
    assert same >= 0.7 and mismatched <= 0.2


def test_decoder_file_round_trips_and_other_versions_are_refused(fitted, tmp_path):
    folder, model, _, held_out = fitted
    loaded = EmbeddedDecoder.load(folder)
    codes = codec.encode(model, held_out[0])
    # Stored as float16: the decoded audio matches the in-memory decoder's to float16 rounding.
    original = getattr(model, codec.EMBEDDED_ATTR)
    assert np.allclose(loaded.log_spectra(codes), original.log_spectra(codes), atol=1e-6)
    assert np.array_equal(loaded.decode(codes, seed=1), loaded.decode(codes, seed=1))   # seeded: reproducible
    assert EmbeddedDecoder.load(tmp_path) is None                                       # no file: no decoder

    with np.load(folder / FILE) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["meta"]))
    (tmp_path / "future").mkdir()
    np.savez(tmp_path / "future" / FILE, **{**arrays, "meta": np.array(json.dumps({**meta, "version": 99}))})
    with pytest.raises(EmbeddedDecoderError, match="version 99.*rerun the codec_init"):
        EmbeddedDecoder.load(tmp_path / "future")
    # load_codec turns it into a one-line user error naming the file.
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "future" / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(UserError, match=str(tmp_path / "future" / FILE)):
        codec.load_codec(tmp_path / "future", device="cpu")
