"""`v2m generate` on the videos users have: any size, orientation, frame rate, length, with or without sound.

A tiny model of the real architecture (random weights; conftest's ``model_dir``) with a tiny random
CLIP and codec, exported the way the train stage exports (config + safetensors + features.json), drives
the real path:
decode -> CLIP/Farneback -> windowed sampling -> EnCodec decoding -> loudness -> ffmpeg mux.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import media
from pipeline.audio import integrated_loudness, normalize_loudness
from pipeline.config import GenerateParams
from pipeline.features.recipe import read_recipe
from pipeline.model.sampling import generate_codes
from pipeline.generate import generate_music, generate_set, plan_windows, sample_codes, sample_codes_batch, video_input

SEGMENT_SECONDS = 2.0   # the recipe of conftest's tiny model


def frames(count: int, height: int, width: int, seed: int = 0):
    """Moving bars: enough structure for the flow to see motion."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    for index in range(count):
        yield np.roll(base, 2 * index, axis=1)


def tone(seconds: float, rate: int = 44100, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.repeat((0.3 * np.sin(2 * np.pi * 440 * t))[None], channels, axis=0).astype(np.float32)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    made = {
        "clip7": media.write_mp4(root / "clip7.mp4", frames(84, 120, 160), 12, audio=tone(7.0)),
        "long45": media.write_mp4(root / "long45.mp4", frames(270, 48, 64, 1), 6, audio=tone(45.0, 22050, 1), sample_rate=22050),
        "portrait": media.write_mp4(root / "portrait.mp4", frames(75, 160, 90, 2), 25, audio=tone(3.0)),
        "silent": media.write_mp4(root / "silent.mp4", frames(60, 64, 96, 3), 12),
    }
    # A codec an mp4 cannot carry as is (Motion JPEG in AVI): the mux re-encodes the picture.
    mjpeg = root / "mjpeg.avi"
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x64:rate=10:duration=2.5", "-c:v", "mjpeg", str(mjpeg)], check=True)
    made["mjpeg"] = mjpeg
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"not a video at all" * 100)
    made["empty"], made["garbage"] = root / "empty.mp4", root / "garbage.mp4"
    made["audio_only"] = root / "audio_only.wav"
    media.write_wav(made["audio_only"], tone(2.0), 44100)
    return made


def v2m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True)


def test_plan_windows_cover_every_step_once_with_overlapping_prompts():
    plan = plan_windows(total_steps=1000, window_steps=200, prompt_steps=50)
    assert plan[0] == (0, 0, 200)
    assert all(prompt == 50 for _, prompt, _ in plan[1:])
    assert sum(new for _, _, new in plan) == 1000
    for (start, prompt, new), (next_start, next_prompt, _) in zip(plan, plan[1:]):
        assert next_start + next_prompt == start + prompt + new   # new codes continue exactly where the last ended
    assert plan_windows(120, 200, 50) == [(0, 0, 120)]
    with pytest.raises(ValueError):
        plan_windows(100, 50, 50)


def test_loudness_of_a_full_scale_997_hz_sine_is_minus_3_lufs_and_normalising_hits_the_target():
    rate = 48000
    t = np.arange(5 * rate) / rate
    sine = np.sin(2 * np.pi * 997 * t)
    assert integrated_loudness(sine, rate) == pytest.approx(-3.01, abs=0.02)   # BS.1770-4's reference signal
    quiet = 0.01 * sine
    louder, gain = normalize_loudness(quiet, rate, target_lufs=-23.0, peak_dbfs=-1.0)
    assert integrated_loudness(louder, rate) == pytest.approx(-23.0, abs=0.01) and gain > 0
    capped, _ = normalize_loudness(quiet, rate, target_lufs=-1.0, peak_dbfs=-6.0)   # the peak ceiling wins
    assert 20 * np.log10(np.abs(capped).max()) == pytest.approx(-6.0, abs=0.01)
    silent, gain = normalize_loudness(np.zeros(rate), rate)
    assert gain == 0.0 and not silent.any()


def test_recipe_is_read_back_and_a_model_folder_without_one_is_a_clear_error(model_dir, tmp_path):
    recipe = read_recipe(model_dir)
    assert recipe.segment_seconds == SEGMENT_SECONDS and recipe.features.motion.size == 64
    with pytest.raises(Exception, match="features.json: no such file"):
        read_recipe(tmp_path)


