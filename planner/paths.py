"""Waypoint following, path shortening, spline trajectories and random walks on occupancy grids.

Cells are ``(row, col)``. Normalized coordinates are those of :mod:`lidar.coords`:
``x = (col + 0.5 - nx/2) / (nx/2)``, ``y = (row + 0.5 - ny/2) / (ny/2)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lidar.coords import (
    normalized_to_lidar,
    normalized_to_pixel,
    pixel_to_normalized,
    trajectory_from_waypoints,
)

from .astar import NoPathError, astar, free_mask

__all__ = [
    "cell_to_normalized",
    "normalized_to_cell",
    "follow_waypoints",
    "line_of_sight",
    "shorten_path",
    "densify_polyline",
    "path_to_waypoints",
    "spline_clearance",
    "random_walk",
]


def cell_to_normalized(cells, shape) -> np.ndarray:
    """(N, 2) ``(row, col)`` cells (float allowed) of a grid of ``shape`` -> (N, 2) normalized ``(x, y)``."""
    return pixel_to_normalized(cells, shape)


def normalized_to_cell(xy_n, shape) -> np.ndarray:
    """(N, 2) normalized ``(x, y)`` -> (N, 2) int64 ``(row, col)`` of the cells containing them."""
    rc = np.floor(normalized_to_pixel(xy_n, shape) + 0.5).astype(np.int64)
    rc[:, 0] = np.clip(rc[:, 0], 0, shape[0] - 1)
    rc[:, 1] = np.clip(rc[:, 1], 0, shape[1] - 1)
    return rc


def follow_waypoints(grid, waypoints, connectivity: int = 8, clearance: float = 0.0, closed: bool = False,
                     allowed=None) -> np.ndarray:
    """A* through a list of ``(row, col)`` waypoint cells, in order; ``closed`` returns to the first.

    Returns the concatenated (N, 2) int64 path (joints not repeated). Raises :class:`NoPathError`
    naming the leg that has no path.
    """
    wp = np.asarray(waypoints, dtype=np.int64).reshape(-1, 2)
    if len(wp) == 0:
        raise ValueError("no waypoints given")
    free = free_mask(grid, clearance) if allowed is None else allowed
    legs = list(zip(wp[:-1], wp[1:]))
    if closed and len(wp) > 1:
        legs.append((wp[-1], wp[0]))
    out = [wp[:1]]
    for i, (a, b) in enumerate(legs):
        try:
            seg = astar(grid, a, b, connectivity=connectivity, clearance=clearance, allowed=free)
        except NoPathError as e:
            raise NoPathError(f"leg {i} from waypoint {tuple(a)} to {tuple(b)}: {e}") from None
        out.append(seg[1:])
    return np.concatenate(out, axis=0)


def line_of_sight(allowed, a, b, step: float = 0.25) -> bool:
    """True when the straight segment between cell centres ``a`` and ``b`` (float (row, col)) only
    touches allowed cells (all cells around each sample, so corners are not cut)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = max(2, int(np.ceil(np.hypot(*(b - a)) / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = a[None, :] * (1 - t) + b[None, :] * t
    lo = np.floor(p + 1e-9).astype(np.int64)
    hi = np.ceil(p - 1e-9).astype(np.int64)
    H, W = allowed.shape
    rr = np.concatenate([lo[:, 0], lo[:, 0], hi[:, 0], hi[:, 0]])
    cc = np.concatenate([lo[:, 1], hi[:, 1], lo[:, 1], hi[:, 1]])
    if rr.min() < 0 or cc.min() < 0 or rr.max() >= H or cc.max() >= W:
        return False
    return bool(allowed[rr, cc].all())


def shorten_path(grid, path, clearance: float = 0.0, allowed=None, max_detour: float = 1.25) -> np.ndarray:
    """Greedy string pulling: keep a subset of the path's cells joined by straight, allowed segments.

    The first and last cells are kept; each kept cell is followed by the farthest later cell that is in
    line of sight and whose stretch of path is at most ``max_detour`` times the straight distance (so a
    path that comes back on itself, e.g. into a room and out again, is not cut short). Returns (n, 2)
    int64 cells.
    """
    p = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    if len(p) <= 2:
        return p.copy()
    free = free_mask(grid, clearance) if allowed is None else allowed
    arc = np.concatenate([[0.0], np.cumsum(np.sqrt((np.diff(p, axis=0).astype(np.float64) ** 2).sum(axis=1)))])
    n = len(p)

    def ok(i, j):
        d = float(np.hypot(*(p[j] - p[i])))
        return arc[j] - arc[i] <= max_detour * d + 1e-9 and line_of_sight(free, p[i], p[j])

    keep = [0]
    i = 0
    while i < n - 1:
        j = i + 1
        step = 1
        while j + step <= n - 1 and ok(i, j + step):
            j += step
            step *= 2
        while j + 1 <= n - 1 and ok(i, j + 1):
            j += 1
        keep.append(j)
        i = j
    return p[keep]


def densify_polyline(points, spacing: float, closed: bool = False) -> np.ndarray:
    """Insert evenly spaced points so consecutive points are at most ``spacing`` apart.

    ``closed`` appends the first point at the end (closing the loop).
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if closed and (len(p) < 2 or np.any(p[0] != p[-1])):
        p = np.concatenate([p, p[:1]], axis=0)
    out = [p[:1]]
    for a, b in zip(p[:-1], p[1:]):
        k = max(1, int(np.ceil(np.hypot(*(b - a)) / spacing)))
        t = (np.arange(1, k + 1) / k)[:, None]
        out.append(a[None, :] * (1 - t) + b[None, :] * t)
    res = np.concatenate(out, axis=0)
    if closed:
        res[-1] = res[0]
    return res


def spline_clearance(waypoints_n, dist_map, samples_per_segment: int = 16) -> np.ndarray:
    """Distance to the nearest wall (pixels, linear interpolation of ``dist_map``) along the cubic spline
    of normalized waypoints (the spline of :func:`lidar.trajectory_from_waypoints`), per sample.
    Returns an (n_segments, samples_per_segment) array."""
    shape = dist_map.shape
    traj = trajectory_from_waypoints(waypoints_n, samples_per_segment, shape)
    n_seg = len(waypoints_n) - 1
    traj = traj[: n_seg * samples_per_segment]
    rc = np.stack([traj[:, 1] + shape[0] / 2.0 - 0.5, traj[:, 0] + shape[1] / 2.0 - 0.5])
    d = ndimage.map_coordinates(dist_map, rc, order=1, mode="constant", cval=0.0)
    return d.reshape(n_seg, samples_per_segment)


def path_to_waypoints(grid, path, clearance: float = 0.0, spacing: float = 20.0, min_clearance=None,
                      closed: bool = False, max_refinements: int = 12, samples_per_segment: int = 16,
                      allowed=None) -> np.ndarray:
    """Turn a grid path into normalized waypoints whose cubic spline stays in free space.

    The path is shortened (:func:`shorten_path` with ``clearance``), resampled every ``spacing`` pixels
    and then, wherever the spline through the waypoints comes closer than ``min_clearance`` (default
    ``clearance / 2``, at least 1 pixel) to a wall, the offending segments are split at their midpoints
    on the shortened polyline, until the whole spline is clear. ``closed`` makes a loop (first waypoint
    repeated at the end; the spline is then periodic).

    Returns (K, 2) float64 normalized ``(x, y)`` waypoints.
    """
    blocked = np.asarray(grid).astype(bool)
    shape = blocked.shape
    free = free_mask(blocked, clearance) if allowed is None else allowed
    short = shorten_path(blocked, path, clearance, allowed=free).astype(np.float64)
    if closed and len(short) > 1 and np.all(short[0] == short[-1]):
        short = short[:-1]
    if len(short) == 1:
        return cell_to_normalized(short, shape)
    pts = densify_polyline(short, spacing, closed=closed)
    min_clear = max(1.0, clearance / 2.0) if min_clearance is None else float(min_clearance)
    dist_map = ndimage.distance_transform_edt(~blocked)
    for _ in range(max_refinements):
        wn = cell_to_normalized(pts, shape)
        if len(wn) < 3:
            return wn
        d = spline_clearance(wn, dist_map, samples_per_segment)
        bad = np.nonzero(d.min(axis=1) < min_clear)[0]
        if len(bad) == 0:
            return wn
        mids = 0.5 * (pts[bad] + pts[bad + 1])
        pts = np.insert(pts, bad + 1, mids, axis=0)
    raise NoPathError(
        f"could not make a spline that keeps {min_clear} pixels from walls after {max_refinements} refinements"
    )


def random_walk(grid, num_goals: int, start=None, clearance: float = 0.0, max_step=None, seed=0,
                connectivity: int = 8, closed: bool = False) -> np.ndarray:
    """A random walk: ``num_goals`` random allowed goal cells (each within ``max_step`` pixels of the
    previous one when given), joined by A* paths. Returns the (N, 2) int64 path of cells."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    free = free_mask(grid, clearance)
    cells = np.argwhere(free)
    if len(cells) == 0:
        raise NoPathError("the grid has no allowed cell")
    if start is None:
        start = cells[rng.integers(len(cells))]
    cur = np.asarray(start, dtype=np.int64)
    goals = [cur]
    out = [cur[None, :]]
    tries = 0
    while len(goals) <= num_goals:
        tries += 1
        if tries > 50 * (num_goals + 1):
            raise NoPathError("could not find reachable random goals")
        cand = cells
        if max_step is not None:
            near = np.hypot(*(cells - cur).T) <= max_step
            cand = cells[near]
        g = cand[rng.integers(len(cand))]
        if np.all(g == cur):
            continue
        try:
            seg = astar(grid, cur, g, connectivity=connectivity, clearance=clearance, allowed=free)
        except NoPathError:
            continue
        out.append(seg[1:])
        goals.append(g)
        cur = g
    if closed:
        seg = astar(grid, cur, goals[0], connectivity=connectivity, clearance=clearance, allowed=free)
        out.append(seg[1:])
    return np.concatenate(out, axis=0)


def cells_to_lidar(cells, shape) -> np.ndarray:
    """(N, 2) cells -> (N, 2) lidar ``(x, y)``."""
    return normalized_to_lidar(cell_to_normalized(cells, shape), shape)
