"""PyTorch datasets of lidar scans: ``(x, y) -> density`` samples.

Every dataset holds its samples as one tensor ``points`` of shape (M, 3) (``x, y, density`` in lidar
coordinates) and yields ``(points[i, :2], points[i, 2:3])``. ``inputs`` and ``targets`` are the two
column views, for fast batching without a DataLoader.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from .coords import pixel_to_lidar, trajectory_from_waypoints
from .lidar2d import Lidar2D

__all__ = [
    "ScanDataset",
    "RandomPoseLidarDataset",
    "TrajectoryLidarDataset",
    "OnlineTrajectoryLidarDataset",
    "random_free_poses",
]


def random_free_poses(lidar: Lidar2D, num_poses: int, seed=0, min_clearance: float = 1.0) -> np.ndarray:
    """(num_poses, 2) random lidar poses, uniform over the free space of ``lidar``'s map.

    A pose is kept when its density is below the lidar's threshold and its pixel is at least
    ``min_clearance`` pixels from the nearest wall pixel.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    free = lidar.img < lidar.threshold
    dist = ndimage.distance_transform_edt(free)
    cells = np.argwhere(dist >= max(min_clearance, 1.0))
    if len(cells) == 0:
        raise ValueError("the map has no free space to place poses in")
    out = np.zeros((0, 2))
    need = int(num_poses)
    for _ in range(100):
        if need <= 0:
            break
        idx = rng.integers(0, len(cells), size=2 * need + 16)
        rc = cells[idx] + rng.uniform(-0.5, 0.5, size=(len(idx), 2))
        xy = pixel_to_lidar(rc, lidar.shape)
        xy = xy[lidar.is_free(xy)][:need]
        out = np.concatenate([out, xy], axis=0)
        need = int(num_poses) - len(out)
    if need > 0:
        raise RuntimeError("could not sample enough free poses")
    return out


class ScanDataset(Dataset):
    """Scans from given poses. Base class of the datasets below.

    Attributes:
        points: (M, 3) tensor of ``(x, y, density)``.
        inputs, targets: views ``points[:, :2]`` and ``points[:, 2:3]``.
        positions: (K, 2) float64 array, the poses in lidar coordinates.
        scan_ranges: (K, 2) int64 array, rows ``scan_ranges[k, 0]:scan_ranges[k, 1]`` of ``points``
            come from pose ``k``.
        scans_per_pose: (K,) number of points of each pose's scan.
    """

    def __init__(self, lidar: Lidar2D, positions, round_density: bool = True, clipped: bool = False,
                 dtype: torch.dtype = torch.float32):
        self.lidar = lidar
        self.round_density = bool(round_density)
        self.clipped = bool(clipped)
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        pts, ranges = lidar.scan_many(self.positions, clipped=clipped, round_density=round_density)
        self.scan_ranges = ranges
        self.scans_per_pose = ranges[:, 1] - ranges[:, 0]
        self.points = torch.as_tensor(pts, dtype=dtype)

    @property
    def inputs(self) -> torch.Tensor:
        return self.points[:, :2]

    @property
    def targets(self) -> torch.Tensor:
        return self.points[:, 2:3]

    @property
    def num_poses(self) -> int:
        return len(self.positions)

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, idx):
        return self.points[idx, :2], self.points[idx, 2:3]

    def scan_points(self, k: int) -> torch.Tensor:
        """The (m, 3) points of pose ``k``'s scan."""
        s, e = self.scan_ranges[k]
        return self.points[s:e]


class RandomPoseLidarDataset(ScanDataset):
    """Scans from ``num_scans`` random free poses (uniform over free space, seeded).

    ``RandomPoseLidarDataset(lidar, num_scans, seed=0, round_density=True, clipped=False)``
    """

    def __init__(self, lidar: Lidar2D, num_scans: int, seed=0, round_density: bool = True,
                 clipped: bool = False, dtype: torch.dtype = torch.float32, min_clearance: float = 1.0):
        positions = random_free_poses(lidar, num_scans, seed=seed, min_clearance=min_clearance)
        super().__init__(lidar, positions, round_density=round_density, clipped=clipped, dtype=dtype)


def _trajectory_poses(lidar: Lidar2D, waypoints, spline_res, on_invalid: str):
    positions = trajectory_from_waypoints(waypoints, spline_res, lidar.shape)
    ok = lidar.is_free(positions)
    if not ok.all():
        if on_invalid == "skip":
            warnings.warn(f"{int((~ok).sum())} of {len(ok)} trajectory poses are inside walls; skipped them")
            positions = positions[ok]
        elif on_invalid == "raise":
            lidar.check_poses(positions)
        else:
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    return positions


