"""Decode, encode and mux media. The only module that talks to FFmpeg (through PyAV).

Audio arrays are float32 ``[C, S]`` (channels first); frames are uint8 ``[H, W, 3]`` RGB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np
import soundfile

from pipeline.errors import UserError
from pipeline.files import atomic_path


def ffmpeg_exe() -> str:
    """Path of an ffmpeg program named ``ffmpeg``: the one on PATH, else the imageio-ffmpeg wheel's.

    The wheel's binary has a versioned file name; tools such as yt-dlp look for a file named
    exactly ``ffmpeg``, so it is exposed through a link in ~/.cache/v2m/bin, and that folder is
    put on this process's PATH (yt-dlp's partial downloads check PATH, not ffmpeg_location).
    """
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    binary = Path(imageio_ffmpeg.get_ffmpeg_exe())
    link = Path.home() / ".cache" / "v2m" / "bin" / "ffmpeg"
    if not link.exists() or link.resolve() != binary.resolve():
        link.parent.mkdir(parents=True, exist_ok=True)
        temp = link.with_name(f"ffmpeg.{os.getpid()}")
        temp.unlink(missing_ok=True)
        temp.symlink_to(binary)
        os.replace(temp, link)
    os.environ["PATH"] = f"{link.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return str(link)


class MediaError(UserError, RuntimeError):
    """A media file that cannot be read or written; the message names the file and the reason."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds. Durations in seconds; None where a stream is missing."""

    path: Path
    duration: float
    video_frames: int | None
    fps: float | None
    width: int | None
    height: int | None
    audio_rate: int | None
    audio_channels: int | None
    video_codec: str | None = None


def _open(path: Path | str):
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable media file ({exc.strerror or exc})") from None


def probe(path: Path | str) -> MediaInfo:
    """Stream facts of a media file, from the container headers."""
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        return MediaInfo(
            path=Path(path), duration=duration,
            video_frames=int(video.frames) if video is not None and video.frames else None,
            fps=float(video.average_rate) if video is not None and video.average_rate else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            audio_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            video_codec=video.codec_context.name if video is not None else None,
        )


def decode_frames(path: Path | str) -> Iterator[tuple[float, np.ndarray]]:
    """Every video frame in order, as ``(time in seconds, uint8 [H, W, 3] RGB)``."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                yield float(frame.time or 0.0), frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt video ({exc})") from None


@dataclass
class SampledFrames:
    """Frames taken at fixed rates from one decode pass.

    ``rgb``: uint8 ``[N_v, H, W, 3]`` at ``rgb_fps``; ``gray``: uint8 ``[N_m, H, W]`` at ``gray_fps``
    (None for a stream not asked for); ``seconds``: the span sampled, so N = round(seconds * fps).
    """

    rgb: np.ndarray | None
    gray: np.ndarray | None
    seconds: float


def sample_frames(path: Path | str, rgb_fps: float | None = None, gray_fps: float | None = None,
                  seconds: float | None = None) -> SampledFrames:
    """Frames at ``rgb_fps`` (RGB) and ``gray_fps`` (grayscale) from ONE sequential decode.

    Frame i of a stream is the first decoded frame at or after time i / fps (within half a source
    frame), so a 12 fps clip gives every 6th frame at 2 fps and every 3rd at 4 fps. Decoding runs
    straight through (seeking was measured 2-15x slower) and converts only the frames kept.

    Args:
        seconds: span to sample; None = the whole video. The count per stream is round(seconds * fps);
            a video that ends early repeats its last frame (at most half a second of it).
    """
    if rgb_fps is None and gray_fps is None:
        raise ValueError("ask for at least one of rgb_fps, gray_fps")
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if seconds is None:
            seconds = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / av.time_base if container.duration else 0.0)
        source_fps = float(stream.average_rate or 25)
        slack = 0.5 / source_fps
        wanted = {name: (fps, int(round(seconds * fps))) for name, fps in (("rgb", rgb_fps), ("gray", gray_fps))
                  if fps is not None}
        taken: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        last = None
        try:
            for frame in container.decode(stream):
                time = float(frame.time or 0.0)
                last = frame
                for name, (fps, count) in wanted.items():
                    kept = taken[name]
                    while len(kept) < count and time >= len(kept) / fps - slack:
                        kept.append(frame.to_ndarray(format="rgb24" if name == "rgb" else "gray"))
                if all(len(taken[n]) >= c for n, (_, c) in wanted.items()):
                    break
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt video ({exc})") from None
        if last is None:
            raise MediaError(f"{path}: video stream holds no frames")
        for name, (fps, count) in wanted.items():
            missing = count - len(taken[name])
            if missing > max(1, fps / 2):
                raise MediaError(f"{path}: video ends after {len(taken[name]) / fps:.2f} s, {seconds:.2f} s asked for")
            while len(taken[name]) < count:
                taken[name].append(taken[name][-1] if taken[name] else
                                   last.to_ndarray(format="rgb24" if name == "rgb" else "gray"))
    stacked = {name: np.stack(frames) if frames else None for name, frames in taken.items()}
    return SampledFrames(rgb=stacked.get("rgb"), gray=stacked.get("gray"), seconds=float(seconds))


def count_frames(path: Path | str) -> int:
    """Frames of the video stream, by decoding them all (a corrupt stream raises; headers can lie).

    Decodes without converting pixels, so it costs a fraction of :func:`decode_frames`.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            return sum(1 for _ in container.decode(stream))
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt video ({exc})") from None


