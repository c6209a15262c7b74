"""Audio of a synthetic clip: accompaniment (chords, bass, drums on the beats, accents on the
events) and a vocal stand-in.

Every onset of the accompaniment falls on a beat (drums on every beat, bass plucks on every
beat, chord changes on beats) but the accents, which fall on the clip's events. Its pitch content is the
clip's chords in its key over a tonic drone (without it, short progressions heard as the
dominant's or subdominant's key about one time in five). The vocal stand-in is a voice-like line (harmonics shaped by
vowel formants, vibrato) singing chord tones, so a separator has something to remove.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.spec import SCALES, ClipSpec

PEAK = 10 ** (-1 / 20)  # the mix is normalised to -1 dBFS
# Formants of an open "ah" vowel: (centre Hz, bandwidth Hz, gain).
FORMANTS = ((730.0, 90.0, 1.0), (1090.0, 110.0, 0.5), (2440.0, 170.0, 0.25))


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def render_stems(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Accompaniment and vocal stems of a clip, scaled so that their sum peaks at -1 dBFS.

    Returns:
        ``(accompaniment, vocals)``, each float32 ``[2, S]`` at ``spec.sample_rate``,
        S = round(seconds * sample_rate). The mix is their sum.
    """
    sr = spec.sample_rate
    n = int(round(spec.seconds * sr))
    rng = np.random.default_rng([spec.seed, 7, int(spec.key), int(spec.bpm * 10)])
    pad_l, pad_r = _chord_pad(spec, n)
    bass = _bass(spec, n) + _tonic_drone(spec, n)
    drums = _drums(spec, n, rng) + _accents(spec, n)
    accompaniment = np.stack([pad_l + bass + drums, pad_r + bass + drums])
    voice = _voice(spec, n)
    acc_rms = float(np.sqrt(np.mean(accompaniment ** 2))) + 1e-9
    voice_rms = float(np.sqrt(np.mean(voice ** 2))) + 1e-9
    vocals = np.stack([voice, voice]) * (spec.vocal_gain * acc_rms / voice_rms)
    scale = PEAK / max(float(np.abs(accompaniment + vocals).max()), 1e-9)
    return (accompaniment * scale).astype(np.float32), (vocals * scale).astype(np.float32)


def _envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, int(attack * sr)), min(n, int(release * sr))
    if a:
        env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        env[n - r:] *= np.linspace(1.0, 0.0, r)
    return env


