"""Implicit density mapping: every robot fits position -> occupancy density from its own lidar scans.

* :func:`fourier_net` is the paper's "Fourier" network as an ordinary ``nn.Sequential``
  (``Linear -> Sine -> ReLU -> (Linear -> ReLU)* -> Linear -> Sigmoid``) that the node stack runs with
  grouped kernels (:class:`Sine` declares itself element-wise).
* :class:`DensityProblem`: static data (each node's scan points), plus the mesh-grid metric.
* :class:`OnlineDensityProblem`: each robot sees a window of consecutive trajectory poses; when it
  has used the window once (an epoch) the window moves on. All nodes' windows live in one padded
  tensor, so a batch for every node is a gather (:class:`WindowSampler`). The robots' current
  positions are what the communication graph follows (:class:`optimizers.comm.links.FollowPositions`).
"""

from __future__ import annotations

import math
from typing import Sequence, cast

import numpy as np
import torch
from torch import nn

from foundation import state
from problems.base import SupervisedProblem
from problems.metrics import CONSENSUS_ERROR, FORWARD_PASS_COUNT, VALIDATION_LOSS
from problems.sampling import shuffle_keys

MESH_STRIDE = 8


class Sine(nn.Module):
    """``sin(scale * x)``, element-wise."""

    elementwise = True

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.scale * x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def fourier_net(shape: Sequence[int], scale: float = 1.0) -> nn.Sequential:
    """``shape = [in, first, hidden..., out]``: first layer ``relu(sin(scale * (W x + b)))`` with
    ``W ~ U(-sqrt(6/first), sqrt(6/first))`` (the original's ReLU after the sine), ReLU hidden layers
    and a sigmoid output."""
    shape = [int(s) for s in shape]
    if len(shape) < 3:
        raise ValueError(f"model.shape needs at least [in, first, out], got {shape}")
    first = nn.Linear(shape[0], shape[1])
    bound = math.sqrt(6.0 / shape[1])
    nn.init.uniform_(first.weight, -bound, bound)
    layers: list[nn.Module] = [first, Sine(scale), nn.ReLU()]
    for i in range(1, len(shape) - 2):
        layers += [nn.Linear(shape[i], shape[i + 1]), nn.ReLU()]
    layers += [nn.Linear(shape[-2], shape[-1]), nn.Sigmoid()]
    return nn.Sequential(*layers)


