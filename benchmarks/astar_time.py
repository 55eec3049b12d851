"""A* time on a generated 500 x 400 plan between opposite corners.

    python benchmarks/astar_time.py [--seeds 0 1 2]
"""

import argparse
import time

import numpy as np

from floorplans import generate_floorplan  # noqa: E402
from planner import astar, free_mask, path_length  # noqa: E402


def corner_cells(allowed):
    cells = np.argwhere(allowed)
    H, W = allowed.shape
    a = cells[np.argmin((cells ** 2).sum(axis=1))]
    b = cells[np.argmin(((cells - [H - 1, W - 1]) ** 2).sum(axis=1))]
    return tuple(int(v) for v in a), tuple(int(v) for v in b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for seed in a.seeds:
        img = generate_floorplan(500, 400, seed=seed, num_rooms=8, num_obstacles=3)
        grid = img > 0.5
        for conn, clearance in ((8, 0.0), (8, 5.0), (4, 0.0)):
            start, goal = corner_cells(free_mask(grid, clearance))
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                path = astar(grid, start, goal, connectivity=conn, clearance=clearance)
                ts.append(time.perf_counter() - t)
            print(f"seed {seed} {conn}-connected clearance {clearance:3.0f}: {start} -> {goal} "
                  f"{len(path):4d} cells, length {path_length(path):7.1f} px, best {min(ts):.3f} s")


if __name__ == "__main__":
    main()
