import numpy as np
import pytest
import torch

from floorplans import generate_floorplan
from lidar import (
    Lidar2D,
    OnlineTrajectoryLidarDataset,
    RandomPoseLidarDataset,
    ScanError,
    TrajectoryLidarDataset,
    lidar_to_pixel,
    normalized_to_lidar,
    pixel_to_lidar,
    trajectory_from_waypoints,
)

WALL_COL = 300  # wall pixels from this column on: the wall face is at x = WALL_COL - nx / 2


def wall_plan(nx=500, ny=400):
    img = np.zeros((ny, nx))
    img[:, WALL_COL:] = 1.0
    return img


def make_lidar(img, **kw):
    args = dict(num_beams=20, beam_length=0.2, beam_samps=25, samp_distribution_factor=1.0,
                collision_samps=50, fine_samps=3, border_width=0)
    args.update(kw)
    return Lidar2D(img, **args)


@pytest.mark.parametrize("pose", [(0.0, 0.0), (20.3, -31.7), (-37.0, 55.5), (45.0, 10.0)])
def test_hit_distances_match_analytic_wall(pose):
    img = wall_plan()
    lid = make_lidar(img, num_beams=36)
    x_wall = WALL_COL - img.shape[1] / 2.0
    step = lid.max_range / lid.collision_samps
    d = lid.hit_distances(np.array([pose]))[0]
    cos = np.cos(lid.angles)
    with np.errstate(divide="ignore"):
        exact = np.where(cos > 1e-12, (x_wall - pose[0]) / cos, np.inf)
    hit = exact <= lid.max_range - step
    miss = exact > lid.max_range + step
    assert hit.any() and miss.any()
    np.testing.assert_array_less(np.abs(d[hit] - exact[hit]), step)
    np.testing.assert_allclose(d[miss], lid.max_range)


def test_points_stop_at_first_wall_and_are_free_before_it():
    img = wall_plan()
    lid = make_lidar(img, num_beams=24)
    x_wall = WALL_COL - img.shape[1] / 2.0
    step = lid.max_range / lid.collision_samps
    pose = np.array([10.0, -5.0])
    pts = lid.scan(pose, round_density=True).reshape(lid.num_beams, lid.beam_samps, 3)
    assert np.all(pts[:, :, 0] <= x_wall + step)
    cos = np.cos(lid.angles)
    with np.errstate(divide="ignore"):
        exact = np.where(cos > 1e-12, (x_wall - pose[0]) / cos, np.inf)
    dist = np.hypot(pts[:, :, 0] - pose[0], pts[:, :, 1] - pose[1])
    before = dist < exact[:, None] - 1.0
    assert before.sum() > 100
    assert np.all(pts[:, :, 2][before] == 0.0)
    hit = exact <= lid.max_range - step
    assert np.all(pts[hit, -1, 2] == 1.0)  # the last point of a beam that hits lies in the wall
    assert np.all(pts[~hit, :, 2] == 0.0)
    # beam points are spaced t ** factor from the robot to the hit
    np.testing.assert_allclose(dist[0] / dist[0, -1], np.linspace(0, 1, lid.beam_samps), atol=1e-9)


def test_sample_distribution_factor():
    lid = make_lidar(wall_plan(), samp_distribution_factor=2.0)
    pts = lid.scan(np.zeros(2)).reshape(lid.num_beams, lid.beam_samps, 3)
    dist = np.hypot(pts[..., 0], pts[..., 1])
    np.testing.assert_allclose(dist[3] / dist[3, -1], np.linspace(0, 1, lid.beam_samps) ** 2, atol=1e-9)


def test_vectorized_scans_equal_reference_loop():
    img = generate_floorplan(300, 240, seed=4, num_obstacles=2)
    lid = make_lidar(img, border_width=5, num_beams=12, collision_samps=40)
    ds = RandomPoseLidarDataset(lid, 6, seed=1, round_density=False)
    for k, p in enumerate(ds.positions):
        ref = lid.scan_reference(p)
        got = lid.scan(p)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
        s, e = ds.scan_ranges[k]
        np.testing.assert_allclose(ds.points[s:e].numpy(), ref, atol=1e-4)
        np.testing.assert_allclose(lid.scan(p, clipped=True), lid.scan_reference(p, clipped=True), atol=1e-12)


