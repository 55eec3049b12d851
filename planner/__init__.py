"""Path planning on occupancy grids: A*, waypoint following, smooth spline trajectories, random walks.

Grids are 2D arrays with True/1 = blocked; cells are ``(row, col)``. Normalized coordinates match
:mod:`lidar.coords` exactly: ``x = (col + 0.5 - nx/2) / (nx/2)``, ``y = (row + 0.5 - ny/2) / (ny/2)``.
"""

from .astar import NoPathError, astar, downsample_grid, free_mask, path_length
from .paths import (
    cell_to_normalized,
    cells_to_lidar,
    densify_polyline,
    follow_waypoints,
    line_of_sight,
    normalized_to_cell,
    path_to_waypoints,
    random_walk,
    shorten_path,
    spline_clearance,
)

__all__ = [
    "NoPathError",
    "astar",
    "free_mask",
    "downsample_grid",
    "path_length",
    "follow_waypoints",
    "line_of_sight",
    "shorten_path",
    "densify_polyline",
    "path_to_waypoints",
    "spline_clearance",
    "random_walk",
    "cell_to_normalized",
    "normalized_to_cell",
    "cells_to_lidar",
]
