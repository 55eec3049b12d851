import math

import networkx as nx
import numpy as np
import pytest
from scipy import ndimage

import planner
from lidar import Lidar2D, normalized_to_lidar, trajectory_from_waypoints
from planner import NoPathError, astar, follow_waypoints, free_mask, path_length


def grid_graph(allowed, connectivity):
    g = nx.Graph()
    H, W = allowed.shape
    for r, c in np.argwhere(allowed):
        g.add_node((r, c))
        for dr, dc in ((0, 1), (1, 0)):
            rr, cc = r + dr, c + dc
            if rr < H and cc < W and allowed[rr, cc]:
                g.add_edge((r, c), (rr, cc), weight=1.0)
        if connectivity == 8:
            for dr, dc in ((1, 1), (1, -1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < H and 0 <= cc < W and allowed[rr, cc] and allowed[r, cc] and allowed[rr, c]:
                    g.add_edge((r, c), (rr, cc), weight=math.sqrt(2))
    return g


def check_path(path, allowed, connectivity):
    assert allowed[path[:, 0], path[:, 1]].all()
    steps = np.abs(np.diff(path, axis=0))
    assert steps.max() <= 1
    if connectivity == 4:
        assert np.all(steps.sum(axis=1) == 1)


@pytest.mark.parametrize("seed", range(20))
def test_astar_matches_networkx(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(15, 40, size=2)
    grid = rng.random((H, W)) < rng.uniform(0.15, 0.35)
    connectivity = 8 if seed % 3 else 4
    clearance = 1.5 if seed % 5 == 0 else 0.0
    allowed = free_mask(grid, clearance)
    g = grid_graph(allowed, connectivity)
    comps = sorted(nx.connected_components(g), key=len, reverse=True)
    big = sorted(comps[0])
    start, goal = big[0], big[-1]
    path = astar(grid, start, goal, connectivity=connectivity, clearance=clearance)
    assert tuple(path[0]) == start and tuple(path[-1]) == goal
    check_path(path, allowed, connectivity)
    expect = nx.shortest_path_length(g, start, goal, weight="weight")
    assert path_length(path) == pytest.approx(expect, abs=1e-9)
    if len(comps) > 1:
        other = sorted(comps[1])[0]
        with pytest.raises(NoPathError, match="unreachable"):
            astar(grid, start, other, connectivity=connectivity, clearance=clearance)


def test_clearance_is_respected():
    grid = np.zeros((60, 80), dtype=bool)
    grid[:45, 30:34] = True
    grid[15:, 55:58] = True
    path = astar(grid, (5, 5), (55, 75), clearance=4.0)
    dist = ndimage.distance_transform_edt(~grid)
    assert not grid[path[:, 0], path[:, 1]].any()
    assert dist[path[:, 0], path[:, 1]].min() >= 4.0
    plain = astar(grid, (5, 5), (55, 75))
    assert dist[plain[:, 0], plain[:, 1]].min() < 4.0
    assert path_length(path) >= path_length(plain)


def test_unreachable_and_invalid_goals():
    grid = np.zeros((30, 30), dtype=bool)
    grid[:, 15] = True
    with pytest.raises(NoPathError, match="unreachable"):
        astar(grid, (3, 3), (3, 25))
    with pytest.raises(NoPathError, match="in a wall"):
        astar(grid, (3, 3), (3, 15))
    with pytest.raises(NoPathError, match="clearance"):
        astar(grid, (3, 3), (3, 13), clearance=3.0)
    with pytest.raises(NoPathError, match="outside the grid"):
        astar(grid, (3, 3), (40, 3))
    with pytest.raises(NoPathError, match="leg 1"):
        follow_waypoints(grid, [(3, 3), (20, 5), (5, 25)])


def test_diagonal_steps_do_not_cut_corners():
    grid = np.zeros((3, 3), dtype=bool)
    grid[0, 1] = grid[1, 0] = True
    with pytest.raises(NoPathError):
        astar(grid, (0, 0), (1, 1))
    assert len(astar(grid, (1, 1), (2, 2))) == 2


def test_follow_waypoints_and_smooth_spline_stay_free():
    grid = np.zeros((120, 160), dtype=bool)
    grid[[0, -1], :] = True
    grid[:, [0, -1]] = True
    grid[:80, 50:54] = True
    grid[40:, 105:109] = True
    wps = [(10, 10), (110, 80), (10, 150)]
    path = follow_waypoints(grid, wps, clearance=5.0, closed=True)
    for w in wps:
        assert (path == np.array(w)).all(axis=1).any()
    assert tuple(path[0]) == tuple(path[-1]) == wps[0]
    dist = ndimage.distance_transform_edt(~grid)
    assert dist[path[:, 0], path[:, 1]].min() >= 5.0
    short = planner.shorten_path(grid, path, clearance=5.0)
    assert len(short) < len(path) / 5
    w = planner.path_to_waypoints(grid, path, clearance=5.0, spacing=8.0, closed=True)
    assert np.all(w[0] == w[-1]) and np.abs(w).max() <= 1.0
    traj = trajectory_from_waypoints(w, 20, grid.shape)
    lid = Lidar2D(grid.astype(float), 8, 0.2, 5, 1.0, 10, 1)
    assert lid.is_free(traj).all()
    rc = np.stack([traj[:, 1] + 60 - 0.5, traj[:, 0] + 80 - 0.5])
    assert ndimage.map_coordinates(dist, rc, order=1).min() >= 2.5


def test_random_walk():
    grid = np.zeros((50, 60), dtype=bool)
    grid[20:24, :45] = True
    walk = planner.random_walk(grid, 6, clearance=2.0, max_step=30, seed=3)
    check_path(walk, free_mask(grid, 2.0), 8)
    again = planner.random_walk(grid, 6, clearance=2.0, max_step=30, seed=3)
    np.testing.assert_array_equal(walk, again)


def test_conversions_match_lidar():
    img = np.zeros((40, 70))
    img[10, 20] = 1.0
    img[33, 5] = 1.0
    lid = Lidar2D(img, 4, 0.2, 3, 1.0, 5, 1)
    cells = np.array([[10, 20], [33, 5], [0, 0], [39, 69]])
    xy_n = planner.cell_to_normalized(cells, img.shape)
    np.testing.assert_array_equal(planner.normalized_to_cell(xy_n, img.shape), cells)
    xy = normalized_to_lidar(xy_n, img.shape)
    np.testing.assert_allclose(xy, np.stack([lid.xs[cells[:, 1]], lid.ys[cells[:, 0]]], axis=1))
    np.testing.assert_allclose(lid.density(xy[:, 0], xy[:, 1]), img[cells[:, 0], cells[:, 1]], atol=1e-9)
    np.testing.assert_allclose(planner.cells_to_lidar(cells, img.shape), xy)


def test_downsample_grid_is_conservative():
    grid = np.zeros((8, 12), dtype=bool)
    grid[5, 2] = True
    small = planner.downsample_grid(grid, 4)
    assert small.shape == (2, 3) and small[1, 0] and small.sum() == 1
    # coarse cell centres map to the same normalized points as the centres of their pixel blocks
    np.testing.assert_allclose(planner.cell_to_normalized([[1, 0]], small.shape),
                               planner.cell_to_normalized([[5.5, 1.5]], grid.shape))
    with pytest.raises(ValueError):
        planner.downsample_grid(grid, 5)
