"""Coordinate frames shared by the lidar simulator, the planner and the floor plans.

Three frames describe a point on a floor plan image of shape ``(ny, nx)`` (rows, columns):

* **pixel** ``(row, col)``: integer indices of the image; pixel ``(r, c)`` is the unit square whose
  centre is at continuous pixel position ``(r, c)``.
* **lidar** ``(x, y)``: pixel units centred on the image. ``x`` grows with the column index and
  ``y`` grows with the row index (row 0 is at the top of the image, ``y = -ny/2``)::

      x = col + 0.5 - nx / 2        y = row + 0.5 - ny / 2

  so ``x`` spans ``[-nx/2, nx/2]`` and ``y`` spans ``[-ny/2, ny/2]``.
* **normalized** ``(x, y)`` in ``[-1, 1]^2``: the lidar frame divided by ``(nx/2, ny/2)``.
  Waypoint files store this frame, ``x`` first (column), ``y`` second (row).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

__all__ = [
    "pixel_to_lidar",
    "lidar_to_pixel",
    "normalized_to_lidar",
    "lidar_to_normalized",
    "pixel_to_normalized",
    "normalized_to_pixel",
    "trajectory_from_waypoints",
]


def _shape2(image_shape):
    ny, nx = int(image_shape[0]), int(image_shape[1])
    return ny, nx


def pixel_to_lidar(rc, image_shape) -> np.ndarray:
    """(N, 2) pixel ``(row, col)`` (float allowed) -> (N, 2) lidar ``(x, y)``."""
    ny, nx = _shape2(image_shape)
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return np.stack([rc[:, 1] + 0.5 - nx / 2.0, rc[:, 0] + 0.5 - ny / 2.0], axis=1)


def lidar_to_pixel(xy, image_shape) -> np.ndarray:
    """(N, 2) lidar ``(x, y)`` -> (N, 2) continuous pixel ``(row, col)`` (pixel centres are integers)."""
    ny, nx = _shape2(image_shape)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([xy[:, 1] + ny / 2.0 - 0.5, xy[:, 0] + nx / 2.0 - 0.5], axis=1)


def normalized_to_lidar(xy_n, image_shape) -> np.ndarray:
    """(N, 2) normalized ``(x, y)`` in [-1, 1]^2 -> (N, 2) lidar ``(x, y)``."""
    ny, nx = _shape2(image_shape)
    xy_n = np.asarray(xy_n, dtype=np.float64).reshape(-1, 2)
    return xy_n * np.array([nx / 2.0, ny / 2.0])


def lidar_to_normalized(xy, image_shape) -> np.ndarray:
    """(N, 2) lidar ``(x, y)`` -> (N, 2) normalized ``(x, y)``."""
    ny, nx = _shape2(image_shape)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return xy / np.array([nx / 2.0, ny / 2.0])


def pixel_to_normalized(rc, image_shape) -> np.ndarray:
    """(N, 2) pixel ``(row, col)`` -> (N, 2) normalized ``(x, y)``."""
    ny, nx = _shape2(image_shape)
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return np.stack(
        [(rc[:, 1] + 0.5 - nx / 2.0) / (nx / 2.0), (rc[:, 0] + 0.5 - ny / 2.0) / (ny / 2.0)], axis=1
    )


def normalized_to_pixel(xy_n, image_shape) -> np.ndarray:
    """(N, 2) normalized ``(x, y)`` -> (N, 2) continuous pixel ``(row, col)``."""
    ny, nx = _shape2(image_shape)
    xy_n = np.asarray(xy_n, dtype=np.float64).reshape(-1, 2)
    return np.stack(
        [xy_n[:, 1] * (ny / 2.0) + ny / 2.0 - 0.5, xy_n[:, 0] * (nx / 2.0) + nx / 2.0 - 0.5], axis=1
    )


def is_closed(waypoints, tol: float = 1e-12) -> bool:
    w = np.asarray(waypoints, dtype=np.float64)
    return len(w) > 2 and bool(np.all(np.abs(w[0] - w[-1]) <= tol))


def trajectory_from_waypoints(waypoints_normalized, spline_res: int, image_shape) -> np.ndarray:
    """Robot poses along a cubic spline through waypoints, in lidar coordinates.

    The spline interpolates the waypoints over their index ``0 .. n-1`` (one cubic per coordinate),
    evaluated at ``spline_res`` equally spaced parameter values per segment, and is scaled by
    ``(nx/2, ny/2)``. When the first and last waypoints are equal the path is a closed loop: the
    spline is periodic and the repeated end point is left out, giving ``(n-1) * spline_res`` poses;
    otherwise the boundary condition is not-a-knot and the last waypoint is included, giving
    ``(n-1) * spline_res + 1`` poses. Two waypoints give a straight line, one gives one pose.

    Returns a (P, 2) float64 array of lidar ``(x, y)``.
    """
    w = np.asarray(waypoints_normalized, dtype=np.float64).reshape(-1, 2)
    spline_res = int(spline_res)
    if spline_res < 1:
        raise ValueError(f"spline_res must be >= 1, got {spline_res}")
    n = len(w)
    if n == 0:
        raise ValueError("no waypoints given")
    if n == 1:
        return normalized_to_lidar(w, image_shape)
    closed = is_closed(w)
    if n == 2 or (closed and n == 3):
        t_knots = np.arange(n, dtype=np.float64)
        t = np.arange((n - 1) * spline_res + (0 if closed else 1)) / spline_res
        pts = np.stack([np.interp(t, t_knots, w[:, 0]), np.interp(t, t_knots, w[:, 1])], axis=1)
        return normalized_to_lidar(pts, image_shape)
    t_knots = np.arange(n, dtype=np.float64)
    if closed:
        w = w.copy()
        w[-1] = w[0]
        spline = CubicSpline(t_knots, w, axis=0, bc_type="periodic")
        t = np.arange((n - 1) * spline_res) / spline_res
    else:
        bc = "not-a-knot" if n > 3 else "natural"
        spline = CubicSpline(t_knots, w, axis=0, bc_type=bc)
        t = np.arange((n - 1) * spline_res + 1) / spline_res
    return normalized_to_lidar(spline(t), image_shape)
