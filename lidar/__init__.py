"""2D lidar simulation on floor plan images and PyTorch datasets of scans.

Coordinates (see :mod:`lidar.coords`): lidar ``(x, y)`` are pixel units centred on the image, ``x``
along columns, ``y`` along rows (``y = -ny/2`` at row 0); normalized coordinates divide them by
``(nx/2, ny/2)``.
"""

from .coords import (
    lidar_to_normalized,
    lidar_to_pixel,
    normalized_to_lidar,
    normalized_to_pixel,
    pixel_to_lidar,
    pixel_to_normalized,
    trajectory_from_waypoints,
)
from .datasets import (
    OnlineTrajectoryLidarDataset,
    RandomPoseLidarDataset,
    ScanDataset,
    TrajectoryLidarDataset,
    random_free_poses,
)
from .lidar2d import Lidar2D, ScanError

__all__ = [
    "Lidar2D",
    "ScanError",
    "ScanDataset",
    "RandomPoseLidarDataset",
    "TrajectoryLidarDataset",
    "OnlineTrajectoryLidarDataset",
    "random_free_poses",
    "trajectory_from_waypoints",
    "pixel_to_lidar",
    "lidar_to_pixel",
    "normalized_to_lidar",
    "lidar_to_normalized",
    "pixel_to_normalized",
    "normalized_to_pixel",
]