def _chord_pad(spec: ClipSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sustained triads (root, third, fifth around middle C), panned apart; [S] each side."""
    sr = spec.sample_rate
    left, right = np.zeros(n), np.zeros(n)
    bounds = [t for t, _ in spec.chords] + [spec.seconds]
    for (start, degree), end in zip(spec.chords, bounds[1:]):
        i0, i1 = int(round(start * sr)), min(n, int(round(end * sr)))
        t = np.arange(i1 - i0) / sr
        env = _envelope(i1 - i0, sr, 0.01, 0.05) * (0.75 + 0.25 * np.exp(-t / 0.6))
        for voice_index, tone in enumerate((degree, degree + 2, degree + 4)):
            pitch = 60 + spec.key + SCALES[spec.mode][tone % 7] + 12 * (tone // 7)
            f = midi_hz(pitch)
            wave = sum(np.sin(2 * np.pi * f * h * t) / h ** 1.5 for h in (1, 2, 3, 4))
            pan = (0.35, 0.5, 0.65)[voice_index]
            left[i0:i1] += 0.12 * (1 - pan) * 2 * wave * env
            right[i0:i1] += 0.12 * pan * 2 * wave * env
    return left, right


def _tonic_drone(spec: ClipSpec, n: int) -> np.ndarray:
    """A soft sustained tonic in two octaves: the tonal centre that makes the key unambiguous; [S]."""
    sr = spec.sample_rate
    t = np.arange(n) / sr
    wave = sum(np.sin(2 * np.pi * midi_hz(pitch + spec.key) * t) for pitch in (48, 60))
    return 0.08 * wave * _envelope(n, sr, 0.2, 0.2)


def _bass(spec: ClipSpec, n: int) -> np.ndarray:
    """The chord root two octaves down, plucked on every beat; [S]."""
    sr = spec.sample_rate
    out = np.zeros(n)
    length = int(min(spec.beat_period, 0.6) * sr)
    t = np.arange(length) / sr
    env = np.exp(-t / 0.18) * _envelope(length, sr, 0.004, 0.02)
    for beat in spec.beat_times:
        degree = [d for s, d in spec.chords if s <= beat + 1e-9][-1]
        f = midi_hz(36 + spec.chord_root(degree))
        i0 = int(round(beat * sr))
        seg = (np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t)) * env
        m = min(length, n - i0)
        out[i0:i0 + m] += 0.35 * seg[:m]
    return out


def _drums(spec: ClipSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """A kick on every beat and a noise snare on the off beats (2 and 4); [S]."""
    sr = spec.sample_rate
    out = np.zeros(n)
    length = int(min(0.3, 0.9 * spec.beat_period) * sr)
    t = np.arange(length) / sr
    # A smooth tail: a hit cut off mid-decay clicks, and the click reads as a second onset.
    tail = _envelope(length, sr, 0.0, 0.1)
    kick_phase = 2 * np.pi * np.cumsum(50.0 + 90.0 * np.exp(-t / 0.03)) / sr
    kick = np.sin(kick_phase) * np.exp(-t / 0.07) * tail
    for index, beat in enumerate(spec.beat_times):
        i0 = int(round(beat * sr))
        m = min(length, n - i0)
        hit = 0.55 * kick
        if index % 2 == 1:
            noise = rng.standard_normal(length)
            noise = np.diff(noise, prepend=0.0)  # tilt towards the highs
            hit = hit + 0.12 * noise * np.exp(-t / 0.045) * tail
        out[i0:i0 + m] += hit[:m]
    return out


# The accent's pitched part: inharmonic partials (ratios of a struck metal plate), unlike any
# chord tone or drum of the beat.
ACCENT_PARTIALS = ((587.0, 1.0), (869.0, 0.7), (1192.0, 0.5), (1608.0, 0.35))


def _accents(spec: ClipSpec, n: int) -> np.ndarray:
    """A loud crash-like accent at every event time: a bright noise burst plus a metallic pitched hit; [S].

    Starts exactly at the event's sample (no attack ramp: the onset is the event time), louder than
    the beat drums, and decays within ~0.3 s so the next event's onset stands on its own.
    """
    sr = spec.sample_rate
    out = np.zeros(n)
    length = int(0.35 * sr)
    t = np.arange(length) / sr
    tail = _envelope(length, sr, 0.0, 0.1)
    rng = np.random.default_rng([spec.seed, 13, int(spec.key), int(spec.bpm * 10)])
    tone = sum(g * np.sin(2 * np.pi * f * t) for f, g in ACCENT_PARTIALS) * np.exp(-t / 0.12)
    for time in spec.event_times:
        # a band of ~1.5-8 kHz (a moving average, then a difference): bright like a crash, yet below
        # what AAC's low-pass and the 32 kHz codec drop, so the mix and the codes keep the accent
        noise = np.diff(np.convolve(rng.standard_normal(length), np.ones(4) / 4, mode="same"), prepend=0.0)
        noise /= noise.std() + 1e-12
        hit = (0.3 * noise * np.exp(-t / 0.06) + 0.35 * tone) * tail
        i0 = int(round(time * sr))
        m = min(length, n - i0)
        out[i0:i0 + m] += hit[:m]
    return out


def _voice(spec: ClipSpec, n: int) -> np.ndarray:
    """The melody as a sung vowel: harmonics shaped by formants, with vibrato; mono [S]."""
    sr = spec.sample_rate
    out = np.zeros(n)
    for start, duration, pitch in spec.melody:
        i0 = int(round(start * sr))
        m = min(int(round(duration * sr)), n - i0)
        if m <= 0:
            continue
        t = np.arange(m) / sr
        vibrato = 0.25 * np.sin(2 * np.pi * 5.5 * t) * np.clip(t / 0.2, 0.0, 1.0)
        f0 = midi_hz(pitch) * 2.0 ** (vibrato / 12.0)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        base = midi_hz(pitch)
        wave = np.zeros(m)
        for h in range(1, int(5000 // base) + 1):
            freq = h * base
            gain = sum(g / (1.0 + ((freq - c) / bw) ** 2) for c, bw, g in FORMANTS) + 0.05
            wave += gain / h ** 0.5 * np.sin(h * phase)
        out[i0:i0 + m] += wave * _envelope(m, sr, 0.04, 0.06)
    return out
