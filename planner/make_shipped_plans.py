"""Regenerate the floor plans shipped with the repository and their robot waypoints.

    python -m planner.make_shipped_plans [--out DIR] [--only paper|demo]

Writes ``<DIR>/paper_plan``, ``<DIR>/office_plan`` and ``<DIR>/demo_plan`` (default ``DIR`` = the ``floorplans`` package's folder), each with
``floor_img.png`` and three folders of waypoint files ``robot_0.npy`` ... ``robot_6.npy``:

* ``minimal_overlap/``: the rooms are split into 7 groups by angle around the building centre; each
  robot loops through the rooms of its own group.
* ``some_overlap/``: each robot loops through its group and the first room of the next group.
* ``tight_paths/``: each robot runs a tight closed loop close to the walls of two rooms joined by a door.

Each file is a (K, 2) float64 array of normalized ``(x, y)`` (x = column, y = row, see ``lidar.coords``);
the first and last waypoints are equal (closed loops) and the cubic spline through them
(``lidar.trajectory_from_waypoints``) keeps at least half the robot clearance from walls and from a
30 pixel image border. The output is deterministic.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import numpy as np

import floorplans
from floorplans.generator import generate_layout
from floorplans.io import save_floorplan
from planner import downsample_grid, follow_waypoints, free_mask, path_to_waypoints

NUM_ROBOTS = 7
STYLES = ("minimal_overlap", "some_overlap", "tight_paths")
PACKAGE_DIR = os.path.dirname(os.path.abspath(floorplans.__file__))

PLANS: dict[str, dict[str, Any]] = {
    "paper": dict(
        folder="paper_plan",
        layout=dict(width=2100, height=1600, seed=3, num_rooms=14, outside_corner=True, num_obstacles=6,
                    outside_margin=40),
        factor=4,            # plan on a grid 4x coarser than the image (block maximum: conservative)
        clearance=22.0,      # robot clearance in image pixels
        spacing=60.0,        # waypoint spacing in image pixels
        border=30,
    ),
    # a second building at the paper's scale (another seed and room count): tuned settings must carry over to it
    "office": dict(
        folder="office_plan",
        layout=dict(width=2100, height=1600, seed=11, num_rooms=16, outside_corner=False, num_obstacles=8,
                    outside_margin=40),
        factor=4,
        clearance=22.0,
        spacing=60.0,
        border=30,
    ),
    "demo": dict(
        folder="demo_plan",
        layout=dict(width=500, height=400, seed=1, num_rooms=8, num_obstacles=3),
        factor=1,
        clearance=6.0,
        spacing=15.0,
        border=30,
    ),
}


def _coarse_grid(img, factor, border):
    blocked = np.asarray(img) >= 0.5
    if border > 0:
        blocked[:border, :] = True
        blocked[-border:, :] = True
        blocked[:, :border] = True
        blocked[:, -border:] = True
    return downsample_grid(blocked, factor)


def _room_rect(room, factor):
    return (math.ceil(room.r0 / factor), room.r1 // factor, math.ceil(room.c0 / factor), room.c1 // factor)


def _nearest_allowed(allowed, rect, target):
    r0, r1, c0, c1 = rect
    sub = allowed[r0:r1, c0:c1]
    cells = np.argwhere(sub)
    if len(cells) == 0:
        return None
    cells = cells + np.array([r0, c0])
    d = ((cells - np.asarray(target, dtype=np.float64)) ** 2).sum(axis=1)
    return tuple(int(v) for v in cells[int(np.argmin(d))])


def _room_visits(allowed, rect, frac, prev=None):
    """Corners of the part of a room a robot may reach (bounding box of its allowed cells), moved inwards
    by ``frac`` of the box size, in loop order starting nearest to ``prev``."""
    r0, r1, c0, c1 = rect
    cells = np.argwhere(allowed[r0:r1, c0:c1])
    if len(cells) == 0:
        return []
    cells = cells + np.array([r0, c0])
    (ra, ca), (rb, cb) = cells.min(axis=0), cells.max(axis=0)
    dr, dc = frac * (rb - ra), frac * (cb - ca)
    corners = [(ra + dr, ca + dc), (ra + dr, cb - dc), (rb - dr, cb - dc), (rb - dr, ca + dc)]
    pts = []
    for cr in corners:
        p = _nearest_allowed(allowed, rect, cr)
        if p is not None and p not in pts:
            pts.append(p)
    if prev is not None and pts:
        k = int(np.argmin([(p[0] - prev[0]) ** 2 + (p[1] - prev[1]) ** 2 for p in pts]))
        pts = pts[k:] + pts[:k]
    return pts


def _groups(rooms, center, k):
    """Split rooms into k groups of consecutive rooms by angle around ``center``."""
    ang = [math.atan2(r.center[0] - center[0], r.center[1] - center[1]) for r in rooms]
    order = [rooms[i] for i in np.argsort(ang, kind="stable")]
    return [list(g) for g in np.array_split(np.array(order, dtype=object), k)]


def _loop(grid, allowed, visits, clearance, spacing):
    path = follow_waypoints(grid, visits, clearance=clearance, closed=True, allowed=allowed)
    return path_to_waypoints(grid, path, clearance=clearance, spacing=spacing, closed=True, allowed=allowed,
                             min_clearance=clearance / 2.0)


def make_plan(name: str, out_dir: str, verbose: bool = True) -> dict:
    """Generate one shipped plan (``"paper"`` or ``"demo"``) into ``out_dir``; returns {style: [waypoints]}."""
    spec = PLANS[name]
    plan = generate_layout(**spec["layout"])
    folder = os.path.join(out_dir, spec["folder"])
    os.makedirs(folder, exist_ok=True)
    save_floorplan(os.path.join(folder, "floor_img.png"), plan.image)

    f = spec["factor"]
    grid = _coarse_grid(plan.image, f, spec["border"])
    cl = spec["clearance"] / f
    sp = spec["spacing"] / f
    allowed = free_mask(grid, cl)
    rooms = [r for r in plan.rooms if r.kind == "room"]
    b = plan.building
    center = ((b[0] + b[1]) / 2.0, (b[2] + b[3]) / 2.0)
    groups = _groups(rooms, center, NUM_ROBOTS)
    graph = plan.room_graph()

    result = {}
    for style in STYLES:
        wps = []
        for r in range(NUM_ROBOTS):
            if style == "minimal_overlap":
                members = groups[r]
                frac = 0.25
            elif style == "some_overlap":
                members = groups[r] + groups[(r + 1) % NUM_ROBOTS][:1]
                frac = 0.18
            else:
                a = groups[r][0]
                nbrs = sorted(n for n in graph.neighbors(a.index) if plan.rooms[n].kind == "room")
                if not nbrs:
                    nbrs = sorted(graph.neighbors(a.index))
                members = [a, plan.rooms[nbrs[r % len(nbrs)]]]
                frac = 0.03
            visits: list = []
            for room in members:
                visits += _room_visits(allowed, _room_rect(room, f), frac, visits[-1] if visits else None)
            wps.append(_loop(grid, allowed, visits, cl, sp))
        sub = os.path.join(folder, style)
        os.makedirs(sub, exist_ok=True)
        for old in os.listdir(sub):
            if old.endswith(".npy"):
                os.remove(os.path.join(sub, old))
        for r, w in enumerate(wps):
            np.save(os.path.join(sub, f"robot_{r}.npy"), w)
        result[style] = wps
        if verbose:
            print(f"{spec['folder']}/{style}: waypoints per robot {[len(w) for w in wps]}")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=PACKAGE_DIR, help="output folder (default: the floorplans package)")
    ap.add_argument("--only", choices=sorted(PLANS), default=None, help="generate one plan only")
    args = ap.parse_args(argv)
    for name in ([args.only] if args.only else ["demo", "paper", "office"]):
        make_plan(name, args.out)


if __name__ == "__main__":
    main()
