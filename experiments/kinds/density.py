"""The density mapping kinds: robots learn an implicit occupancy map of a floor plan from simulated lidar.

``density`` (static data): ``split_type: trajectory`` gives each robot the scans along its own spline
trajectory; ``random`` gives every robot its own scans from ``num_scans`` random free poses. The graph is
``experiment.graph`` or, without one, a disk graph of ``comm_radius`` on the robots' mean positions.

``online_density``: each robot scans along its trajectory once; during training it sees a window of
``num_scans_in_window`` poses that moves on after each epoch (:class:`problems.density.WindowSampler`).
The graph is a disk graph of ``comm_radius`` pixels on the robots' current positions, rebuilt before
every round when ``dynamic_graph`` (:class:`optimizers.comm.links.FollowPositions`).

Keys follow the original research code's density configs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from experiments.kinds.base import (
    COMMON_EXPERIMENT,
    GRAPH_SCHEMA,
    METRICS_CONFIG,
    REPO_ROOT,
    ExperimentSetup,
    ProblemKind,
    build_graph,
    check_batches_fit,
    check_graph_parameters,
    first_problem,
    problem_schema,
    resolve_path,
)
from floorplans.io import load_floorplan
from foundation.schema import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    OPTIONAL,
    POSITIVE,
    REQUIRED,
    Bool,
    Choice,
    ConfigError,
    Float,
    Int,
    ListOf,
    Str,
    excerpt,
    schema_entry,
)
from lidar import Lidar2D, RandomPoseLidarDataset, ScanError, TrajectoryLidarDataset
from lidar.coords import trajectory_from_waypoints
from optimizers.comm.graphs import disk_graph
from optimizers.comm.links import FollowPositions
from problems.density import DensityProblem, OnlineDensityProblem, WindowSampler, fourier_net, observable_walls
from problems.metrics import CONSENSUS_ERROR, FORWARD_PASS_COUNT, VALIDATION_LOSS

DENSITY_LOSSES = ("BCE", "MSE", "L1")
ONLINE_ONLY_METRICS = tuple(m for m in OnlineDensityProblem.available_metrics()
                            if m not in DensityProblem.available_metrics())

DATA_SCHEMA = {
    "data_dir": (Str, REQUIRED),
    "floor_img": (Str, "floor_img.png"),
    "waypoint_subdir": (Str, "tight_paths"),
    "num_nodes": (Int, OPTIONAL, AT_LEAST_ONE),
    "split_type": (Choice(("trajectory", "random")), "trajectory"),
    "num_beams": (Int, 20, AT_LEAST_ONE),
    "beam_length": (Float, 0.2, POSITIVE),
    "beam_samps": (Int, 25, AT_LEAST_ONE),
    "collision_samps": (Int, 50, AT_LEAST_ONE),
    "fine_samps": (Int, 3, NON_NEGATIVE),
    "samp_distribution_factor": (Float, 1.0, POSITIVE),
    "border_width": (Int, 30, NON_NEGATIVE),
    "round_density": (Bool, True),
    "spline_res": (Int, 30, AT_LEAST_ONE),
    "clipped_lidar": (Bool, False),
    "num_scans": (Int, OPTIONAL, AT_LEAST_ONE),
    "num_scans_in_window": (Int, OPTIONAL, AT_LEAST_ONE),
    "window_step": (Int, OPTIONAL, NON_NEGATIVE),  # absent: the original's non-overlapping windows
    "num_validation_scans": (Int, 500, AT_LEAST_ONE),
}

MODEL_SCHEMA = {
    "shape": (ListOf(Int), [2, 256, 64, 64, 64, 1]),
    "scale": (Float, 0.05),
}


def _all_optional(schema: dict) -> dict:
    """``schema`` with every key optional (an absent key reads as None)."""
    out = {}
    for key, spec in schema.items():
        kind, default, bounds = schema_entry(spec)
        out[key] = (kind, None if default is REQUIRED else default, bounds)
    return out


DENSITY_EXPERIMENT = {
    **COMMON_EXPERIMENT,
    "data": (DATA_SCHEMA, REQUIRED),
    "loss": (Choice(DENSITY_LOSSES), "BCE"),
    "model": (MODEL_SCHEMA, {}),
    # optional block: every key optional here, "type" given means a fixed graph is configured
    "graph": (_all_optional(GRAPH_SCHEMA), {}),
}

DENSITY_METRICS_CONFIG = {
    **METRICS_CONFIG,
    "mesh_every": (Int, OPTIONAL, AT_LEAST_ONE),  # keep the mesh at the first evaluation after each multiple (and at the end)
}

# both kinds accept the online metrics in the schema; the static kind refuses them with its own line
DENSITY_PROBLEM = problem_schema(OnlineDensityProblem.available_metrics(),
                                 [FORWARD_PASS_COUNT, "train_loss_moving_average", VALIDATION_LOSS,
                                  CONSENSUS_ERROR, "current_epoch"],
                                 10000, 10000, metrics_config=DENSITY_METRICS_CONFIG,
                                 comm_radius=(Float, OPTIONAL, POSITIVE), dynamic_graph=(Bool, False))


def _check_common(cfg: dict) -> None:
    exp = cfg["experiment"]
    shape = exp["model"]["shape"]
    if len(shape) < 3 or shape[0] != 2 or shape[-1] != 1 or min(shape) < 1:
        raise ConfigError(f"experiment.model.shape: expected [2, first, ..., 1] with at least 3 positive "
                          f"widths (input (x, y), output density), got {excerpt(shape)}")


def _check_density(cfg: dict) -> None:
    _check_common(cfg)
    exp = cfg["experiment"]
    data = exp["data"]
    if data["split_type"] == "random" and data["num_scans"] is None:
        raise ConfigError("experiment.data.num_scans: required for split_type random (scans from random poses)")
    graph = exp["graph"]
    if graph["type"] is None and graph["num_nodes"] is not None:
        raise ConfigError("experiment.graph.type: required when experiment.graph is given")
    if graph["type"] is not None:
        if graph["num_nodes"] is None:
            raise ConfigError("experiment.graph.num_nodes: required when experiment.graph is given")
        check_graph_parameters(graph)
        if data["num_nodes"] is not None and data["num_nodes"] != graph["num_nodes"]:
            raise ConfigError(f"experiment.data.num_nodes: {data['num_nodes']} differs from "
                              f"experiment.graph.num_nodes {graph['num_nodes']}")
    elif not any(pc["comm_radius"] is not None for pc in cfg["problem_configs"].values()):
        raise ConfigError("experiment.graph: required for the density problem unless the problems give "
                          "comm_radius (a disk graph on the robots' mean positions)")
    for key, pc in cfg["problem_configs"].items():
        bad = [m for m in pc["metrics"] if m in ONLINE_ONLY_METRICS]
        if bad:
            raise ConfigError(f"problem_configs.{key}.metrics: {bad[0]!r} is only available for "
                              f"experiment.problem online_density")
        if pc["dynamic_graph"]:
            raise ConfigError(f"problem_configs.{key}.dynamic_graph: only for experiment.problem "
                              f"online_density (robots that move)")


def _check_online(cfg: dict) -> None:
    _check_common(cfg)
    exp = cfg["experiment"]
    data = exp["data"]
    if data["num_scans_in_window"] is None:
        raise ConfigError("experiment.data.num_scans_in_window: required for online_density")
    if data["clipped_lidar"]:
        raise ConfigError("experiment.data.clipped_lidar: not supported by online_density "
                          "(every scan needs the same number of points)")
    if exp["graph"]["type"] is not None or exp["graph"]["num_nodes"] is not None:
        raise ConfigError("experiment.graph: online_density builds its graph from the robots' positions "
                          "(problem comm_radius); remove experiment.graph")
    for key, pc in cfg["problem_configs"].items():
        if pc["comm_radius"] is None:
            raise ConfigError(f"problem_configs.{key}.comm_radius: required for online_density "
                              f"(disk graph radius in pixels)")
    window_points = data["num_scans_in_window"] * data["num_beams"] * data["beam_samps"]
    check_batches_fit(cfg, window_points, f"a window's {window_points} points "
                                          f"(num_scans_in_window x num_beams x beam_samps)")


VALIDATION_SEED_OFFSET = 1000


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def waypoint_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("*.npy")), key=lambda p: _natural_key(p.name))


class DensitySetup(ExperimentSetup):
    problem_class: type[DensityProblem] = DensityProblem

    def __init__(self, cfg: dict, device: torch.device, graph=None, data=None, base_model=None):
        super().__init__(cfg, device, graph, data, base_model)
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
            self.lidar = Lidar2D(load_floorplan(self.image_path), num_beams=data["num_beams"],
                                 beam_length=data["beam_length"], beam_samps=data["beam_samps"],
                                 samp_distribution_factor=data["samp_distribution_factor"],
                                 collision_samps=data["collision_samps"], fine_samps=data["fine_samps"],
                                 border_width=data["border_width"])
        except ValueError as exc:
            raise ConfigError(f"experiment.data.floor_img: {self.image_path}: {exc}") from None
        self.image = self.lidar.img
        self.image_shape = self.lidar.shape
        if self.num_nodes is None:
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
        self.seeded_base_model(lambda: fourier_net(exp["model"]["shape"], exp["model"]["scale"]))

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
            try:
                w = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise ConfigError(f"experiment.data.waypoint_subdir: {path}: not a NumPy .npy file of "
                                  f"waypoints ({type(exc).__name__})") from None
            if not isinstance(w, np.ndarray) or w.ndim != 2 or w.shape[1] != 2 or len(w) == 0 \
                    or not np.issubdtype(w.dtype, np.number):
                raise ConfigError(f"experiment.data.waypoint_subdir: {path.name}: expected a (K, 2) array of "
                                  f"normalized (x, y) waypoints, got shape {getattr(w, 'shape', None)}")
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
        assert self.num_nodes is not None  # _load_waypoints set it
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
        check_batches_fit(self.cfg, min(sizes), f"the smallest robot's {min(sizes)} scan points")
        pooled = torch.cat(points)
        self.train_x = pooled[:, :2].contiguous()
        self.train_y = pooled[:, 2:3].contiguous()
        ends = np.cumsum(sizes)
        self.node_indices = [torch.arange(e - s, e) for s, e in zip(sizes, ends)]
        if self.graph is None:
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
    def problem_kwargs(self, problem_cfg: dict, rounds: int) -> dict:
        kwargs = super().problem_kwargs(problem_cfg, rounds)
        mc = problem_cfg["metrics_config"]
        kwargs.update(image_shape=self.image_shape, total_rounds=rounds, map_truth=self.map_truth,
                      mesh_only_at_end=mc["mesh_only_at_end"], mesh_every=mc["mesh_every"])
        return kwargs

    def build_problem(self, name, kwargs, pooled):
        indices = [torch.cat(self.node_indices)] if pooled else self.local(self.node_indices)
        return DensityProblem(name, self.base_model, indices, self.train_x, self.train_y, self.val_x,
                              self.val_y, loss=self.exp["loss"], **kwargs)

    # --------------------------------------------------------------- figures
    def robot_paths(self) -> list[np.ndarray]:
        return self.trajectories

    def save_figures(self, out_dir: Path) -> list[Path]:
        from visualization.plotting import save_density_animation, save_density_maps, save_map_strips

        paths = self.robot_paths()
        written = [save_density_maps(out_dir, self.image, paths), save_map_strips(out_dir, self.image, paths),
                   save_density_animation(out_dir, self.image, paths)]
        return [path for path in written if path is not None]


class OnlineDensitySetup(DensitySetup):
    problem_class = OnlineDensityProblem

    def _build_data(self) -> None:
        assert self.num_nodes is not None  # _load_waypoints set it
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
        self.graph = disk_graph(self.initial_positions, first_problem(self.cfg)["comm_radius"])
        self.graph.graph["type"] = "disk"

    def describe(self) -> dict:
        return {"source": f"{self.image_path} ({self.image_shape[1]}x{self.image_shape[0]} px)",
                "waypoint_files": self.waypoint_names, "num_nodes": self.num_nodes,
                "trajectory_poses": self.num_poses,
                "window_points": self.data_cfg["num_scans_in_window"] * self.scans.shape[2],
                "validation_points": int(self.val_x.shape[0])}

    def robot_data_sizes(self) -> list[int]:
        """Points along each robot's whole trajectory (it sees one window of them at a time)."""
        return [poses * self.scans.shape[2] for poses in self.num_poses]

    def centralized_batch(self, batch: int) -> int:
        return batch  # the pooled problem draws a batch from every robot's window

    def individual_schedule(self, individual: dict) -> tuple[int, int]:
        # like the original, every robot trains alone for `epochs` passes over its whole trajectory
        # (the longest one: every robot makes at least that many passes)
        batch = individual["train_batch_size"]
        trajectory_points = max(self.num_poses) * self.scans.shape[2]
        return batch, max(1, math.ceil(individual["epochs"] * trajectory_points / batch))

    def build_problem(self, name, kwargs, pooled):
        data = self.data_cfg
        if pooled:
            scans, poses, num_poses = self.scans, self.poses, self.num_poses
        else:  # this process's robots (all of them in one process)
            scans, poses, num_poses = self.local(self.scans), self.local(self.poses), self.local(self.num_poses)
        assert self.base_model is not None  # __init__ built it
        return OnlineDensityProblem(name, self.base_model, scans, poses, num_poses, self.val_x, self.val_y,
                                    loss=self.exp["loss"], num_scans_in_window=data["num_scans_in_window"],
                                    window_step=data["window_step"], pooled=pooled, **kwargs)

    def graph_schedule(self, problem, network, problem_cfg, log):
        if not problem_cfg["dynamic_graph"]:
            return None
        return FollowPositions(network, problem.team_positions, problem_cfg["comm_radius"], log=log,
                               name=problem.name)


def _has_online_data(experiment: dict) -> bool:
    data = experiment.get("data")
    return isinstance(data, dict) and "num_scans_in_window" in data


STATIC = ProblemKind("density", DensitySetup, DENSITY_EXPERIMENT, DENSITY_PROBLEM, _check_density,
                     recognizes=lambda experiment: isinstance(experiment.get("data"), dict)
                     and not _has_online_data(experiment))
ONLINE = ProblemKind("online_density", OnlineDensitySetup, DENSITY_EXPERIMENT, DENSITY_PROBLEM, _check_online,
                     recognizes=_has_online_data, sweepable=False)