def decode_audio(path: Path | str, sample_rate: int | None = None, channels: int | None = None) -> tuple[np.ndarray, int]:
    """The first audio stream, resampled by FFmpeg when asked.

    Args:
        sample_rate: output rate; None keeps the stream's.
        channels: 1 (mono downmix) or 2; None keeps the stream's layout.

    Returns:
        ``(audio float32 [C, S], sample rate)``.
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        rate = sample_rate or stream.codec_context.sample_rate
        layout = {1: "mono", 2: "stereo"}.get(channels or 0, stream.codec_context.layout.name)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt audio ({exc})") from None
    if not chunks:
        raise MediaError(f"{path}: audio stream holds no samples")
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def write_wav(path: Path | str, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write float ``[C, S]`` audio as a WAV file, atomically."""
    with atomic_path(path) as temp:
        soundfile.write(str(temp), np.asarray(audio).T, sample_rate, subtype=subtype, format="WAV")
    return Path(path)


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """A WAV (or any libsndfile) file as ``(float32 [C, S], rate)``."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise MediaError(f"{path}: not a readable audio file ({exc})") from None
    return data.T.copy(), rate


def write_mp4(path: Path | str, frames: Iterable[np.ndarray], fps: int,
              audio: np.ndarray | None = None, sample_rate: int = 44100,
              crf: int = 18, preset: str = "veryfast", audio_bitrate: str = "192k",
              threads: int = 1) -> Path:
    """Encode H.264 video (yuv420p) and AAC audio into an mp4 with the ffmpeg program, atomically.

    The ffmpeg program rather than PyAV's encoder: with PyAV, libx264 gave different bytes
    for identical input from run to run even single-threaded; the program, with
    ``-threads 1`` and bitexact flags, gives identical files.

    Args:
        frames: uint8 ``[H, W, 3]`` RGB frames; H and W even.
        audio: float ``[C, S]`` in [-1, 1], C in (1, 2); None for a silent (video-only) file.
        threads: x264 threads; 1 makes identical input give identical files, 0 lets x264 choose.
    """
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"{path}: no frames to write")
    height, width = first.shape[:2]
    with atomic_path(path) as temp, tempfile.TemporaryDirectory() as scratch:
        command = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]
        if audio is not None:
            wav = Path(scratch) / "audio.wav"
            soundfile.write(str(wav), np.asarray(audio, dtype=np.float32).T, sample_rate, subtype="FLOAT")
            command += ["-i", str(wav), "-c:a", "aac", "-b:a", audio_bitrate]
        command += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                    "-threads", str(threads), "-fflags", "+bitexact", "-flags:v", "+bitexact",
                    "-flags:a", "+bitexact", "-map_metadata", "-1", "-movflags", "+faststart", str(temp)]
        with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            try:
                for frame in _chain(first, frames):
                    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                        raise MediaError(f"{path}: frame of shape {frame.shape} {frame.dtype}, "
                                         f"expected ({height}, {width}, 3) uint8")
                    process.stdin.write(np.ascontiguousarray(frame).tobytes())
            except BrokenPipeError:
                pass  # ffmpeg stopped early; its message comes below
            finally:
                process.stdin.close()
            errors = process.stderr.read().decode(errors="replace").strip()
        if process.returncode != 0:
            raise MediaError(f"{path}: ffmpeg could not encode ({errors.splitlines()[-1] if errors else process.returncode})")
    return Path(path)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def cut_clip(source: Path | str, target: Path | str, seconds: float, fps: int, max_height: int,
             crf: int = 18, preset: str = "veryfast", threads: int = 1) -> Path:
    """The first ``seconds`` of a video, re-encoded so the cut is exact, atomically.

    Stream copy would cut on a keyframe (30.167 s instead of 30 s, measured); re-encoding at a
    fixed ``fps`` gives exactly ``round(seconds * fps)`` frames. The picture is scaled down to at
    most ``max_height`` (even dimensions, aspect kept); audio, if any, is re-encoded to AAC.
    """
    with atomic_path(target) as temp:
        command = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(source), "-t", f"{seconds:.6f}",
                   "-map", "0:v:0", "-map", "0:a:0?",
                   "-vf", f"fps={fps},scale=-2:'min({max_height},trunc(ih/2)*2)'",
                   "-frames:v", str(int(round(seconds * fps))),
                   "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                   "-threads", str(threads), "-c:a", "aac", "-b:a", "192k",
                   "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
                   "-map_metadata", "-1", "-movflags", "+faststart", str(temp)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise MediaError(f"{source}: ffmpeg could not cut the clip ({lines[-1] if lines else result.returncode})")
    return Path(target)


# Video codecs an mp4 can carry as they are; anything else is re-encoded to H.264.
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"})


def mux_music(video: Path | str, music: np.ndarray, sample_rate: int, target: Path | str, *,
              duration: float, keep_audio: bool = False, music_gain_db: float = 0.0,
              audio_bitrate: str = "192k") -> Path:
    """The video with ``music`` as its soundtrack, exactly ``duration`` seconds long, atomically.

    The picture is copied when an mp4 can carry its codec (no quality loss, fast), else re-encoded to
    H.264. Any rotation tag travels with the copied stream, so portrait phone videos stay upright.

    Args:
        music: float ``[C, S]`` (C 1 or 2) in [-1, 1].
        duration: seconds of the output (the input video's length).
        keep_audio: mix the music over the original audio instead of replacing it; a video without
            audio gets the music alone.
        music_gain_db: gain of the music in the mix (``keep_audio`` only).
    """
    video = Path(video)
    info = probe(video)
    mix = keep_audio and info.audio_rate is not None
    copy_video = info.video_codec in MP4_VIDEO_CODECS
    with atomic_path(target) as temp, tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / "music.wav"
        soundfile.write(str(wav), np.asarray(music, dtype=np.float32).T, sample_rate, subtype="FLOAT")
        command = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(video), "-i", str(wav),
                   "-map", "0:v:0"]
        if mix:
            # normalize=0: amix would otherwise halve both inputs; the music keeps its loudness.
            command += ["-filter_complex",
                        f"[1:a]volume={music_gain_db:.3f}dB[m];[0:a:0][m]amix=inputs=2:duration=longest:normalize=0[a]",
                        "-map", "[a]"]
        else:
            command += ["-map", "1:a:0"]
        command += ["-c:v", "copy"] if copy_video else ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                                                       "-pix_fmt", "yuv420p"]
        command += ["-c:a", "aac", "-b:a", audio_bitrate, "-t", f"{duration:.6f}", "-movflags", "+faststart",
                    "-f", "mp4", str(temp)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            raise MediaError(f"{video}: ffmpeg could not mux the music ({lines[-1] if lines else result.returncode})")
    return Path(target)
