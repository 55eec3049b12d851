"""A* shortest paths on occupancy grids."""

from __future__ import annotations

import heapq
import math
from typing import cast

import numpy as np
from scipy import ndimage

__all__ = ["NoPathError", "astar", "free_mask", "path_length", "downsample_grid"]

SQRT2 = math.sqrt(2.0)


class NoPathError(ValueError):
    """No path exists: the goal is unreachable, or start/goal lie in a wall or within the clearance."""


def free_mask(grid, clearance: float = 0.0) -> np.ndarray:
    """Cells a robot may occupy: free (``grid`` False/0) and at least ``clearance`` pixels (Euclidean,
    between cell centres) from the nearest blocked cell. The outside of the grid does not count as a wall.
    """
    blocked = np.asarray(grid).astype(bool)
    if blocked.ndim != 2:
        raise ValueError(f"grid must be 2D, got shape {blocked.shape}")
    free = ~blocked
    if clearance > 0:
        if blocked.any():
            dist = ndimage.distance_transform_edt(free)
            free &= dist >= clearance
    return free


def downsample_grid(grid, factor: int) -> np.ndarray:
    """Coarser occupancy grid: a cell of ``factor x factor`` pixels is blocked when any of them is.

    Planning on it is conservative and ``factor ** 2`` times cheaper; normalized coordinates of its cell
    centres (:func:`planner.cell_to_normalized` with the coarse shape) are the same points of the plan.
    """
    blocked = np.asarray(grid).astype(bool)
    factor = int(factor)
    if factor == 1:
        return blocked.copy()
    H, W = blocked.shape
    if H % factor or W % factor:
        raise ValueError(f"grid shape {blocked.shape} is not divisible by {factor}")
    return cast(np.ndarray, blocked.reshape(H // factor, factor, W // factor, factor).any(axis=(1, 3)))


def path_length(path) -> float:
    """Euclidean length of a (N, 2) path of cells."""
    p = np.asarray(path, dtype=np.float64)
    if len(p) < 2:
        return 0.0
    return float(np.sqrt((np.diff(p, axis=0) ** 2).sum(axis=1)).sum())


def _check_cell(name, cell, free):
    cell = tuple(int(v) for v in np.asarray(cell).reshape(-1))
    if len(cell) != 2:
        raise ValueError(f"{name} must be a (row, col) cell, got {cell}")
    H, W = free.shape
    r, c = cell
    if not (0 <= r < H and 0 <= c < W):
        raise NoPathError(f"{name} {cell} is outside the grid of shape {free.shape}")
    return cell


def astar(grid, start, goal, connectivity: int = 8, clearance: float = 0.0, allowed=None) -> np.ndarray:
    """Shortest grid path from ``start`` to ``goal`` with A*.

    Args:
        grid: 2D array, True/1 = blocked.
        start, goal: ``(row, col)`` cells.
        connectivity: 4 (unit steps) or 8 (diagonal steps cost sqrt(2); a diagonal step is allowed only
            when both cells it cuts past are free, so paths never squeeze between touching corners).
        clearance: the robot keeps at least this distance (pixels, centre to centre) from blocked cells;
            walls are inflated with a Euclidean distance transform.
        allowed: optional precomputed :func:`free_mask` ``(grid, clearance)`` (skips the transform).

    Returns:
        (N, 2) int64 array of ``(row, col)`` cells from start to goal inclusive, a shortest path of the
        graph above (the heuristic, Manhattan or octile distance, is consistent).

    Raises:
        NoPathError: start or goal outside the grid, in a wall or within the clearance, or unreachable.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    free = free_mask(grid, clearance) if allowed is None else np.asarray(allowed, dtype=bool)
    start = _check_cell("start", start, free)
    goal = _check_cell("goal", goal, free)
    for name, cell in (("start", start), ("goal", goal)):
        if not free[cell]:
            why = "in a wall" if np.asarray(grid)[cell] else f"closer than the clearance {clearance} to a wall"
            raise NoPathError(f"{name} {cell} is {why}")
    if start == goal:
        return np.array([start], dtype=np.int64)

    H, W = free.shape
    Wp = W + 2  # cells as flat indices into the grid padded by one blocked cell on every side
    padded = np.zeros((H + 2, Wp), dtype=bool)
    padded[1:-1, 1:-1] = free
    s = (start[0] + 1) * Wp + start[1] + 1
    g_idx = (goal[0] + 1) * Wp + goal[1] + 1
    parent = _search(padded.ravel().tolist(), Wp, s, g_idx, connectivity == 8)
    if parent is None:
        raise NoPathError(
            f"goal {goal} is unreachable from start {start} "
            f"({connectivity}-connected, clearance {clearance})"
        )
    out = []
    i = g_idx
    while i != -1:
        r, c = divmod(i, Wp)
        out.append((r - 1, c - 1))
        i = parent[i]
    return np.array(out[::-1], dtype=np.int64)


def _search(ok: list, Wp: int, s: int, g_idx: int, eight: bool) -> list | None:
    """A* over flat cell indices of a padded grid (``ok``: free cells, rows of ``Wp``) from ``s`` to
    ``g_idx``; returns every cell's parent on the way (None: the goal is unreachable). Ties between equal f
    values go to the smaller heuristic (the cell nearer the goal)."""
    n_cells = len(ok)
    gr, gc = divmod(g_idx, Wp)
    orth = [(1, 1.0), (-1, 1.0), (Wp, 1.0), (-Wp, 1.0)]
    diag = [(Wp + 1, Wp, 1), (Wp - 1, Wp, -1), (-Wp + 1, -Wp, 1), (-Wp - 1, -Wp, -1)]
    c_diag = SQRT2 - 2.0

    def h_of(i):  # octile (8-connected) or Manhattan distance to the goal: consistent
        r, c = divmod(i, Wp)
        dr = r - gr if r > gr else gr - r
        dc = c - gc if c > gc else gc - c
        if eight:
            return dr + dc + c_diag * (dr if dr < dc else dc)
        return float(dr + dc)

    INF = float("inf")
    gs = [INF] * n_cells
    parent = [-1] * n_cells
    closed = bytearray(n_cells)
    gs[s] = 0.0
    heap: list[tuple[float, float, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    h0 = h_of(s)
    push(heap, (h0, h0, s))
    while heap:
        _, _, cur = pop(heap)
        if closed[cur]:
            continue
        if cur == g_idx:
            return parent
        closed[cur] = 1
        gcur = gs[cur]
        for off, cost in orth:
            n = cur + off
            if ok[n] and not closed[n]:
                ng = gcur + cost
                if ng < gs[n]:
                    gs[n] = ng
                    parent[n] = cur
                    h = h_of(n)
                    push(heap, (ng + h, h, n))
        if eight:
            for off, o1, o2 in diag:  # a diagonal step only past two free cells
                n = cur + off
                if ok[n] and not closed[n] and ok[cur + o1] and ok[cur + o2]:
                    ng = gcur + SQRT2
                    if ng < gs[n]:
                        gs[n] = ng
                        parent[n] = cur
                        h = h_of(n)
                        push(heap, (ng + h, h, n))
    return None
