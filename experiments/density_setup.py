"""Setups of the density mapping experiments: lidar data per robot from its waypoints, graph, base model.

``density``: static data. ``split_type: trajectory`` gives each robot the scans along its own spline
trajectory; ``random`` gives every robot its own scans from ``num_scans`` random free poses. The graph is
``experiment.graph`` or, without one, a disk graph of ``comm_radius`` on the robots' mean positions.

``online_density``: each robot scans along its trajectory once; during training it sees a window of
``num_scans_in_window`` poses that moves on after each epoch (:class:`problems.density.WindowSampler`).
The graph is a disk graph of ``comm_radius`` pixels on the robots' current positions, rebuilt every
round when ``dynamic_graph``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from experiments.config import ConfigError
from experiments.results_io import save_figure
from experiments.setups import REPO_ROOT, ExperimentSetup, build_graph, resolve_path
from lidar import Lidar2D, RandomPoseLidarDataset, ScanError, TrajectoryLidarDataset
from lidar.coords import trajectory_from_waypoints
from optimizers.graphs import disk_graph
from problems.density import DensityProblem, OnlineDensityProblem, WindowSampler, fourier_net, observable_walls

VALIDATION_SEED_OFFSET = 1000


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def waypoint_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("*.npy")), key=lambda p: _natural_key(p.name))


class DensitySetup(ExperimentSetup):
    kind = "density"

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__(cfg, device)
        exp = self.exp
        data = self.data_cfg = exp["data"]
        self.data_dir = resolve_path(data["data_dir"], Path.cwd())
        if not self.data_dir.is_dir() and not Path(data["data_dir"]).is_absolute():
            self.data_dir = (REPO_ROOT / data["data_dir"]).resolve()  # repository-relative fallback
        if not self.data_dir.is_dir():
            raise ConfigError(f"experiment.data.data_dir: folder not found: {self.data_dir}")
        self.image_path = self.data_dir / data["floor_img"]
        if not self.image_path.is_file():
            raise ConfigError(f"experiment.data.floor_img: floor plan image not found: {self.image_path}")
        try:
            self.lidar = Lidar2D(str(self.image_path), num_beams=data["num_beams"],
                                 beam_length=data["beam_length"], beam_samps=data["beam_samps"],
                                 samp_distribution_factor=data["samp_distribution_factor"],
                                 collision_samps=data["collision_samps"], fine_samps=data["fine_samps"],
                                 border_width=data["border_width"])
        except ValueError as exc:
            raise ConfigError(f"experiment.data.floor_img: {self.image_path}: {exc}") from None
        self.image = self.lidar.img
        self.image_shape = self.lidar.shape
        self.num_nodes = self._num_nodes()
        self.waypoints, self.waypoint_names = self._load_waypoints()
        self.trajectories = [self._trajectory(w, name) for w, name in zip(self.waypoints, self.waypoint_names)]
        rng_seed = self.seed + VALIDATION_SEED_OFFSET
        try:
            val = RandomPoseLidarDataset(self.lidar, data["num_validation_scans"], seed=rng_seed,
                                         round_density=data["round_density"], clipped=data["clipped_lidar"],
                                         dtype=self.dtype)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"experiment.data.num_validation_scans: {exc}") from None
        self.val_x = val.inputs.contiguous()
        self.val_y = val.targets.contiguous()
        self.val_positions = val.positions
        self._build_data()
        # map quality is judged where the robots could see: one beam length around any pose of any robot
        self.map_truth = observable_walls(self.image, np.concatenate(self.node_positions), self.lidar.max_range,
                                          self.lidar.border_width)
        torch.manual_seed(self.seed)
        self.base_model = fourier_net(exp["model"]["shape"], exp["model"]["scale"])
        for p in self.base_model.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ data
    def _num_nodes(self) -> int | None:
        graph = self.exp.get("graph") or {}
        if self.data_cfg["num_nodes"] is not None:
            return self.data_cfg["num_nodes"]
        return graph.get("num_nodes")

    def _load_waypoints(self):
        folder = self.data_dir / self.data_cfg["waypoint_subdir"]
        if not folder.is_dir():
            raise ConfigError(f"experiment.data.waypoint_subdir: folder not found: {folder}")
        files = waypoint_files(folder)
        if not files:
            raise ConfigError(f"experiment.data.waypoint_subdir: no waypoint files (*.npy) in {folder}")
        n = self.num_nodes if self.num_nodes is not None else len(files)
        if n > len(files):
            raise ConfigError(f"experiment.data.num_nodes: {n} robots requested but {folder} has only "
                              f"{len(files)} waypoint files")
        self.num_nodes = n
        out = []
        for path in files[:n]:
            w = np.load(path)
            if w.ndim != 2 or w.shape[1] != 2 or len(w) == 0:
                raise ConfigError(f"experiment.data.waypoint_subdir: {path.name}: expected a (K, 2) array of "
                                  f"normalized (x, y) waypoints, got shape {w.shape}")
            out.append(np.asarray(w, dtype=np.float64))
        return out, [p.name for p in files[:n]]

    def _trajectory(self, waypoints: np.ndarray, name: str) -> np.ndarray:
        poses = trajectory_from_waypoints(waypoints, self.data_cfg["spline_res"], self.image_shape)
        try:
            self.lidar.check_poses(poses)
        except ScanError as exc:
            raise ConfigError(f"experiment.data.waypoint_subdir: {name}: the robot's path enters a wall "
                              f"or leaves the image: {exc}") from None
        return poses

    def _build_data(self) -> None:
        data = self.data_cfg
        if data["split_type"] == "trajectory":
            sets = [TrajectoryLidarDataset(self.lidar, w, data["spline_res"], round_density=data["round_density"],
                                           clipped=data["clipped_lidar"], dtype=self.dtype)
                    for w in self.waypoints]
            points = [ds.points for ds in sets]
            self.node_positions = [ds.positions for ds in sets]
        else:
            # like the original, every robot draws its own num_scans random poses
            per_robot = data["num_scans"]
            ds = RandomPoseLidarDataset(self.lidar, per_robot * self.num_nodes, seed=self.seed,
                                        round_density=data["round_density"], clipped=data["clipped_lidar"],
                                        dtype=self.dtype)
            robot_poses = np.arange(ds.num_poses).reshape(self.num_nodes, per_robot)
            points = [ds.points[ds.scan_ranges[p[0], 0]:ds.scan_ranges[p[-1], 1]] for p in robot_poses]
            self.node_positions = [ds.positions[p] for p in robot_poses]
        sizes = [len(p) for p in points]
        if min(sizes) == 0:
            raise ConfigError(f"experiment.data.num_scans: robot {sizes.index(0)} gets no scans; "
                              f"use at least one scan per robot")
        for key, pc in self.cfg["problem_configs"].items():
            if pc["train_batch_size"] > min(sizes):
                raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger "
                                  f"than the smallest robot's {min(sizes)} scan points")
        pooled = torch.cat(points)
        self.train_x = pooled[:, :2].contiguous()
        self.train_y = pooled[:, 2:3].contiguous()
        ends = np.cumsum(sizes)
        self.node_indices = [torch.arange(e - s, e) for s, e in zip(sizes, ends)]
        self.graph = self._graph()

    def _graph(self):
        exp = self.exp
        if exp["graph"]["type"] is not None:
            return build_graph(exp)
        radius = next(pc["comm_radius"] for pc in self.cfg["problem_configs"].values()
                      if pc["comm_radius"] is not None)
        centres = np.stack([p.mean(axis=0) for p in self.node_positions])
        graph = disk_graph(centres, radius)
        graph.graph["type"] = "disk"
        return graph

    def describe(self) -> dict:
        return {"source": f"{self.image_path} ({self.image_shape[1]}x{self.image_shape[0]} px)",
                "waypoint_files": self.waypoint_names, "num_nodes": self.num_nodes,
                "node_points": [len(ix) for ix in self.node_indices],
                "validation_points": int(self.val_x.shape[0])}

    # -------------------------------------------------------------- problems
    def density_kwargs(self, problem_cfg: dict, rounds: int | None) -> dict:
        kwargs = self.problem_kwargs(problem_cfg)
        kwargs.update(image_shape=self.image_shape, total_rounds=rounds, map_truth=self.map_truth,
                      mesh_only_at_end=problem_cfg["metrics_config"]["mesh_only_at_end"],
                      mesh_every=problem_cfg["metrics_config"]["mesh_every"])
        return kwargs

    def _problem(self, name, node_indices, kwargs):
        return DensityProblem(name, self.base_model, node_indices, self.train_x, self.train_y, self.val_x,
                              self.val_y, loss=self.exp["loss"], **kwargs)

    def make_problem(self, problem_cfg: dict):
        rounds = problem_cfg["optimizer_config"]["outer_iterations"]
        return self._problem(problem_cfg["problem_name"], self.local(self.node_indices),
                             self.density_kwargs(problem_cfg, rounds))

    def _baseline_common(self):
        first = next(iter(self.cfg["problem_configs"].values()))
        ind = self.exp["individual_training"]
        opt_cfg = {"alg_name": "local", "optimizer": ind["optimizer"], "lr": ind["lr"], "profile": False}
        return first, ind, opt_cfg

    def make_baseline(self, kind: str):
        first, ind, opt_cfg = self._baseline_common()
        if kind == "centralized":
            rounds = first["optimizer_config"]["outer_iterations"]
            kwargs = self.density_kwargs(first, rounds)
            kwargs["train_batch_size"] = first["train_batch_size"] * self.num_nodes
            kwargs["metrics"] = [m for m in kwargs["metrics"] if m != "consensus_error"]
            kwargs["robots"] = None  # one model (on rank 0 under torch.distributed)
            opt_cfg["outer_iterations"] = rounds
            return self._problem("centralized", [torch.cat(self.node_indices)], kwargs), opt_cfg
        batch = min(ind["train_batch_size"], min(len(ix) for ix in self.node_indices))
        mean_size = sum(len(ix) for ix in self.node_indices) / self.num_nodes
        rounds = max(1, math.ceil(ind["epochs"] * mean_size / batch))
        kwargs = self.density_kwargs(first, rounds)
        kwargs["train_batch_size"] = batch
        kwargs["val_batch_size"] = ind["val_batch_size"]
        opt_cfg["outer_iterations"] = rounds
        return self._problem("individual", self.local(self.node_indices), kwargs), opt_cfg

    # --------------------------------------------------------------- figures
    def robot_paths(self) -> list[np.ndarray]:
        return self.trajectories

    def save_figures(self, out_dir: Path) -> list[Path]:
        from visualization.plotting import load_results
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(out_dir) / "figures"
        out.mkdir(exist_ok=True)
        results = load_results(out_dir)
        maps = {name: res for name, res in results.items() if res.get("mesh_grid_density")}
        ny, nx_ = self.image_shape
        extent = (-nx_ / 2, nx_ / 2, ny / 2, -ny / 2)
        panels = 1 + len(maps)
        cols = min(panels, 3)
        rows = math.ceil(panels / cols)
        aspect = ny / nx_
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, (4.6 * aspect + 0.7) * rows), squeeze=False)
        ax = axes[0][0]
        ax.imshow(self.image, cmap="gray", extent=extent, vmin=0, vmax=1)
        colors = plt.cm.tab10(np.arange(self.num_nodes) % 10)
        for i, path in enumerate(self.robot_paths()):
            ax.plot(path[:, 0], path[:, 1], color=colors[i], lw=1.2, label=f"robot {i}")
            ax.plot(path[0, 0], path[0, 1], "o", color=colors[i], ms=4)
        ax.set_title("ground truth and robot paths")
        ax.legend(fontsize=6, loc="upper right", ncol=2)
        for idx, (name, res) in enumerate(maps.items(), start=1):
            ax = axes[idx // cols][idx % cols]
            mesh = torch.as_tensor(res["mesh_grid_density"][-1])
            val = res.get("validation_loss")
            node = 0
            ax.imshow(mesh[node].numpy(), cmap="gray", extent=extent, vmin=0, vmax=1)
            title = f"{name}: robot {node}'s map" if mesh.shape[0] > 1 else f"{name}: map"
            if val:
                title += f"\nmean val. loss {float(torch.as_tensor(val[-1]).mean()):.4f}"
            if res.get("map_balanced_accuracy"):
                acc = float(torch.as_tensor(res["map_balanced_accuracy"][-1])[node])
                iou = float(torch.as_tensor(res["map_wall_iou"][-1])[node])
                title += f"\nmap bal. acc. {acc:.3f}, wall IoU {iou:.3f}"
            ax.set_title(title, fontsize=9)
        for idx in range(panels, rows * cols):
            axes[idx // cols][idx % cols].axis("off")
        for row in axes:
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        path = out / "density_maps.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        return [path]


class OnlineDensitySetup(DensitySetup):
    kind = "online_density"

    def _build_data(self) -> None:
        data = self.data_cfg
        sets = [TrajectoryLidarDataset(self.lidar, w, data["spline_res"], round_density=data["round_density"],
                                       clipped=False, dtype=self.dtype) for w in self.waypoints]
        self.num_poses = [ds.num_poses for ds in sets]
        per_pose = data["num_beams"] * data["beam_samps"]
        pmax = max(self.num_poses)
        scans = torch.zeros(self.num_nodes, pmax, per_pose, 3, dtype=self.dtype)
        poses = np.zeros((self.num_nodes, pmax, 2))
        for i, ds in enumerate(sets):
            scans[i, :ds.num_poses] = ds.points.reshape(ds.num_poses, per_pose, 3)
            poses[i, :ds.num_poses] = ds.positions
        self.scans = scans
        self.poses = poses
        self.node_positions = [ds.positions for ds in sets]
        # where the robots stand in their first windows (one point per pose is enough to know)
        first_window = WindowSampler(scans[:, :, :1], self.num_poses, data["num_scans_in_window"],
                                     data["window_step"])
        self.initial_positions = poses[np.arange(self.num_nodes), first_window.current_pose_index().numpy()]
        radius = next(iter(self.cfg["problem_configs"].values()))["comm_radius"]
        self.graph = disk_graph(self.initial_positions, radius)
        self.graph.graph["type"] = "disk"

    def describe(self) -> dict:
        info = {"source": f"{self.image_path} ({self.image_shape[1]}x{self.image_shape[0]} px)",
                "waypoint_files": self.waypoint_names, "num_nodes": self.num_nodes,
                "trajectory_poses": self.num_poses,
                "window_points": self.data_cfg["num_scans_in_window"] * self.scans.shape[2],
                "validation_points": int(self.val_x.shape[0])}
        return info

    def _online(self, name, problem_cfg, kwargs, **extra):
        data = self.data_cfg
        if extra.get("pooled"):
            scans, poses, num_poses = self.scans, self.poses, self.num_poses
        else:  # this process's robots (all of them in one process)
            scans, poses, num_poses = self.local(self.scans), self.local(self.poses), self.local(self.num_poses)
        return OnlineDensityProblem(name, self.base_model, scans, poses, num_poses, self.val_x,
                                    self.val_y, loss=self.exp["loss"], num_scans_in_window=data["num_scans_in_window"],
                                    window_step=data["window_step"], comm_radius=problem_cfg["comm_radius"],
                                    **extra, **kwargs)

    def make_problem(self, problem_cfg: dict):
        rounds = problem_cfg["optimizer_config"]["outer_iterations"]
        return self._online(problem_cfg["problem_name"], problem_cfg, self.density_kwargs(problem_cfg, rounds),
                            dynamic_graph=problem_cfg["dynamic_graph"])

    def make_baseline(self, kind: str):
        first, ind, opt_cfg = self._baseline_common()
        rounds = first["optimizer_config"]["outer_iterations"]
        kwargs = self.density_kwargs(first, rounds)
        opt_cfg["outer_iterations"] = rounds
        kwargs["metrics"] = [m for m in kwargs["metrics"] if m != "current_graph"]
        if kind == "centralized":
            kwargs["metrics"] = [m for m in kwargs["metrics"] if m != "consensus_error"]
            kwargs["robots"] = None  # one model (on rank 0 under torch.distributed)
            return self._online("centralized", first, kwargs, dynamic_graph=False, pooled=True), opt_cfg
        # like the original, every robot trains alone for `epochs` passes over its whole trajectory
        # (the longest one: every robot makes at least that many passes)
        batch = ind["train_batch_size"]
        trajectory_points = max(self.num_poses) * self.scans.shape[2]
        opt_cfg["outer_iterations"] = max(1, math.ceil(ind["epochs"] * trajectory_points / batch))
        kwargs["train_batch_size"] = batch
        kwargs["val_batch_size"] = ind["val_batch_size"]
        kwargs["total_rounds"] = opt_cfg["outer_iterations"]
        return self._online("individual", first, kwargs, dynamic_graph=False), opt_cfg