def test_a_recipe_exported_with_the_old_clip_and_flow_section_names_still_reads(model_dir, tmp_path):
    """Model folders exported before the rename (features.clip -> visual, features.flow -> motion)."""
    import json

    values = json.loads((model_dir / "features.json").read_text())
    values["features"] = {{"visual": "clip", "motion": "flow"}.get(k, k): v for k, v in values["features"].items()}
    old = tmp_path / "old"
    old.mkdir()
    (old / "features.json").write_text(json.dumps(values))
    assert read_recipe(old) == read_recipe(model_dir)
    values["features"]["visual"] = values["features"]["clip"]
    values["features"]["visual"]["fps"] = 3         # both names: the current one is read, the old one is an error
    (old / "features.json").write_text(json.dumps(values))
    with pytest.raises(Exception, match="clip"):
        read_recipe(old)


@pytest.mark.parametrize("name", ["clip7", "portrait", "silent", "mjpeg"])
def test_generate_writes_a_video_with_music_of_the_inputs_length(name, videos, model_dir, tmp_path):
    out, wav = tmp_path / f"{name}.out.mp4", tmp_path / f"{name}.wav"
    result = v2m("generate", videos[name], "-o", out, "--model", model_dir, "--wav", wav, "--seed", "3",
                 "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    source, made = media.probe(videos[name]), media.probe(out)
    assert made.audio_rate is not None, "the output has an audio stream"
    assert made.duration == pytest.approx(source.duration, abs=0.05)
    assert (made.width, made.height) == (source.width, source.height)
    music, rate = media.read_wav(wav)
    assert music.shape[1] == round(source.duration * rate)
    assert np.abs(music).max() > 0


def test_a_45_second_video_is_scored_in_overlapping_windows_that_continue_each_other(videos, generator):
    params = GenerateParams(seed=1, prompt_seconds=0.5)
    music = generate_music(generator, videos["long45"], params, progress=False)
    assert music.codes.shape == (generator.model.config.num_codebooks, 45 * 50)
    assert music.windows[0] == (0.0, SEGMENT_SECONDS)
    assert len(music.windows) == 1 + int(np.ceil((45 - SEGMENT_SECONDS) / (SEGMENT_SECONDS - 0.5)))
    for (_, end), (start, _) in zip(music.windows, music.windows[1:]):
        assert start == pytest.approx(end - 0.5)      # each window is prompted with the previous one's tail
    assert music.windows[-1][1] == pytest.approx(45.0)
    assert music.audio.shape == (1, 45 * generator.sample_rate)
    again = generate_music(generator, videos["long45"], params, progress=False)
    assert np.array_equal(music.codes, again.codes), "same seed, same music"


def test_clips_sampled_as_one_batch_get_the_music_each_gets_alone(videos, generator, tmp_path):
    params = GenerateParams(seed=1)
    made = {name: media.write_mp4(tmp_path / f"{name}.mp4", frames(84, 120, 160, seed), 12, audio=tone(7.0))
            for name, seed in (("a", 4), ("b", 5))}
    clips = [video_input(generator, made["a"]), video_input(generator, made["b"])]
    batched = sample_codes_batch(generator, clips, params, progress=False)
    alone = [sample_codes(generator, clip, params, progress=False) for clip in clips]
    for (codes, windows), (codes_alone, windows_alone) in zip(batched, alone):
        assert codes.shape == codes_alone.shape == (generator.model.config.num_codebooks, 7 * 50)
        assert windows == windows_alone and len(windows) > 1
        # its own generator, seeded alike: a batched matrix product may round differently, nothing more
        assert (codes == codes_alone).mean() >= 0.99
    # a random model barely listens to its video, so rows are told apart with conditions it cannot ignore
    model = generator.model
    z = 3 * torch.randn(2, 8, model.config.decoder_dim, generator=torch.Generator().manual_seed(0))
    rows = generate_codes(model, z, 60, generator=[torch.Generator().manual_seed(s) for s in (7, 7)])
    for row in range(2):
        single = generate_codes(model, z[row:row + 1], 60, generator=torch.Generator().manual_seed(7))
        assert (rows[row] == single[0]).float().mean() >= 0.99
    # one seed, two conditions: the random model's weak listening moves 7.5% of the tokens, far above rounding's 1%
    assert (rows[0] != rows[1]).float().mean() > 0.03, "each row samples under its own condition"
    with pytest.raises(ValueError, match="equal code steps"):
        sample_codes_batch(generator, [clips[0], video_input(generator, videos["portrait"])], params)
    # the stage groups by length: 7 s, 3 s and 7 s clips in one group give the same music as alone, in order
    listed = [("s", made["a"]), ("s", videos["portrait"]), ("s", made["b"])]
    rows = generate_set(generator, listed, tmp_path / "set", GenerateParams(seed=1, batch_clips=3), progress=False)
    assert [(r["video_id"], r["status"]) for r in rows] == [("a", "ok"), ("portrait", "ok"), ("b", "ok")]
    for name in ("a", "b"):
        written = media.read_wav(tmp_path / "set" / f"{name}.wav")[0]
        assert written.shape[1] == 7 * generator.sample_rate and np.abs(written).max() > 0
    portrait = sample_codes(generator, video_input(generator, videos["portrait"]), params, progress=False)[0]
    assert portrait.shape[1] == 3 * 50


def test_keep_audio_mixes_the_music_over_the_original_sound(videos, model_dir, tmp_path):
    replaced, mixed = tmp_path / "replaced.mp4", tmp_path / "mixed.mp4"
    for out, extra in ((replaced, []), (mixed, ["--keep-audio"])):
        result = v2m("generate", videos["clip7"], "-o", out, "--model", model_dir, "--seed", "3", "--quiet", *extra)
        assert result.returncode == 0, result.stderr
    original, _ = media.decode_audio(videos["clip7"], 32000, 1)
    only_music, _ = media.decode_audio(replaced, 32000, 1)
    both, _ = media.decode_audio(mixed, 32000, 1)
    n = min(original.shape[1], only_music.shape[1], both.shape[1]) - 3200
    # The mix is (close to) music + original: its residual against the music alone is the 440 Hz tone.
    residual = both[0, 1600:n] - only_music[0, 1600:n]
    assert np.corrcoef(residual, original[0, 1600:n])[0, 1] > 0.9


@pytest.mark.parametrize("name, message", [
    ("empty", "empty file"),
    ("garbage", "not a readable media file"),
    ("audio_only", "has no video stream"),
])
def test_broken_inputs_exit_with_one_clear_line(name, message, videos, model_dir, tmp_path):
    result = v2m("generate", videos[name], "-o", tmp_path / "out.mp4", "--model", model_dir, "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("v2m: error:") and message in lines[0], result.stderr
    assert str(videos[name]) in lines[0]
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("args, message", [
    (["--cfg", "0.5"], "generate.cfg"),
    (["--temperature", "abc"], "--temperature: invalid float value"),
    (["--model", "/nonexistent/model"], "/nonexistent/model: no such model folder"),
    (["--window-seconds", "1.3"], "multiple of 0.5 s"),
])
def test_bad_options_exit_with_one_clear_line(args, message, videos, model_dir, tmp_path):
    base = ["generate", videos["clip7"], "-o", tmp_path / "out.mp4", "--quiet"]
    if "--model" not in args:
        base += ["--model", model_dir]
    result = v2m(*base, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and message in lines[0], result.stderr


def test_a_window_starting_at_4_s_sees_the_features_from_4_s():
    """Windows take their frames by absolute time: with the aligned path, the window that starts at
    4.0 s (code step 200) gets, at its code time 0, the motion map of 4.0 s (map 16) and not the one before."""
    from pipeline.generate import window_frames
    from pipeline.model import V2MModel, tiny_config

    torch.manual_seed(0)
    model = V2MModel(tiny_config(motion_size=64, motion_patch=16, aligned_condition=True)).eval()
    with torch.no_grad():
        for p in model.aligned.parameters():
            p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(1)
    visual, motion = torch.randn(16, 50, 768, generator=g), torch.rand(32, 64, 64, generator=g)   # 8 s

    def row0(motion_maps: torch.Tensor) -> torch.Tensor:
        v, m = window_frames(visual, motion_maps, 200, 400, model.config)
        assert v.shape[0] == 8 and m.shape[0] == 16
        with torch.no_grad():
            return model.conditions(v[None], m[None], 200)[1][0, 0]

    base = row0(motion)
    at_4s, before = motion.clone(), motion.clone()
    at_4s[16] += 3.0
    before[15] += 3.0
    assert not torch.allclose(row0(at_4s), base, atol=1e-5)
    assert torch.equal(row0(before), base)
