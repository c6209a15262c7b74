"""What one synthetic clip contains, drawn from a seeded random generator.

A :class:`ClipSpec` fixes everything about a clip (key, tempo, chords, melody, scenes and
their moving objects); the audio and video renderers are pure functions of it, so the
same seed always gives the same files.

The video-to-music mapping that v2m-synth makes learnable:
  - background hue  <-> musical key (12 hues, 30 degrees apart); brightness <-> mode
  - object speed    <-> tempo (a fixed fraction of the frame width per beat)
  - scene cuts      <-> chord changes (not in ``motion_only`` sets, where nothing but
                        the motion depends on the tempo)
  - motion events   <-> accents: at random times on the ``event_grid`` (not on the beats, not
                        periodic) every shape jumps to a new place and a loud percussive accent
                        starts in the accompaniment. A tempo that is constant over the clip the
                        music's own past reveals; *when* an event comes, only the picture tells.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import SampleParams

KEY_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Scale degrees (0 = tonic); every progression starts on the tonic so the key is audible.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 5, 1, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 2), (0, 5, 3, 4)),
}
# Background saturation and value per mode: major clips are bright, minor ones dark.
MODE_SV = {"major": (0.50, 0.88), "minor": (0.70, 0.52)}
# Objects travel this fraction of the frame width per beat, so speed carries the tempo. The flow
# features compare frames 0.25 s apart: at 0.2 of the width per beat (up to ~28 px at 224) the
# Farneback pyramid lost the flat-coloured shapes and the flow no longer grew with the tempo
# (Spearman ~0 between bpm and the 99.5th percentile of flow); at 0.08 it is ~0.8.
WIDTH_PER_BEAT = 0.04
SHAPES = ("circle", "square", "ring", "diamond")
# At an event every shape lurches forward along its path by this fraction of the frame width, on
# top of its drift. Farneback at 224 px / 4 fps sees a peak there; bigger jumps it cannot track.
EVENT_JUMP = 0.06


@dataclass(frozen=True)
class ObjectSpec:
    """A moving shape; positions in pixels, direction in radians."""

    shape: str
    radius: float
    rgb: tuple[int, int, int]
    x0: float
    y0: float
    direction: float


@dataclass(frozen=True)
class SceneSpec:
    """One shot between two cuts: a background shading and its objects."""

    start: float
    shade_angle: float
    shade_amount: float
    objects: tuple[ObjectSpec, ...]


@dataclass(frozen=True)
class ClipSpec:
    """Everything that defines one synthetic clip. Times are in seconds from the clip start."""

    video_id: str
    seed: int
    seconds: float
    fps: int
    width: int
    height: int
    sample_rate: int
    key: int
    mode: str
    bpm: float
    first_beat: float
    chords: tuple[tuple[float, int], ...]          # (start time, scale degree)
    melody: tuple[tuple[float, float, int], ...]   # (start, duration, MIDI pitch)
    scenes: tuple[SceneSpec, ...]
    object_speed: float                            # pixels per second
    motion_only: bool
    vocal_gain: float
    event_times: tuple[float, ...] = ()           # motion events (the shapes lurch, an accent hits)
    event_jump: float = 0.0                        # pixels each shape lurches forward at an event

    @property
    def beat_period(self) -> float:
        return 60.0 / self.bpm

    @property
    def beat_times(self) -> np.ndarray:
        """[n_beats] times of every beat inside the clip."""
        return np.arange(self.first_beat, self.seconds, self.beat_period)

    @property
    def chord_change_times(self) -> tuple[float, ...]:
        return tuple(t for t, _ in self.chords[1:])

    @property
    def cut_times(self) -> tuple[float, ...]:
        return tuple(s.start for s in self.scenes[1:])

    def chord_root(self, degree: int) -> int:
        """Pitch class (0-11) of the chord built on ``degree``."""
        return (self.key + SCALES[self.mode][degree % 7]) % 12


def video_id_for(seed: int, index: int, motion_only: bool) -> str:
    """An 11-character id in YouTube's alphabet, unique per (seed, index, variant)."""
    digest = hashlib.blake2b(f"v2m-synth:{seed}:{int(motion_only)}:{index}".encode(), digest_size=8).digest()
    return "sy" + base64.urlsafe_b64encode(digest).decode()[:9]


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """One HSV colour (each in [0, 1]) as 8-bit RGB."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(255 * c)) for c in (r, g, b))  # type: ignore[return-value]


def key_hue(key: int) -> float:
    """Background hue in [0, 1) of a key (0 = C)."""
    return (key % 12) / 12.0


def sample_clip_spec(params: SampleParams, index: int) -> ClipSpec:
    """Draw clip ``index`` of the set defined by ``params`` (deterministic in seed and index)."""
    root = np.random.default_rng([params.seed, index, int(params.motion_only)])
    # Separate streams: what is drawn for the picture never depends on how many draws the music
    # took, so in a motion_only set nothing but the motion changes with the tempo; the events'
    # stream comes last, so the other draws are those of a set without events.
    rng, scene_rng, event_rng = root.spawn(3)
    key = int(root.integers(12))
    mode = ("major", "minor")[int(root.integers(2))]
    bpm = float(np.round(rng.uniform(params.bpm_min, params.bpm_max), 1))
    period = 60.0 / bpm
    first_beat = float(np.round(rng.uniform(0.0, min(0.25, period / 2)), 3))

    progression = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    chords: list[tuple[float, int]] = [(0.0, progression[0])]
    beat = 0
    step = 1
    while True:
        beat += int(rng.choice((2, 4, 4, 8)))
        start = first_beat + beat * period
        if start >= params.seconds - period:
            break
        chords.append((round(start, 6), progression[step % len(progression)]))
        step += 1

    melody = _sample_melody(rng, key, mode, chords, first_beat, period, params.seconds)
    speed = WIDTH_PER_BEAT * params.width / period
    scene_starts = [0.0] if params.motion_only else [t for t, _ in chords]
    scenes = tuple(_sample_scene(scene_rng, start, key, params) for start in scene_starts)
    event_times = sample_event_times(event_rng, params)
    return ClipSpec(
        video_id=video_id_for(params.seed, index, params.motion_only),
        seed=params.seed, seconds=params.seconds, fps=params.fps, width=params.width,
        height=params.height, sample_rate=params.sample_rate, key=key, mode=mode, bpm=bpm,
        first_beat=first_beat, chords=tuple(chords), melody=melody, scenes=scenes,
        object_speed=speed, motion_only=params.motion_only, vocal_gain=params.vocal_gain,
        event_times=event_times, event_jump=EVENT_JUMP * params.width,
    )


# The last event leaves this long before the clip end, for the accent to ring and the jump to be seen.
EVENT_TAIL = 0.5


def sample_event_times(rng: np.random.Generator, params: SampleParams) -> tuple[float, ...]:
    """Random event times on the ``event_grid``, at least ``event_min_gap`` apart, ~``events_per_second``.

    Gaps are the minimum gap plus an exponential wait (a Poisson process with a dead time), each
    time rounded up to the grid: not periodic, and not tied to the beats. None at 0 (the first
    flow map has no previous frame) nor in the last ``EVENT_TAIL`` seconds.
    """
    if params.events_per_second <= 0:
        return ()
    grid = params.event_grid
    # rounding up to the grid adds half a grid step per gap on average: the wait makes up for it
    wait = max(1.0 / params.events_per_second - params.event_min_gap - grid / 2, 1e-6)
    times: list[float] = []
    last = -params.event_min_gap
    while True:
        t = last + max(params.event_min_gap, grid) + float(rng.exponential(wait))
        t = math.ceil(round(t / grid, 6)) * grid
        if t >= params.seconds - EVENT_TAIL:
            return tuple(times)
        times.append(round(t, 6))
        last = t


def _sample_melody(rng: np.random.Generator, key: int, mode: str, chords: list[tuple[float, int]],
                   first_beat: float, period: float, seconds: float) -> tuple[tuple[float, float, int], ...]:
    """Phrases of 1-2 beat notes on the beat, drawn from the current chord's tones, with rests."""
    scale = SCALES[mode]
    notes = []
    t = first_beat
    singing = True
    beats_left = int(rng.integers(4, 9))
    while t < seconds - period:
        if beats_left == 0:
            singing = not singing
            beats_left = int(rng.integers(4, 9)) if singing else int(rng.integers(2, 5))
        degree = [d for s, d in chords if s <= t + 1e-9][-1]
        length = int(rng.choice((1, 1, 2))) if singing else 1
        length = min(length, beats_left)
        if singing:
            tone = degree + 2 * int(rng.integers(3))            # root, third or fifth
            pitch = 12 * 5 + key + scale[tone % 7] + 12 * (tone // 7)
            notes.append((round(t, 6), round(length * period, 6), int(pitch)))
        t += length * period
        beats_left -= length
    return tuple(notes)


def _sample_scene(rng: np.random.Generator, start: float, key: int, params: SampleParams) -> SceneSpec:
    n_objects = int(rng.integers(1, 4))
    objects = []
    for _ in range(n_objects):
        radius = float(rng.uniform(0.07, 0.13) * params.height)
        hue = (key_hue(key) + 0.5 + rng.uniform(-0.1, 0.1)) % 1.0
        objects.append(ObjectSpec(
            shape=str(rng.choice(SHAPES)), radius=radius,
            rgb=hsv_to_rgb(hue, float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.8, 1.0))),
            x0=float(rng.uniform(radius, params.width - radius)),
            y0=float(rng.uniform(radius, params.height - radius)),
            direction=float(rng.uniform(0, 2 * np.pi)),
        ))
    return SceneSpec(start=start, shade_angle=float(rng.uniform(0, 2 * np.pi)),
                     shade_amount=float(rng.uniform(0.03, 0.08)), objects=tuple(objects))