def test_scan_many_stacks_scans_with_ranges():
    img = generate_floorplan(300, 240, seed=2)
    lid = make_lidar(img, border_width=3)
    poses = RandomPoseLidarDataset(lid, 9, seed=3).positions
    lid.chunk_size = 4
    for clipped in (False, True):
        pts, ranges = lid.scan_many(poses, clipped=clipped)
        assert ranges.shape == (9, 2) and ranges[0, 0] == 0 and ranges[-1, 1] == len(pts)
        np.testing.assert_array_equal(ranges[1:, 0], ranges[:-1, 1])
        for k, p in enumerate(poses):
            np.testing.assert_array_equal(pts[ranges[k, 0]:ranges[k, 1]], lid.scan(p, clipped=clipped))


def test_clipped_scan_returns_coarse_samples_up_to_first_hit():
    img = wall_plan()
    lid = make_lidar(img)
    pose = np.array([0.0, 0.0])
    pts = lid.scan(pose, clipped=True)
    step = lid.max_range / lid.collision_samps
    d = np.hypot(pts[:, 0], pts[:, 1])
    # coarse samples lie at multiples of the coarse spacing
    np.testing.assert_allclose(d / step, np.round(d / step), atol=1e-9)
    # a new beam starts where the distance falls back to one coarse step
    starts = np.nonzero(np.isclose(d, step))[0]
    assert len(starts) == lid.num_beams
    for s, e in zip(starts, list(starts[1:]) + [len(pts)]):
        dens = pts[s:e, 2]
        assert np.all(dens[:-1] < 0.5)
        assert dens[-1] >= 0.5 or e - s == lid.collision_samps


def test_errors_for_poses_in_walls_or_outside():
    lid = make_lidar(wall_plan(), border_width=10)
    with pytest.raises(ScanError, match="inside a wall"):
        lid.scan(np.array([100.0, 0.0]))
    with pytest.raises(ScanError, match="inside a wall"):
        lid.scan(np.array([-245.0, 0.0]))  # in the border
    with pytest.raises(ScanError, match="outside the image"):
        lid.scan(np.array([0.0, 900.0]))
    with pytest.raises(ScanError, match="pose 1"):
        lid.scan_many(np.array([[0.0, 0.0], [120.0, 3.0]]))


def test_density_and_pixel_centres():
    img = generate_floorplan(200, 160, seed=1)
    lid = make_lidar(img)
    assert lid.xs.shape == (200,) and lid.ys.shape == (160,)
    assert lid.xs[0] == -99.5 and lid.ys[-1] == 79.5
    X, Y = np.meshgrid(lid.xs, lid.ys)
    np.testing.assert_allclose(lid.density(X, Y), img, atol=1e-6)
    rc = np.array([[3, 7], [100, 150]])
    np.testing.assert_allclose(lidar_to_pixel(pixel_to_lidar(rc, img.shape), img.shape), rc)
    assert lid.density(1000.0, 0.0) == 1.0


def test_trajectory_from_waypoints():
    shape = (400, 500)
    w = np.array([[-0.5, -0.5], [0.5, -0.4], [0.4, 0.5], [-0.3, 0.3]])
    t = trajectory_from_waypoints(w, 10, shape)
    assert t.shape == (31, 2)
    np.testing.assert_allclose(t[::10], normalized_to_lidar(w, shape), atol=1e-12)
    closed = np.concatenate([w, w[:1]])
    tc = trajectory_from_waypoints(closed, 10, shape)
    assert tc.shape == (40, 2)
    np.testing.assert_allclose(tc[::10], normalized_to_lidar(w, shape), atol=1e-12)
    # periodic: the step from the last pose to the first is as small as the others
    steps = np.hypot(*np.diff(np.concatenate([tc, tc[:1]]), axis=0).T)
    assert steps[-1] < 2 * np.median(steps)


