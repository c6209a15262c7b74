"""Motion maps: Farneback optical flow between consecutive grayscale frames, magnitude only (paper 3.2)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from pipeline.config import MotionFeatureParams


def flow_kwargs(params: MotionFeatureParams) -> dict:
    """:func:`flow_magnitudes`'s keyword arguments from the flow params (all but the frame rate)."""
    values = dataclasses.asdict(params)
    values.pop("fps")
    return values


def flow_magnitudes(gray: np.ndarray, *, size: int = 224, pyr_scale: float = 0.5, levels: int = 3,
                    winsize: int = 15, iterations: int = 3, poly_n: int = 5, poly_sigma: float = 1.2) -> np.ndarray:
    """Per-pixel motion speed between consecutive frames.

    Args:
        gray: uint8 ``[N, H, W]`` frames at a fixed rate (4 fps in the paper).
        size: frames are resized to ``size x size`` first (the motion encoder's input).

    Returns:
        float32 ``[N, size, size]``: map i is the flow magnitude from frame i-1 to frame i, in pixels
        (of the resized frame) per frame interval, so there is one map per frame and map i lines up
        with frame i's time. Map 0 has no previous frame: it repeats map 1 (the first interval's
        motion). A zero map there made the first interval look like a burst of motion out of
        stillness, an event at every clip's start: the time-aligned model learned to expect an
        accent 0.25 s into every video (held-out CE +0.19 nats/token on the frames before a clip's
        first event, issue 13's notes).
    """
    n = gray.shape[0]
    maps = np.zeros((n, size, size), dtype=np.float32)
    previous = None
    for index in range(n):
        frame = cv2.resize(gray[index], (size, size), interpolation=cv2.INTER_AREA)
        if previous is not None:
            flow = cv2.calcOpticalFlowFarneback(previous, frame, None, pyr_scale, levels, winsize, iterations,
                                                poly_n, poly_sigma, 0)
            maps[index] = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
        previous = frame
    if n > 1:
        maps[0] = maps[1]
    return maps


def quantize(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 maps with one scale per map: ``value = q * scale / 255`` (error <= scale / 510).

    Args:
        maps: float ``[N, S, S]`` magnitudes (>= 0).

    Returns:
        ``(q uint8 [N, S, S], scale float32 [N])``.
    """
    scale = maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None, None]
    q = np.rint(np.clip(maps / safe, 0.0, 1.0) * 255.0).astype(np.uint8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 ``[N, S, S]`` magnitudes from :func:`quantize`'s output."""
    return q.astype(np.float32) * (scale.astype(np.float32)[:, None, None] / 255.0)
