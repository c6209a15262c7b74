"""Video frames of a synthetic clip: a key-coloured background and shapes moving at tempo speed,
jumping to new places at the clip's events."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.synth.spec import MODE_SV, ClipSpec, SceneSpec, hsv_to_rgb, key_hue


def background_rgb(key: int, mode: str) -> tuple[int, int, int]:
    """The unshaded background colour of a clip in ``key`` and ``mode``."""
    s, v = MODE_SV[mode]
    return hsv_to_rgb(key_hue(key), s, v)


def _bounce(position: np.ndarray | float, lo: float, hi: float) -> np.ndarray | float:
    """Fold an unbounded coordinate into [lo, hi] as if reflecting off the walls."""
    span = hi - lo
    folded = np.mod(np.asarray(position) - lo, 2 * span)
    return lo + span - np.abs(folded - span)


def object_positions(spec: ClipSpec, scene: SceneSpec, time: float) -> list[tuple[float, float]]:
    """Centre (x, y) in pixels of each object of ``scene`` at clip time ``time``."""
    elapsed = time - scene.start
    # at every event since the scene began each shape lurched forward along its path by the jump
    travel = spec.object_speed * elapsed + spec.event_jump * sum(scene.start < t <= time + 1e-9
                                                                 for t in spec.event_times)
    out = []
    for obj in scene.objects:
        x = obj.x0 + travel * np.cos(obj.direction)
        y = obj.y0 + travel * np.sin(obj.direction)
        out.append((float(_bounce(x, obj.radius, spec.width - obj.radius)),
                    float(_bounce(y, obj.radius, spec.height - obj.radius))))
    return out


def render_frames(spec: ClipSpec) -> Iterator[np.ndarray]:
    """Every frame of the clip, in order.

    Yields:
        uint8 ``[H, W, 3]`` RGB frames, ``round(seconds * fps)`` of them.
    """
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.asarray(background_rgb(spec.key, spec.mode), dtype=np.float32)
    shade_cache: dict[int, np.ndarray] = {}
    n_frames = int(round(spec.seconds * spec.fps))
    for index in range(n_frames):
        time = index / spec.fps
        scene_index = max(i for i, s in enumerate(spec.scenes) if s.start <= time + 1e-9)
        scene = spec.scenes[scene_index]
        if scene_index not in shade_cache:
            ramp = (np.cos(scene.shade_angle) * (xx / w - 0.5) + np.sin(scene.shade_angle) * (yy / h - 0.5))
            shade_cache[scene_index] = np.clip(base * (1.0 + 2.0 * scene.shade_amount * ramp)[..., None], 0, 255)
        frame = shade_cache[scene_index].copy()
        for obj, (cx, cy) in zip(scene.objects, object_positions(spec, scene, time)):
            dx, dy = xx - cx, yy - cy
            r = obj.radius
            if obj.shape == "circle":
                mask = dx * dx + dy * dy <= r * r
            elif obj.shape == "square":
                mask = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
            elif obj.shape == "ring":
                d2 = dx * dx + dy * dy
                mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
            else:  # diamond
                mask = np.abs(dx) + np.abs(dy) <= r
            frame[mask] = obj.rgb
        yield frame.astype(np.uint8)