def test_random_pose_dataset():
    img = generate_floorplan(300, 240, seed=0, num_obstacles=2)
    lid = make_lidar(img, border_width=4)
    ds = RandomPoseLidarDataset(lid, 50, seed=7)
    assert len(ds) == 50 * 20 * 25
    assert ds.points.dtype == torch.float32
    x, y = ds[3]
    assert x.shape == (2,) and y.shape == (1,)
    assert set(np.unique(ds.targets.numpy())) <= {0.0, 1.0}
    assert lid.is_free(ds.positions).all()
    ds2 = RandomPoseLidarDataset(lid, 50, seed=7)
    assert torch.equal(ds.points, ds2.points)
    ds3 = RandomPoseLidarDataset(lid, 50, seed=8, round_density=False, clipped=True, dtype=torch.float64)
    assert ds3.points.dtype == torch.float64 and not torch.equal(ds3.points[:10, :2].float(), ds.points[:10, :2])


def test_trajectory_and_online_datasets():
    img = generate_floorplan(300, 240, seed=0)
    lid = make_lidar(img, border_width=4)
    free = np.argwhere(img == 0)
    # a straight horizontal corridor-free segment: pick two poses in the same room via the planner
    from planner import follow_waypoints, path_to_waypoints

    a, b = free[len(free) // 3], free[2 * len(free) // 3]
    path = follow_waypoints(img > 0.5, [a, b], clearance=3.0, closed=True)
    w = path_to_waypoints(img > 0.5, path, clearance=3.0, spacing=10.0, closed=True)
    tr = TrajectoryLidarDataset(lid, w, 5)
    np.testing.assert_allclose(tr.positions, trajectory_from_waypoints(w, 5, img.shape))
    assert len(tr) == len(tr.positions) * 500
    P = tr.num_poses
    on = OnlineTrajectoryLidarDataset(lid, w, 5, num_scans_in_window=7, window_step=1)  # sliding
    assert torch.equal(on.all_points, tr.points)
    assert len(on) == 7 * 500
    np.testing.assert_array_equal(on.current_position, tr.positions[6])
    np.testing.assert_array_equal(on.advance(), tr.positions[7])
    on.reset(P - 3)  # wraps around the end of the trajectory
    idx = on.window_indices()
    np.testing.assert_array_equal(idx, [P - 3, P - 2, P - 1, 0, 1, 2, 3])
    expect = torch.cat([tr.scan_points(i) for i in idx])
    assert torch.equal(on.window_points(), expect)
    assert torch.equal(on.inputs, expect[:, :2]) and torch.equal(on.targets, expect[:, 2:3])
    np.testing.assert_array_equal(on.current_position, tr.positions[3])
    on.advance(7)
    np.testing.assert_array_equal(on.window_indices()[0], 4)
    # default: the original's non-overlapping windows with the short tail, then pose 0 again
    from tests.helpers.density import original_windows
    jump = OnlineTrajectoryLidarDataset(lid, w, 5, num_scans_in_window=7)
    for poses in original_windows(P, 7, P // 7 + 3):
        np.testing.assert_array_equal(jump.window_indices(), poses)
        np.testing.assert_array_equal(jump.current_position, tr.positions[poses[-1]])
        assert len(jump) == len(poses) * 500
        jump.advance()


def test_trajectory_inside_wall_is_an_error():
    img = wall_plan()
    lid = make_lidar(img)
    w = np.array([[-0.5, 0.0], [0.8, 0.0]])
    with pytest.raises(ScanError, match="inside a wall"):
        TrajectoryLidarDataset(lid, w, 5)
    with pytest.warns(UserWarning):
        ds = TrajectoryLidarDataset(lid, w, 5, on_invalid="skip")
    assert lid.is_free(ds.positions).all()


@pytest.mark.parametrize("grey", [False, True])
def test_density_shortcuts_match_the_exact_spline(grey):
    from scipy import ndimage

    img = generate_floorplan(240, 200, seed=3, num_obstacles=2).astype(np.float64)
    if grey:
        img = ndimage.gaussian_filter(img, 2.0)
    lid = make_lidar(img)
    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 120, 200000)
    y = rng.uniform(-100, 100, 200000)
    exact = ndimage.map_coordinates(img, [y + 100 - 0.5, x + 120 - 0.5], order=3, mode="nearest")
    exact = np.clip(exact, 0, 1)
    np.testing.assert_allclose(lid.density(x, y), exact, atol=1e-6)
    np.testing.assert_array_equal(lid.hits(x, y), exact >= 0.5)
