"""Decode, encode and mux media. The only module that talks to FFmpeg (through PyAV).

Audio arrays are float32 ``[C, S]`` (channels first); frames are uint8 ``[H, W, 3]`` RGB.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
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
class Picture:
    """How a video stream's coded frames are shown: turned by ``rotation`` and stretched by ``sar``.

    Attributes:
        rotation: degrees clockwise a player turns the coded frame (0, 90, 180 or 270), from the
            display-matrix side data (a phone's portrait video is coded landscape with 90 or 270).
        sar: sample (pixel) aspect ratio, a pixel's width over its height; 1 = square pixels
            (an anamorphic 720x576 PAL frame shown at 4:3 has 16:15).
    """

    rotation: int = 0
    sar: Fraction = Fraction(1)

    @classmethod
    def of(cls, stream, frame) -> "Picture":
        """The picture of ``stream`` as its first decoded ``frame`` (which carries the side data) says."""
        # VideoFrame.rotation is FFmpeg's counter-clockwise angle; flips in the matrix are ignored.
        rotation = (-int(round((frame.rotation or 0) / 90.0)) * 90) % 360
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        return cls(rotation=rotation, sar=sar)

    def square_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a ``width x height`` coded frame with square pixels, not yet turned.

        Pixels are made square by stretching, never shrinking, the short side of a pixel.
        """
        if self.sar > 1:
            width = int(round(width * self.sar))
        elif self.sar < 1:
            height = int(round(height / self.sar))
        return width, height

    def upright_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a ``width x height`` coded frame shown upright with square pixels."""
        width, height = self.square_size(width, height)
        return (height, width) if self.rotation in (90, 270) else (width, height)

    @property
    def fixes(self) -> list[str]:
        """What turning it upright with square pixels does, in words (empty when nothing)."""
        done = []
        if self.rotation:
            done.append(f"rotated {self.rotation} degrees clockwise to stand upright")
        if self.sar != 1:
            done.append(f"non-square pixels (SAR {self.sar.numerator}:{self.sar.denominator}) resampled to square")
        return done

    def pixels(self, frame, format: str) -> np.ndarray:
        """``frame`` as the viewer sees it: uint8 ``[H, W, 3]`` (rgb24) or ``[H, W]`` (gray), upright, square pixels."""
        if self.sar == 1:
            array = frame.to_ndarray(format=format)
        else:
            width, height = self.square_size(frame.width, frame.height)
            array = frame.to_ndarray(format=format, width=width, height=height, interpolation="AREA")
        if self.rotation:
            array = np.ascontiguousarray(np.rot90(array, k=-(self.rotation // 90)))
        return array


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds. Durations in seconds; None where a stream is missing.

    ``width`` and ``height`` are the coded frame's; ``picture`` says how it is shown (rotation, pixel
    shape) and :attr:`display_size` what the features see. ``cover_art``: the only picture is a still
    attached to audio (an mp3's or m4a's album art), which is not a video stream.
    """

    path: Path
    duration: float
    video_frames: int | None
    fps: float | None
    width: int | None
    height: int | None
    audio_rate: int | None
    audio_channels: int | None
    video_codec: str | None = None
    picture: Picture = field(default_factory=Picture)
    cover_art: bool = False

    @property
    def no_video_reason(self) -> str:
        """Why there is no video to work on (for the one-line message of a file without one)."""
        if self.cover_art:
            return "has only a still picture (cover art) beside its audio, no moving video"
        return "has no video stream"

    @property
    def display_size(self) -> tuple[int, int] | None:
        """``(width, height)`` upright with square pixels; None without video."""
        if self.width is None:
            return None
        return self.picture.upright_size(self.width, self.height)


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


def _video_stream(container):
    """The first video stream that moves: cover art (an attached picture) is not one."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


@contextmanager
def _video_frames(path: Path | str) -> Iterator[tuple[object, Iterator]]:
    """``(stream, decoded frames)`` of the video stream: opened, checked and threaded the one way.

    A corrupt stream raises :class:`MediaError` naming the file from wherever the frames are read.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            raise MediaError(f"{path}: has no video stream")
        stream.thread_type = "AUTO"

        def frames():
            try:
                yield from container.decode(stream)
            except av.FFmpegError as exc:
                raise MediaError(f"{path}: corrupt video ({exc})") from None

        yield stream, frames()


def probe(path: Path | str) -> MediaInfo:
    """Stream facts of a media file, from the container headers (and the first frame's side data)."""
    with _open(path) as container:
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        picture = Picture()
        if video is not None:
            # The display matrix reaches PyAV on decoded frames only; one frame costs milliseconds.
            try:
                first = next(container.decode(video), None)
            except av.FFmpegError:
                first = None   # corrupt data is the decoders' to report
            if first is not None:
                picture = Picture.of(video, first)
        return MediaInfo(
            path=Path(path), duration=duration,
            video_frames=int(video.frames) if video is not None and video.frames else None,
            fps=float(video.average_rate) if video is not None and video.average_rate else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            audio_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            video_codec=video.codec_context.name if video is not None else None,
            picture=picture,
            cover_art=video is None and bool(container.streams.video),
        )


def decode_frames(path: Path | str) -> Iterator[tuple[float, np.ndarray]]:
    """Every video frame in order, as ``(time in seconds, uint8 [H, W, 3] RGB)``, upright with square pixels."""
    with _video_frames(path) as (stream, frames):
        picture = None
        for frame in frames:
            picture = picture or Picture.of(stream, frame)
            yield float(frame.time or 0.0), picture.pixels(frame, "rgb24")


@dataclass
class SampledFrames:
    """Frames taken at fixed rates from one decode pass, upright with square pixels.

    ``rgb``: uint8 ``[N_v, H, W, 3]`` at ``rgb_fps``; ``gray``: uint8 ``[N_m, H, W]`` at ``gray_fps``
    (None for a stream not asked for); ``seconds``: the span sampled, so N = round(seconds * fps);
    ``picture``: the rotation and pixel shape that were undone.
    """

    rgb: np.ndarray | None
    gray: np.ndarray | None
    seconds: float
    picture: Picture = field(default_factory=Picture)


def sample_frames(path: Path | str, rgb_fps: float | None = None, gray_fps: float | None = None,
                  seconds: float | None = None) -> SampledFrames:
    """Frames at ``rgb_fps`` (RGB) and ``gray_fps`` (grayscale) from ONE sequential decode.

    Frame i of a stream is the first decoded frame at or after time i / fps (within half a source
    frame), so a 12 fps clip gives every 6th frame at 2 fps and every 3rd at 4 fps. Decoding runs
    straight through (seeking was measured 2-15x slower) and converts only the frames kept. Frames
    come out as shown when played: turned by the rotation tag, pixels made square (:class:`Picture`),
    so a phone's portrait video is analysed upright and an anamorphic one unsquashed.

    Args:
        seconds: span to sample; None = the whole video. The count per stream is round(seconds * fps);
            a video that ends early repeats its last frame (at most half a second of it).
    """
    if rgb_fps is None and gray_fps is None:
        raise ValueError("ask for at least one of rgb_fps, gray_fps")
    formats = {"rgb": "rgb24", "gray": "gray"}
    with _video_frames(path) as (stream, frames):
        if seconds is None:
            seconds = float(stream.duration * stream.time_base) if stream.duration else (
                stream.container.duration / av.time_base if stream.container.duration else 0.0)
        source_fps = float(stream.average_rate or 25)
        slack = 0.5 / source_fps
        wanted = {name: (fps, int(round(seconds * fps))) for name, fps in (("rgb", rgb_fps), ("gray", gray_fps))
                  if fps is not None}
        taken: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        last = picture = None
        for frame in frames:
            time = float(frame.time or 0.0)
            last = frame
            picture = picture or Picture.of(stream, frame)
            for name, (fps, count) in wanted.items():
                kept = taken[name]
                while len(kept) < count and time >= len(kept) / fps - slack:
                    kept.append(picture.pixels(frame, formats[name]))
            if all(len(taken[n]) >= c for n, (_, c) in wanted.items()):
                break
        if last is None:
            raise MediaError(f"{path}: video stream holds no frames")
        for name, (fps, count) in wanted.items():
            missing = count - len(taken[name])
            if missing > max(1, fps / 2):
                raise MediaError(f"{path}: video ends after {len(taken[name]) / fps:.2f} s, {seconds:.2f} s asked for")
            while len(taken[name]) < count:
                taken[name].append(taken[name][-1] if taken[name] else picture.pixels(last, formats[name]))
    stacked = {name: np.stack(frames) if frames else None for name, frames in taken.items()}
    return SampledFrames(rgb=stacked.get("rgb"), gray=stacked.get("gray"), seconds=float(seconds), picture=picture)


def count_frames(path: Path | str) -> int:
    """Frames of the video stream, by decoding them all (a corrupt stream raises; headers can lie).

    Decodes without converting pixels, so it costs a fraction of :func:`decode_frames`.
    """
    with _video_frames(path) as (_, frames):
        return sum(1 for _ in frames)


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


# ffmpeg's AAC encoder with its fast coder in constant-quality mode, for the pipeline's own files (the
# synth set, the clips). Its default (twoloop) at 192 kb/s took 0.47 s per 7 s stereo clip, the fast
# coder at 192 kb/s 0.27-0.49 s, and at quality 3 0.15 s, most of the sample and clip stages' time,
# for audio closer to its source: on a synth clip 33 dB SNR (about 170 kb/s) against 28 dB at 192 kb/s.
# The music `v2m generate` hands to a user keeps the default coder at 192 kb/s.
AAC_FAST = ("-c:a", "aac", "-aac_coder", "fast", "-q:a", "3")


def write_mp4(path: Path | str, frames: Iterable[np.ndarray], fps: int,
              audio: np.ndarray | None = None, sample_rate: int = 44100,
              crf: int = 18, preset: str = "veryfast", threads: int = 1) -> Path:
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
            command += ["-i", str(wav), *AAC_FAST]
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
            raise MediaError(f"{path}: ffmpeg could not encode ({_ffmpeg_reason(errors, process.returncode)})")
    return Path(path)


def _ffmpeg_reason(stderr: str, returncode: int) -> str:
    """The ffmpeg program's last error line, without its ``[component @ 0x...]`` prefixes."""
    lines = stderr.strip().splitlines()
    if not lines:
        return f"ffmpeg exit status {returncode}"
    return re.sub(r"^(\[[^]]*\]\s*)+", "", lines[-1]).strip() or lines[-1]


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def cut_clip(source: Path | str, target: Path | str, seconds: float, fps: int, max_height: int,
             crf: int = 18, preset: str = "veryfast", threads: int = 1, info: MediaInfo | None = None) -> Path:
    """The first ``seconds`` of a video, re-encoded so the cut is exact, atomically.

    Stream copy would cut on a keyframe (30.167 s instead of 30 s, measured); re-encoding at a
    fixed ``fps`` gives exactly ``round(seconds * fps)`` frames. The picture comes out as it is
    shown: upright (ffmpeg applies the rotation tag and drops it) with square pixels, scaled down
    to at most ``max_height`` at even dimensions, display aspect kept; audio, if any, is re-encoded
    to AAC.

    Args:
        info: the source's :func:`probe` (probed here when not given).
    """
    info = info or probe(source)
    if info.width is None:
        raise MediaError(f"{source}: {info.no_video_reason}")
    if info.picture.sar == 1:
        scale = f"scale=-2:'min({max_height},trunc(ih/2)*2)'"
    else:
        width, height = info.display_size
        out_height = min(max_height, height // 2 * 2)
        scale = f"scale={max(2, round(out_height * width / height / 2) * 2)}:{out_height},setsar=1"
    with atomic_path(target) as temp:
        command = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(source), "-t", f"{seconds:.6f}",
                   "-map", "0:v:0", "-map", "0:a:0?",
                   "-vf", f"fps={fps},{scale}",
                   "-frames:v", str(int(round(seconds * fps))),
                   "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
                   "-threads", str(threads), *AAC_FAST,
                   "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
                   "-map_metadata", "-1", "-movflags", "+faststart", str(temp)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise MediaError(f"{source}: ffmpeg could not cut the clip ({_ffmpeg_reason(result.stderr, result.returncode)})")
    return Path(target)


# Shortest video music is made for (shorter gives less than one 2 fps frame to condition on).
MIN_VIDEO_SECONDS = 0.5


def check_video(video: Path | str, min_seconds: float = MIN_VIDEO_SECONDS) -> MediaInfo:
    """The video's stream facts, if it is one music can be made for (cheap: headers and one frame).

    Raises:
        MediaError: missing, empty or unreadable file, no video stream (cover art is none), too short.
    """
    info = probe(video)
    if info.width is None:
        raise MediaError(f"{video}: {info.no_video_reason}")
    if info.duration < min_seconds:
        raise MediaError(f"{video}: {info.duration:.2f} s long; music needs at least {min_seconds} s of video")
    return info


def check_output(video: Path | str, out: Path | str, wav: Path | str | None = None) -> None:
    """Fail before any work when ``out`` (and ``wav``) cannot be written as the outputs for ``video``.

    Raises:
        UserError: ``out`` not named .mp4, an output that is the input itself, a folder that does not exist.
    """
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"{out}: the output is an mp4 (name it .mp4)")
    for path in (out, wav) if wav is not None else (out,):
        path = Path(path)
        if Path(video).resolve() == path.resolve():
            raise UserError(f"{path}: would overwrite the input video; choose another output name")
        if not path.resolve().parent.is_dir():
            raise UserError(f"{path}: no such folder {path.resolve().parent}")


# Video codecs an mp4 can carry as they are; anything else is re-encoded to H.264.
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"})
# The trial mux: this much of a silent stand-in soundtrack beside the one picture.
TRIAL_SECONDS = 0.2


@dataclass(frozen=True)
class MuxPlan:
    """How :func:`mux_music` writes the picture of ``info.path``, proven by a one-frame trial mux.

    ``copy_video``: the stream goes in as it is (its rotation tag with it); otherwise it is
    re-encoded to H.264 yuv420p, turned upright by ffmpeg, at even dimensions (one pixel added
    where odd; the pixel shape is adjusted so the display aspect is kept) and at the input's
    average frame rate (constant, also for variable-rate input).
    """

    info: MediaInfo
    copy_video: bool
    rate: Fraction | None = None

    @property
    def description(self) -> str:
        return "picture copied" if self.copy_video else "picture re-encoded to H.264"


def frame_rate(path: Path | str) -> Fraction | None:
    """The video's frame rate: the header's for constant-rate video, the average over its frames for
    variable-rate video (whose header gives the fastest rate or a guess). Reads packets, decodes nothing.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            return None
        try:
            stamps = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None)
        except av.FFmpegError:
            stamps = []   # corrupt data is the decoders' to report
        header = Fraction(stream.average_rate) if stream.average_rate else None
        steps = np.diff(stamps)
        if len(steps) < 2 or steps.min() <= 0 or steps.max() - steps.min() <= max(1, 0.01 * steps.mean()):
            return header
        average = Fraction(len(steps)) / (Fraction(int(stamps[-1] - stamps[0])) * stream.time_base)
        return average.limit_denominator(1001)


def _video_args(plan: MuxPlan) -> list[str]:
    if plan.copy_video:
        # hvc1: the HEVC sample entry Apple's players need; ffmpeg's default hev1 plays elsewhere only.
        return ["-c:v", "copy"] + (["-tag:v", "hvc1"] if plan.info.video_codec == "hevc" else [])
    # Limited ("tv") range: full-range sources (MJPEG's yuvj) would otherwise give full-range H.264,
    # which players that ignore the range flag show washed out.
    args = ["-vf", "scale=w='ceil(iw/2)*2':h='ceil(ih/2)*2':out_range=tv",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]
    if plan.rate:
        args += ["-fps_mode", "cfr", "-r", f"{plan.rate.numerator}/{plan.rate.denominator}"]
    return args


def _mux_command(plan: MuxPlan, audio_input: list[str], target: Path, output_limit: list[str], *,
                 mix: bool, music_gain_db: float = 0.0, audio_bitrate: str = "192k") -> list[str]:
    command = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(plan.info.path), *audio_input,
               "-map", "0:v:0"]
    if mix:
        # normalize=0: amix would otherwise halve both inputs; the music keeps its loudness.
        command += ["-filter_complex",
                    f"[1:a]volume={music_gain_db:.3f}dB[m];[0:a:0][m]amix=inputs=2:duration=longest:normalize=0[a]",
                    "-map", "[a]"]
    else:
        command += ["-map", "1:a:0"]
    return command + [*_video_args(plan), "-c:a", "aac", "-b:a", audio_bitrate, *output_limit,
                      "-movflags", "+faststart", "-f", "mp4", str(target)]


def plan_mux(video: Path | str, *, keep_audio: bool = False, info: MediaInfo | None = None) -> MuxPlan:
    """Decide copy or re-encode for ``video``'s picture and prove it with a one-frame trial mux.

    Runs in well under a second, so a video whose picture cannot go into an mp4 is refused before
    any model loads or any music is sampled. A stream the probe would copy but whose copy fails is
    re-encoded instead.

    Raises:
        MediaError: no video stream, or neither copy nor re-encode writes a playable first frame.
    """
    video = Path(video)
    info = info or probe(video)
    if info.width is None:
        raise MediaError(f"{video}: {info.no_video_reason}")
    mix = keep_audio and info.audio_rate is not None
    tries = [True, False] if info.video_codec in MP4_VIDEO_CODECS else [False]
    reason = ""
    with tempfile.TemporaryDirectory() as scratch:
        for attempt, copy_video in enumerate(tries):
            plan = MuxPlan(info, True) if copy_video else MuxPlan(info, False, frame_rate(video))
            trial = Path(scratch) / f"trial{attempt}.mp4"
            silence = ["-f", "lavfi", "-t", f"{TRIAL_SECONDS}", "-i", "anullsrc=r=32000:cl=mono"]
            command = _mux_command(plan, silence, trial, ["-frames:v", "1", "-t", f"{TRIAL_SECONDS}"], mix=mix)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                reason = _ffmpeg_reason(result.stderr, result.returncode)
                continue
            try:
                with _video_frames(trial) as (_, frames):
                    if next(frames, None) is not None:
                        return plan
                reason = "no picture could be decoded from it"
            except MediaError as error:
                reason = str(error).removeprefix(f"{trial}: ")
    raise MediaError(f"{video}: its picture cannot be written to an mp4 ({reason})")


def mux_music(video: Path | str, music: np.ndarray, sample_rate: int, target: Path | str, *,
              duration: float, keep_audio: bool = False, music_gain_db: float = 0.0,
              audio_bitrate: str = "192k", plan: MuxPlan | None = None) -> Path:
    """The video with ``music`` as its soundtrack, exactly ``duration`` seconds long, atomically.

    The picture is copied when an mp4 can carry its codec (no quality loss, fast; any rotation tag
    travels with it), else re-encoded as :class:`MuxPlan` says (turned upright by ffmpeg). Either
    way the output plays the way the input does.

    Args:
        music: float ``[C, S]`` (C 1 or 2) in [-1, 1].
        duration: seconds of the output (the input video's length).
        keep_audio: mix the music over the original audio instead of replacing it; a video without
            audio gets the music alone.
        music_gain_db: gain of the music in the mix (``keep_audio`` only).
        plan: from :func:`plan_mux` (made here when not given).
    """
    video = Path(video)
    plan = plan or plan_mux(video, keep_audio=keep_audio)
    mix = keep_audio and plan.info.audio_rate is not None
    with atomic_path(target) as temp, tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / "music.wav"
        soundfile.write(str(wav), np.asarray(music, dtype=np.float32).T, sample_rate, subtype="FLOAT")
        command = _mux_command(plan, ["-i", str(wav)], temp, ["-t", f"{duration:.6f}"], mix=mix,
                               music_gain_db=music_gain_db, audio_bitrate=audio_bitrate)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise MediaError(f"{video}: ffmpeg could not mux the music ({_ffmpeg_reason(result.stderr, result.returncode)})")
    return Path(target)
