"""Any video a user has: odd sizes, old containers, rotation tags, non-square pixels, variable frame rate.

Every input is made here with the ffmpeg program (a second or two of picture and sound each). A valid
one must come out of generation with music, the input's duration and every stream decodable; an invalid
one must be refused with one line and exit status 2 within seconds, before any model loads. Frames
given to the features must stand upright with square pixels, and so must the clip stage's cached clips.
"""

from __future__ import annotations

import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import media
from pipeline.acquire.clip import clip_one
from pipeline.config import ClipParams, MotionFeatureParams, GenerateParams
from pipeline.features.extract import FRAME_FEATURE_STATUS, ClipInput, extract_tables, write_feature_status
from pipeline.generate import generate_set, score_video
from pipeline.status import read_status

SOUND = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1"]
# A portrait picture whose up is known: red top quarter over blue.
PORTRAIT = "color=blue:s=64x96:r=10:d=1,drawbox=x=0:y=0:w=64:h=24:color=red:t=fill"


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    made = {name: root / name for name in (
        "odd_width.avi", "odd_height.mpg", "mpeg2.mpg", "mjpeg.avi", "msmpeg4.avi", "vp9.webm", "hevc_rot90.mp4",
        "mjpeg_rot180.mov", "anamorphic.mp4", "vfr.mkv", "cover_art.mp3", "truncated.mp4")}
    # testsrc, not testsrc2: it keeps odd sizes (testsrc2 rounds them to even).
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=97x64:rate=10:duration=1", *SOUND, "-c:v", "mjpeg", "-c:a", "pcm_s16le",
           made["odd_width.avi"])
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x91:rate=25:duration=1", *SOUND, "-c:v", "mpeg2video", "-c:a", "mp2",
           "-f", "mpeg", made["odd_height.mpg"])
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=176x144:rate=25:duration=1", *SOUND, "-c:v", "mpeg2video",
           "-c:a", "mp2", "-f", "mpeg", made["mpeg2.mpg"])
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=10:duration=1", *SOUND, "-c:v", "mjpeg", "-c:a", "pcm_s16le",
           made["mjpeg.avi"])
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=10:duration=1", *SOUND, "-c:v", "msmpeg4v2",
           "-c:a", "libmp3lame", made["msmpeg4.avi"])
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=10:duration=1", *SOUND, "-c:v", "libvpx-vp9",
           "-deadline", "realtime", "-c:a", "libopus", made["vp9.webm"])
    # A phone's portrait video: coded landscape (the picture turned a quarter counter-clockwise) with a
    # display matrix telling players to turn it 90 degrees clockwise.
    coded = root / "hevc_coded.mp4"
    ffmpeg("-f", "lavfi", "-i", PORTRAIT, *SOUND, "-vf", "transpose=cclock", "-c:v", "libx265",
           "-x265-params", "log-level=error", "-pix_fmt", "yuv420p", "-c:a", "aac", coded)
    ffmpeg("-display_rotation:v", "-90", "-i", coded, "-c", "copy", made["hevc_rot90.mp4"])
    # Upside down with a 180-degree tag, in a codec the mux must re-encode.
    coded = root / "mjpeg_coded.mov"
    ffmpeg("-f", "lavfi", "-i", PORTRAIT, *SOUND, "-vf", "vflip,hflip", "-c:v", "mjpeg", "-c:a", "pcm_s16le", coded)
    ffmpeg("-display_rotation:v", "180", "-i", coded, "-c", "copy", made["mjpeg_rot180.mov"])
    # PAL 720x576 with 4:3 pixels (shown 960x576): the left half of the coded frame is white.
    ffmpeg("-f", "lavfi", "-i", "color=black:s=720x576:r=10:d=1,drawbox=x=0:y=0:w=360:h=576:color=white:t=fill,"
           "setsar=4/3", *SOUND, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           made["anamorphic.mp4"])
    # 5 frames at 10 fps, then 10 at 20 fps: 1 s at about 15 fps on average; the header says 20.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=20:duration=0.75", *SOUND,
           "-vf", "settb=1/1000,setpts='if(lt(N,5),N*0.1,0.5+(N-5)*0.05)/TB'", "-fps_mode", "passthrough",
           "-c:v", "mjpeg", "-c:a", "libopus", "-t", "1", made["vfr.mkv"])
    cover = root / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=green:s=64x64:d=1", "-frames:v", "1", cover)
    ffmpeg(*SOUND, "-i", cover, "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "png",
           "-disposition:v", "attached_pic", made["cover_art.mp3"])
    # Headers promise 1 s of H.264 (moov first), but the file ends before the first frame's data.
    whole = root / "whole.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=10:duration=1", *SOUND, "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", whole)
    with av.open(str(whole)) as container:
        first = next(p.pos for p in container.demux(container.streams.video[0]) if p.pos is not None)
    made["truncated.mp4"].write_bytes(whole.read_bytes()[: first + 10])
    return made


def v2m(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True)


def plays(path: Path) -> bool:
    """ffmpeg decodes every stream of ``path`` to the end without an error."""
    result = subprocess.run([media.ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0",
                             "-f", "null", "-"], capture_output=True, text=True)
    return result.returncode == 0 and not result.stderr.strip()


