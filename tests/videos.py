"""Tiny synthetic video for the video tests (no files needed): smooth moving gradients and a moving square."""
from __future__ import annotations

import numpy as np


def moving_gradients(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 RGB [frames, height, width, 3]: smooth content a lossy codec keeps above 30 dB, with motion."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        r = 128 + 90 * np.sin(2 * np.pi * (x + 3 * t) / width)
        g = 128 + 90 * np.cos(2 * np.pi * (y - 2 * t) / height)
        b = 40 + 3 * (x + y) / (width + height) * 60
        rgb = np.stack([r, g, b], axis=-1)
        top, left = (4 + 2 * t) % (height - 12), (6 + 3 * t) % (width - 12)
        rgb[top:top + 10, left:left + 10] = (230, 60, 200)  # a moving square: real motion for the codecs
        clip[t] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return clip


def write_clip_file(directory, frames: int, height: int, width: int) -> str:
    """`moving_gradients` written losslessly as directory/clip.mkv (FFV1); returns its path."""
    from codec.video.io import write_video

    path = f"{directory}/clip.mkv"
    write_video(path, moving_gradients(frames, height, width), fps=25)
    return path