def mesh_grid(image_shape: tuple[int, int], stride: int = MESH_STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Lidar coordinates of every ``stride``-th pixel centre, (H' * W', 2) row-major, and (H', W')."""
    ny, nx_ = image_shape
    rows = np.arange(0, ny, stride)
    cols = np.arange(0, nx_, stride)
    ys = rows + 0.5 - ny / 2.0
    xs = cols + 0.5 - nx_ / 2.0
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return torch.as_tensor(pts, dtype=torch.float32), (len(rows), len(cols))


def observable_walls(image: np.ndarray, poses: np.ndarray, reach: float, border_width: int = 0,
                     stride: int = MESH_STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth for :func:`map_quality` on the mesh grid of ``image`` (walls >= 0.5).

    Returns ``wall`` and ``observable``, (H', W') booleans at every ``stride``-th pixel (the points of
    :func:`mesh_grid`): observable points lie within ``reach`` pixels of some pose in ``poses`` (lidar
    coordinates) and outside the ``border_width`` pixels added at the image edge.
    """
    from scipy.spatial import cKDTree

    ny, nx_ = image.shape
    rows, cols = np.arange(0, ny, stride), np.arange(0, nx_, stride)
    wall = image[np.ix_(rows, cols)] >= 0.5
    points, shape = mesh_grid(image.shape, stride)
    near = cKDTree(np.asarray(poses, dtype=np.float64).reshape(-1, 2)).query(
        points.double().numpy(), distance_upper_bound=reach)[0] <= reach
    inside_r = (rows >= border_width) & (rows < ny - border_width)
    inside_c = (cols >= border_width) & (cols < nx_ - border_width)
    observable = near.reshape(shape) & inside_r[:, None] & inside_c[None, :]
    return torch.as_tensor(wall), torch.as_tensor(observable)


def map_quality(maps: torch.Tensor, wall: torch.Tensor, observable: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per node: each map ``maps`` (N, H', W') thresholded at 0.5 against the ``wall`` truth on the
    ``observable`` points. ``balanced_accuracy`` = mean of wall recall and free recall (NaN for a class
    the area lacks is left out); ``wall_iou`` = |predicted & true walls| / |predicted | true walls|."""
    pred = (maps >= 0.5)[:, observable]  # (N, M)
    true = wall[observable].to(pred.device).unsqueeze(0)
    recalls = torch.stack([(pred & true).sum(1) / true.sum(), (~pred & ~true).sum(1) / (~true).sum()])
    return {"balanced_accuracy": recalls.nanmean(0),
            "wall_iou": (pred & true).sum(1) / (pred | true).sum(1)}


class DensityProblem(SupervisedProblem):
    """Nodes fit (x, y) -> density on their own scan points; validation on scans from random poses.

    With ``validation_loss`` come ``validation_loss_wall`` and ``validation_loss_free``: the mean loss on
    the validation points that are walls (density >= 0.5) and on those that are free. Free space makes
    up most of a scan, so the plain validation loss barely sees the walls.

    Extra metric ``mesh_grid_density``: every node's density on the image grid (every 8th pixel),
    (N, H/8, W/8), recorded with ``mesh_round`` at every evaluation, or only at the last round
    (``mesh_only_at_end``), or at the first evaluation at or after every multiple of ``mesh_every`` rounds
    and at the last one.
    Given ``map_truth = (wall, observable)`` (:func:`observable_walls`), the map quality of each node,
    ``map_balanced_accuracy`` and ``map_wall_iou`` (:func:`map_quality`), is recorded at every evaluation.
    """

    base_metrics: tuple[str, ...] = (FORWARD_PASS_COUNT, VALIDATION_LOSS, CONSENSUS_ERROR, "current_epoch",
                                     "train_loss_moving_average", "mesh_grid_density")
    recorded_with = {"validation_loss_wall": VALIDATION_LOSS, "validation_loss_free": VALIDATION_LOSS,
                     "map_balanced_accuracy": "mesh_grid_density", "map_wall_iou": "mesh_grid_density"}

    def __init__(self, *args, image_shape: tuple[int, int], mesh_only_at_end: bool = False,
                 mesh_every: int | None = None, total_rounds: int | None = None,
                 map_truth: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.map_truth = map_truth
        self.image_shape = cast(tuple[int, int], tuple(int(s) for s in image_shape))
        self.mesh_only_at_end = bool(mesh_only_at_end)
        self.mesh_every = None if mesh_every is None else int(mesh_every)
        self.total_rounds = total_rounds
        self._round: int | None = None
        grid, self.mesh_shape = mesh_grid(self.image_shape)
        self.mesh_points = self._to_device(grid)
        self._val_wall = self.val_y.reshape(-1) >= 0.5

    @torch.no_grad()
    def mesh_density(self, theta: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, self.mesh_points.shape[0], self.val_batch_size):
            xb = self.mesh_points[start:start + self.val_batch_size]
            parts.append(self.stack.evaluate(theta, xb, lambda out, _rows: out.reshape(out.shape[0], -1)))
        return torch.cat(parts, dim=1).reshape(theta.shape[0], *self.mesh_shape)

    def _mesh_due(self, round_index: int | None) -> bool:
        """Whether the mesh itself is kept at this evaluation (map quality is recorded at every one)."""
        last = round_index is not None and self.total_rounds is not None and round_index >= self.total_rounds
        if self.mesh_only_at_end:
            return last
        if self.mesh_every is not None:
            if last or round_index is None:
                return True
            # the first evaluation at or after each multiple of mesh_every (evaluations every evaluate_frequency)
            previous = round_index - max(int(self.evaluate_frequency or 1), 1)
            return round_index // self.mesh_every > previous // self.mesh_every
        return True

    def evaluate(self, round_index: int, theta: torch.Tensor | None = None,
                 extras: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        self._round = round_index
        return super().evaluate(round_index, theta, extras)

    def validation_breakdown(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        wall = self._val_wall
        nan = losses.new_full((losses.shape[0],), math.nan)
        return {"validation_loss_wall": losses[:, wall].mean(dim=1) if bool(wall.any()) else nan,
                "validation_loss_free": losses[:, ~wall].mean(dim=1) if bool((~wall).any()) else nan}

    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().compute_metrics(theta)
        if "mesh_grid_density" not in self.metrics:
            return values
        keep_mesh = self._mesh_due(self._round)
        if not keep_mesh and self.map_truth is None:
            return values
        mesh = self.mesh_density(theta).to("cpu", torch.float32)
        if keep_mesh:
            values["mesh_grid_density"] = mesh
            values["mesh_round"] = torch.tensor(-1 if self._round is None else self._round)
        if self.map_truth is not None:
            quality = map_quality(mesh, *self.map_truth)
            values["map_balanced_accuracy"] = quality["balanced_accuracy"]
            values["map_wall_iou"] = quality["wall_iou"]
        return values


class WindowSampler:
    """Mini-batches of every robot's current window of scans, drawn for all robots at once.

    ``scans`` is (N, P_max, S, 3): robot ``i``'s trajectory has ``num_poses[i]`` poses of ``S`` points
    (padded to ``P_max``). Each robot reads its window's points through a random permutation; when it
    has used them all once (an epoch) its window moves on and a new permutation starts. How it moves:

    * ``step=None`` (the default): windows of ``window`` poses that do not overlap, starting at
      pose 0; the last window of the loop is the short tail ``[k * window, P)``, then it starts again
      at pose 0.
    * ``step=s``: a sliding window of ``window`` consecutive poses (modulo the trajectory) that moves
      on by ``s`` poses; ``s = 1`` is the original code's rule.

    A batch that outlasts a window continues in the next one. Batches are gathers for all robots;
    the only loop is over the window changes inside one batch. The order inside a window is a
    counter-based shuffle of (seed, robot id, window count), so a robot's batches do not depend on the
    other robots (``robot_ids``: the global ids of the rows, when they are one process's block).
    """

    def __init__(self, scans: torch.Tensor, num_poses: Sequence[int], window: int, step: int | None = None,
                 seed: int = 0, robot_ids: Sequence[int] | None = None):
        self.scans = scans
        self.device = scans.device
        self.num_nodes, self.max_poses, self.points_per_pose, _ = scans.shape
        self.flat = scans.reshape(self.num_nodes, -1, 3)
        self.num_poses = torch.as_tensor(list(num_poses), dtype=torch.long, device=self.device)
        self.window = int(window)
        self.step = None if step is None else int(step)
        self.max_window_size = self.window * self.points_per_pose
        self.seed = int(seed)
        n = self.num_nodes
        ids = range(n) if robot_ids is None else robot_ids
        self.robot_ids = torch.as_tensor(list(ids), dtype=torch.long, device=self.device)
        self.start = torch.zeros(n, dtype=torch.long, device=self.device)
        self.position = torch.zeros(n, dtype=torch.long, device=self.device)
        self.epochs = torch.zeros(n, dtype=torch.long, device=self.device)
        self.samples_seen = torch.zeros(n, dtype=torch.long, device=self.device)
        self.current = self._permutations(torch.arange(n, device=self.device))

    # --------------------------------------------------------------- windows
    def window_length(self, start: torch.Tensor | None = None) -> torch.Tensor:
        """Poses in the window that starts at ``start`` (default: the current windows)."""
        start = self.start if start is None else start
        if self.step is None:
            return torch.clamp(self.num_poses - start, max=self.window)
        return torch.full_like(start, self.window)

    def next_start(self) -> torch.Tensor:
        if self.step is None:
            after = self.start + self.window
            return torch.where(after >= self.num_poses, 0, after)
        return (self.start + self.step) % self.num_poses

    def window_size(self, start: torch.Tensor | None = None) -> torch.Tensor:
        return self.window_length(start) * self.points_per_pose

    def current_pose_index(self) -> torch.Tensor:
        """(N,) index of each robot's current pose: the last pose of its window."""
        return (self.start + self.window_length() - 1) % self.num_poses

    def _permutations(self, robots: torch.Tensor) -> torch.Tensor:
        """For each of ``robots`` (rows), a random order of its current window's points, in the first
        window-size entries."""
        keys = shuffle_keys(self.seed, self.robot_ids[robots], self.epochs[robots], self.max_window_size)
        beyond = torch.arange(self.max_window_size, device=self.device) >= self.window_size()[robots].unsqueeze(1)
        keys = torch.where(beyond, torch.full_like(keys, 1 << 40), keys)
        return torch.argsort(keys, dim=1, stable=True)

    def _rows(self, local: torch.Tensor, robots: slice = slice(None)) -> torch.Tensor:
        """Rows of ``flat`` of window-local point indices ``local`` (one row per robot of ``robots``)."""
        start, poses = self.start[robots].unsqueeze(1), self.num_poses[robots].unsqueeze(1)
        pose = (start + local // self.points_per_pose) % poses
        return pose * self.points_per_pose + local % self.points_per_pose

    def _advance(self, robots: torch.Tensor) -> None:
        self.start[robots] = self.next_start()[robots]
        self.position[robots] = 0
        self.epochs[robots] += 1
        self.current[robots] = self._permutations(robots)

    # -------------------------------------------------------------- batches
    def next_points(self, batch_size: int) -> torch.Tensor:
        """(N, B, 3) points ``(x, y, density)``, one batch per robot."""
        j = torch.arange(batch_size, device=self.device)
        rows = torch.zeros(self.num_nodes, batch_size, dtype=torch.long, device=self.device)
        filled = torch.zeros(self.num_nodes, dtype=torch.long, device=self.device)
        while bool((filled < batch_size).any()):
            size = self.window_size()
            take = torch.minimum(batch_size - filled, size - self.position)
            k = j - filled.unsqueeze(1)  # index inside this window's part of the batch
            part = (k >= 0) & (k < take.unsqueeze(1))
            slot = (self.position.unsqueeze(1) + k).clamp(0, self.max_window_size - 1)
            rows = torch.where(part, self._rows(torch.gather(self.current, 1, slot)), rows)
            self.position += take
            filled += take
            done = self.position >= size
            if bool(done.any()):
                self._advance(torch.nonzero(done).squeeze(1))
        self.samples_seen += batch_size
        return torch.gather(self.flat, 1, rows.unsqueeze(2).expand(-1, -1, 3))

    def state_dict(self) -> dict:
        return state.capture(self, ("start", "position", "epochs", "samples_seen", "current"))

    def load_state_dict(self, saved: dict) -> None:
        state.restore(self, saved)

    def window_points(self, node: int) -> torch.Tensor:
        """(M, 3) points of robot ``node``'s current window, poses in window order."""
        local = torch.arange(int(self.window_size()[node]), device=self.device).unsqueeze(0)
        return self.flat[node, self._rows(local, slice(node, node + 1))[0]]


class OnlineDensityProblem(DensityProblem):
    """Robots drive along their trajectories and learn from a window of their latest scans.

    ``scans``: (N, P_max, S, 3) per-robot trajectory scans (padded), ``poses``: (N, P_max, 2) their
    positions, ``num_poses``: trajectory lengths. With ``pooled=True`` the problem is one node that
    trains on every robot's window batch at once (the centralized baseline). The robots' current
    positions (:meth:`team_positions`) are what a graph that follows them
    (:class:`optimizers.comm.links.FollowPositions`) is built from; ``current_graph`` is the network's.
    """

    base_metrics = DensityProblem.base_metrics + ("current_position", "current_graph")

    def __init__(self, name: str, model: nn.Module, scans: torch.Tensor, poses: np.ndarray,
                 num_poses: Sequence[int], val_x: torch.Tensor, val_y: torch.Tensor, *, loss: str,
                 num_scans_in_window: int, window_step: int | None = None, pooled: bool = False, **kwargs):
        self.num_robots = scans.shape[0]  # here (a block of the team under torch.distributed)
        robots = kwargs.get("robots")
        self.team_size = self.num_robots if robots is None else robots.total
        self.pooled = bool(pooled)
        nodes = 1 if pooled else self.num_robots
        dummy = [torch.zeros(1, dtype=torch.long)] * nodes
        dtype = kwargs.get("dtype", torch.float32)
        super().__init__(name, model, dummy, torch.zeros(1, 2, dtype=dtype), torch.zeros(1, 1, dtype=dtype),
                         val_x, val_y, loss=loss, **kwargs)
        self.window_sampler = WindowSampler(scans.to(self.device, self.dtype), num_poses, num_scans_in_window,
                                            window_step, seed=kwargs.get("seed", 0),
                                            robot_ids=None if robots is None else robots.ids)
        if not pooled:
            self.sampler = self.window_sampler
        self.poses = np.asarray(poses, dtype=np.float64)

    # ------------------------------------------------------------------ robots
    def current_positions(self) -> np.ndarray:
        """(robots here, 2) positions: each robot stands at its window's last pose."""
        idx = self.window_sampler.current_pose_index().cpu().numpy()
        return self.poses[np.arange(self.num_robots), idx]

    def team_positions(self) -> np.ndarray:
        """(team, 2) positions of every robot (gathered from every process under torch.distributed)."""
        here = self.current_positions()
        if self.ranks is None:
            return here
        return self.ranks.all_rows(torch.as_tensor(here, dtype=torch.float64)).numpy()

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        saved = super().state_dict()
        saved["window_sampler"] = self.window_sampler.state_dict()
        return saved

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self.window_sampler.load_state_dict(saved["window_sampler"])

    # ---------------------------------------------------------------- training
    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pts = self.window_sampler.next_points(batch_size or self.train_batch_size)
        if self.pooled:
            pts = pts.reshape(1, -1, 3)
        return pts[..., :2], pts[..., 2:3]

    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().compute_metrics(theta)
        ws = self.window_sampler
        if self.pooled:
            values[FORWARD_PASS_COUNT] = ws.samples_seen.sum().reshape(1).cpu()
            if "current_epoch" in self.metrics:
                values["current_epoch"] = ws.epochs.min().reshape(1).cpu()
        if "current_position" in self.metrics:
            values["current_position"] = torch.as_tensor(self.current_positions(), dtype=torch.float64)
        return values
