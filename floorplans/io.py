"""Reading and writing floor plan images (walls 1 = white, free space 0 = black)."""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["load_floorplan", "save_floorplan", "load_waypoints"]


def load_floorplan(path) -> np.ndarray:
    """Read any image as a float32 (H, W) array with values scaled to [0, 1] (colour is averaged)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"floor plan image not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"could not read an image from {path}")
    if np.issubdtype(img.dtype, np.integer):
        # an integer dtype (np.issubdtype does not narrow the type for mypy)
        scale = float(np.iinfo(img.dtype).max)  # type: ignore[type-var]
    else:
        scale = 1.0
    img = img.astype(np.float32) / scale
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = img.mean(axis=2)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def save_floorplan(path, img) -> None:
    """Write a [0, 1] image as an 8-bit greyscale PNG (values rounded to 0..255)."""
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    arr = np.round(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if not cv2.imwrite(path, arr, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}")


def load_waypoints(folder) -> list:
    """Load the robot waypoint files ``*.npy`` of a folder, in natural order (robot_2 before robot_10)."""
    import re

    folder = os.fspath(folder)
    names = [n for n in os.listdir(folder) if n.endswith(".npy")]

    def key(n):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]

    return [np.load(os.path.join(folder, n)) for n in sorted(names, key=key)]