class TrajectoryLidarDataset(ScanDataset):
    """All scans along a robot's trajectory.

    ``TrajectoryLidarDataset(lidar, waypoints, spline_res, round_density=True, clipped=False)``

    ``waypoints`` are (n, 2) normalized ``(x, y)`` in [-1, 1]^2; the poses are
    :func:`lidar.trajectory_from_waypoints` ``(waypoints, spline_res, lidar.shape)``, one scan each.
    A pose inside a wall raises :class:`lidar.ScanError` (``on_invalid="skip"`` drops it instead).
    """

    def __init__(self, lidar: Lidar2D, waypoints, spline_res: int, round_density: bool = True,
                 clipped: bool = False, dtype: torch.dtype = torch.float32, on_invalid: str = "raise"):
        self.waypoints = np.asarray(waypoints, dtype=np.float64).reshape(-1, 2)
        self.spline_res = int(spline_res)
        positions = _trajectory_poses(lidar, self.waypoints, spline_res, on_invalid)
        super().__init__(lidar, positions, round_density=round_density, clipped=clipped, dtype=dtype)


class OnlineTrajectoryLidarDataset(ScanDataset):
    """A robot's view of its trajectory through a window of consecutive poses.

    ``OnlineTrajectoryLidarDataset(lidar, waypoints, spline_res, num_scans_in_window, round_density=True)``

    The scans of every trajectory pose are computed once. The window holds the poses
    ``start, start + 1, ...`` and :meth:`advance` moves it on. With ``window_step=None`` (the default)
    windows of ``num_scans_in_window`` poses do not overlap: they start at pose
    0, the last one of the loop is the short tail ``[k * num_scans_in_window, P)``, then the window
    starts again at pose 0. With an integer ``window_step`` the window is always
    ``num_scans_in_window`` poses long (indices modulo the number of poses) and slides on by
    ``window_step`` poses (1: the original research code's rule). The robot's current position is the
    window's last pose.

    While a window is active, ``len(ds)``/``ds[i]`` index the window's points only;
    :meth:`window_points` returns them as one (M, 3) tensor (cached per window), and ``inputs`` /
    ``targets`` are its column views. The whole trajectory stays in ``points`` / ``all_points``.
    """

    def __init__(self, lidar: Lidar2D, waypoints, spline_res: int, num_scans_in_window: int,
                 round_density: bool = True, clipped: bool = False, dtype: torch.dtype = torch.float32,
                 start_index: int = 0, window_step: int | None = None, on_invalid: str = "raise"):
        self.waypoints = np.asarray(waypoints, dtype=np.float64).reshape(-1, 2)
        self.spline_res = int(spline_res)
        positions = _trajectory_poses(lidar, self.waypoints, spline_res, on_invalid)
        if len(positions) == 0:
            raise ValueError("the trajectory has no poses")
        super().__init__(lidar, positions, round_density=round_density, clipped=clipped, dtype=dtype)
        self.num_scans_in_window = int(num_scans_in_window)
        if self.num_scans_in_window < 1:
            raise ValueError("num_scans_in_window must be >= 1")
        self.window_step = None if window_step is None else int(window_step)
        self.start_index = int(start_index) % self.num_poses
        self._cache_key: int | None = None
        self._cache: torch.Tensor | None = None

    @property
    def all_points(self) -> torch.Tensor:
        return self.points

    @property
    def window_length(self) -> int:
        """Poses in the current window (shorter only for the tail window of the default rule)."""
        if self.window_step is None:
            return min(self.num_scans_in_window, self.num_poses - self.start_index)
        return self.num_scans_in_window

    def window_indices(self) -> np.ndarray:
        """Pose indices of the current window, oldest first."""
        return (self.start_index + np.arange(self.window_length)) % self.num_poses

    @property
    def current_index(self) -> int:
        return int((self.start_index + self.window_length - 1) % self.num_poses)

    @property
    def current_position(self) -> np.ndarray:
        """(2,) lidar coordinates of the robot: the last pose of the window."""
        return self.positions[self.current_index].copy()

    def advance(self, step: int | None = None) -> np.ndarray:
        """Move the window on (by ``step`` poses when given, else by the dataset's rule); returns the
        new position."""
        if step is None and self.window_step is None:
            after = self.start_index + self.num_scans_in_window
            self.start_index = 0 if after >= self.num_poses else after
        else:
            step = self.window_step if step is None else int(step)
            assert step is not None  # a window_step is set when no step is given
            self.start_index = (self.start_index + step) % self.num_poses
        return self.current_position

    def reset(self, start_index: int = 0) -> None:
        self.start_index = int(start_index) % self.num_poses

    def window_points(self) -> torch.Tensor:
        """(M, 3) tensor of the current window's points, poses in window order."""
        key = self.start_index
        if self._cache_key == key and self._cache is not None:
            return self._cache
        P, W, s = self.num_poses, self.window_length, self.start_index
        r = self.scan_ranges
        pieces = []
        remaining, pos = W, s
        while remaining > 0:
            n = min(remaining, P - pos)
            pieces.append(self.points[r[pos, 0] : r[pos + n - 1, 1]])
            remaining -= n
            pos = (pos + n) % P
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        self._cache_key, self._cache = key, out
        return out

    @property
    def inputs(self) -> torch.Tensor:
        return self.window_points()[:, :2]

    @property
    def targets(self) -> torch.Tensor:
        return self.window_points()[:, 2:3]

    def __len__(self) -> int:
        return self.window_points().shape[0]

    def __getitem__(self, idx):
        w = self.window_points()
        return w[idx, :2], w[idx, 2:3]