def is_upright(rgb: np.ndarray) -> bool:
    """The PORTRAIT picture ``[N, H, W, 3]`` stands upright: portrait, red on top, blue below."""
    top, bottom = rgb[:, : rgb.shape[1] // 8].mean(axis=(0, 1, 2)), rgb[:, -rgb.shape[1] // 2:].mean(axis=(0, 1, 2))
    return rgb.shape[1] > rgb.shape[2] and top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def display_aspect(info: media.MediaInfo) -> float:
    width, height = info.width * info.picture.sar, info.height
    return float(height / width if info.picture.rotation in (90, 270) else width / height)


# name: (re-encoded, rotation, sar)
VALID = {
    "odd_width.avi": (True, 0, 1), "odd_height.mpg": (True, 0, 1), "mpeg2.mpg": (True, 0, 1),
    "mjpeg.avi": (True, 0, 1), "msmpeg4.avi": (True, 0, 1), "vp9.webm": (False, 0, 1),
    "hevc_rot90.mp4": (False, 90, 1), "mjpeg_rot180.mov": (True, 180, 1), "anamorphic.mp4": (False, 0, Fraction(4, 3)),
    "vfr.mkv": (True, 0, 1),
}


@pytest.mark.parametrize("name", list(VALID))
def test_every_valid_input_gets_music_at_its_length_in_an_output_that_plays(name, inputs, generator, tmp_path):
    video, (reencoded, rotation, sar) = inputs[name], VALID[name]
    source = media.probe(video)
    assert (source.picture.rotation, source.picture.sar) == (rotation, sar)
    plan = media.plan_mux(video)
    assert plan.copy_video is not reencoded
    out = tmp_path / "out.mp4"
    music = score_video(generator, video, out, GenerateParams(seed=1), progress=False, plan=plan)
    assert (music.picture.rotation, music.picture.sar) == (rotation, sar)
    made = media.probe(out)
    assert made.audio_rate is not None
    assert made.duration == pytest.approx(source.duration, abs=0.05)
    assert plays(out)
    assert display_aspect(made) == pytest.approx(display_aspect(source), rel=0.005)
    if reencoded:
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        width, height = (source.height, source.width) if rotation in (90, 270) else (source.width, source.height)
        assert (made.width, made.height) == (width + width % 2, height + height % 2)   # one pixel more where odd
        assert made.fps == pytest.approx(float(media.frame_rate(video)), rel=0.01)


def test_odd_sizes_are_evened_by_one_pixel_and_vfr_is_reencoded_at_its_average_rate(inputs):
    for name, size in (("odd_width.avi", (97, 64)), ("odd_height.mpg", (160, 91))):
        assert (media.probe(inputs[name]).width, media.probe(inputs[name]).height) == size
    vfr = media.probe(inputs["vfr.mkv"])
    assert vfr.fps == 20                                               # the header's rate is the fastest
    assert float(media.frame_rate(inputs["vfr.mkv"])) == pytest.approx(14 / 0.95, rel=0.01)
    assert media.frame_rate(inputs["mpeg2.mpg"]) == 25                 # constant rate: the header's


@pytest.mark.parametrize("name", ["hevc_rot90.mp4", "mjpeg_rot180.mov"])
def test_rotated_video_reaches_the_features_upright_and_plays_upright_after_the_mux(name, inputs, tmp_path):
    video = inputs[name]
    with av.open(str(video)) as container:   # as coded, the picture does not stand upright
        coded = next(container.decode(video=0)).to_ndarray(format="rgb24")[None]
    assert not is_upright(coded)
    assert is_upright(media.sample_frames(video, rgb_fps=2, gray_fps=4).rgb)
    assert is_upright(np.stack([frame for _, frame in media.decode_frames(video)]))
    out = tmp_path / "out.mp4"
    media.mux_music(video, np.zeros((1, 32000)), 32000, out, duration=media.probe(video).duration)
    assert is_upright(media.sample_frames(out, rgb_fps=2).rgb)          # as a player shows it
    rows = extract_tables([ClipInput("rot", video, 1.0)], motion=MotionFeatureParams(size=32),
                          motion_out=tmp_path / "flow.parquet", progress=False)
    assert rows[0]["status"] == "ok" and rows[0]["rotation"] == VALID[name][1]


def test_the_generate_and_feature_stages_status_rows_say_what_was_undone(inputs, generator, tmp_path):
    rows = generate_set(generator, [("s0000", inputs["hevc_rot90.mp4"]), ("s0000", inputs["anamorphic.mp4"])],
                        tmp_path / "generated", GenerateParams(seed=1), progress=False)
    written = {row["video_id"]: row for row in read_status(tmp_path / "generated")}
    assert {k: (r["status"], r["rotation"], r["sar"]) for k, r in written.items()} == {
        "hevc_rot90": ("ok", 90, "1:1"), "anamorphic": ("ok", 0, "4:3")}
    rows = extract_tables([ClipInput("pal", inputs["anamorphic.mp4"], 1.0)], motion=MotionFeatureParams(size=32),
                          motion_out=tmp_path / "flow.parquet", progress=False)
    write_feature_status(tmp_path / "flow.status.parquet", rows, FRAME_FEATURE_STATUS)
    assert [(r["rotation"], r["sar"]) for r in read_status(tmp_path / "flow.status.parquet")] == [(0, "4:3")]


def test_generate_set_gives_a_broken_clip_its_row_between_finished_ones(inputs, generator, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)    # an mp4 header, then junk
    clips = [("s0000", inputs["anamorphic.mp4"]), ("s0000", broken), ("s0000", inputs["hevc_rot90.mp4"])]
    rows = generate_set(generator, clips, tmp_path / "generated", GenerateParams(seed=1), progress=False)
    assert [(r["video_id"], r["status"]) for r in rows] == [("anamorphic", "ok"), ("broken", "failed"),
                                                            ("hevc_rot90", "ok")]      # in order, the set went on
    assert "broken.mp4" in rows[1]["error_message"] and rows[1]["compute_seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "generated").glob("*.wav")) == ["anamorphic.wav", "hevc_rot90.wav"]


def test_anamorphic_pixels_are_made_square_before_the_features(inputs):
    frames = media.sample_frames(inputs["anamorphic.mp4"], rgb_fps=2, gray_fps=4)
    assert frames.rgb.shape[1:] == (576, 960, 3) and frames.gray.shape[1:] == (576, 960)
    white = (frames.gray[0] > 128).mean(axis=0) > 0.5                 # per column
    assert abs(int(white.sum()) - 480) <= 2                           # the coded left half: 360 px shown 480 wide
    assert frames.picture.fixes == ["non-square pixels (SAR 4:3) resampled to square"]


def test_the_clip_stage_caches_rotated_and_anamorphic_video_upright_with_square_pixels(inputs, tmp_path):
    params = ClipParams(seconds=0.8, min_seconds=0.5, fps=10, max_height=96)
    row = clip_one(inputs["hevc_rot90.mp4"], tmp_path, "rot", params)
    assert row["status"] == "ok" and (row["rotation"], row["sar"]) == (90, "1:1")
    clip = media.probe(tmp_path / "rot.mp4")
    assert (clip.width, clip.height, clip.picture.rotation) == (64, 96, 0)   # stored upright, no tag left
    with av.open(str(tmp_path / "rot.mp4")) as container:
        assert is_upright(next(container.decode(video=0)).to_ndarray(format="rgb24")[None])
    row = clip_one(inputs["anamorphic.mp4"], tmp_path, "pal", params)
    assert row["status"] == "ok" and (row["rotation"], row["sar"]) == (0, "4:3")
    clip = media.probe(tmp_path / "pal.mp4")
    assert (clip.width, clip.height, clip.picture.sar) == (160, 96, 1)
    row = clip_one(inputs["cover_art.mp3"], tmp_path, "mp3", params)
    assert row["status"] == "failed" and "cover art" in row["error_message"]


@pytest.mark.parametrize("name, message", [
    ("cover_art.mp3", "has only a still picture (cover art) beside its audio, no moving video"),
    ("truncated.mp4", "its picture cannot be written to an mp4"),
])
def test_invalid_inputs_are_refused_in_one_line_before_any_model_loads(name, message, inputs, model_dir, tmp_path):
    for model in (model_dir, tmp_path / "no-such-model"):   # the video is judged before the model folder
        started = time.monotonic()
        result = v2m("generate", inputs[name], "-o", tmp_path / "out.mp4", "--model", model, "--quiet")
        elapsed = time.monotonic() - started
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"v2m: error: {inputs[name]}: {message}")
        assert elapsed < 5, f"refused after {elapsed:.1f} s"
        assert not (tmp_path / "out.mp4").exists()


def test_generate_says_when_it_turned_the_picture_upright(inputs, model_dir, tmp_path):
    out = tmp_path / "out.mp4"
    result = v2m("generate", inputs["hevc_rot90.mp4"], "-o", out, "--model", model_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "picture copied; rotated 90 degrees clockwise to stand upright for the features" in result.stdout
    assert media.probe(out).picture.rotation == 90


@pytest.mark.parametrize("outputs", [["-o", "nowhere/out.mp4"], ["-o", "out.mp4", "--wav", "nowhere/out.wav"]])
def test_an_output_folder_that_does_not_exist_is_refused_before_the_work(outputs, inputs, tmp_path):
    outputs = [str(tmp_path / arg) if "/" in arg or arg.endswith(".mp4") else arg for arg in outputs]
    result = v2m("generate", inputs["mjpeg.avi"], *outputs, "--model", tmp_path)   # the model is checked later
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"no such folder {tmp_path / 'nowhere'}" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_all_frame_readers_share_one_decode_path(inputs):
    video = inputs["hevc_rot90.mp4"]
    assert media.count_frames(video) == len(list(media.decode_frames(video))) == 10
    for reader in (media.count_frames, lambda p: list(media.decode_frames(p)), lambda p: media.sample_frames(p, 2)):
        with pytest.raises(media.MediaError, match="cover_art.mp3: has no video stream"):
            reader(inputs["cover_art.mp3"])
