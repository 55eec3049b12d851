"""Shared test helpers: density."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from experiments.runner import main
from floorplans.io import save_floorplan

# A 200 x 160 room with one obstacle; robot 1 drives away from robots 0 and 2, so the disk graph
# (radius 30 px) loses its edges to robot 1 after a few windows.
IMAGE_SHAPE = (160, 200)


WAYPOINTS = {
    "robot_0.npy": [[-0.62, -0.05], [-0.62, 0.05]],
    "robot_1.npy": [[-0.5, 0.0], [0.7, 0.0]],
    "robot_2.npy": [[-0.55, -0.15], [-0.55, 0.1]],
}


def make_plan(folder: Path, waypoints=WAYPOINTS) -> Path:
    img = np.zeros(IMAGE_SHAPE)
    img[20:40, 140:160] = 1.0  # obstacle away from the paths
    save_floorplan(folder / "floor_img.png", img)
    (folder / "paths").mkdir(parents=True, exist_ok=True)
    for name, w in waypoints.items():
        np.save(folder / "paths" / name, np.asarray(w, dtype=np.float64))
    return folder


def tiny_online_config(plan: Path, rounds: int = 10) -> dict:
    metrics = ["forward_pass_count", "train_loss_moving_average", "validation_loss", "consensus_error",
               "mesh_grid_density", "current_epoch", "current_position", "current_graph"]

    def problem(name, opt):
        return {"problem_name": name, "train_batch_size": 40, "val_batch_size": 500, "comm_radius": 30.0,
                "dynamic_graph": True, "metrics": metrics,
                "metrics_config": {"evaluate_frequency": 2, "mesh_only_at_end": False},
                "optimizer_config": {"outer_iterations": rounds, **opt}}

    return {
        "experiment": {
            "name": "tiny_online", "problem": "online_density", "seed": 0, "centralized": True,
            "data": {"data_dir": str(plan), "waypoint_subdir": "paths", "num_beams": 8, "beam_length": 0.2,
                     "beam_samps": 5, "collision_samps": 20, "fine_samps": 2, "border_width": 5,
                     "round_density": True, "spline_res": 30, "num_scans_in_window": 2, "window_step": 4,
                     "num_validation_scans": 20},
            "loss": "BCE",
            "model": {"shape": [2, 16, 8, 1], "scale": 0.5},
            "individual_training": {"train_solo": True, "lr": 0.01, "train_batch_size": 40, "val_batch_size": 500},
        },
        "problem_configs": {
            "problem1": problem("dinno", {"alg_name": "dinno", "rho_init": 0.1, "primal_iterations": 1,
                                          "primal_lr_start": 0.01, "primal_lr_finish": 0.001,
                                          "lr_decay_type": "log"}),
            "problem2": problem("dsgd", {"alg_name": "dsgd", "alpha0": 0.05, "mu": 0.001}),
            "problem3": problem("dsgt", {"alg_name": "dsgt", "alpha": 0.05, "init_grads": True}),
        },
    }


def run_config(cfg: dict, folder: Path, out_name: str = "out", extra=()) -> tuple[int, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / out_name
    return main([str(path), "--output-dir", str(out), "--quiet", *extra]), out


def original_windows(num_poses: int, window: int, count: int) -> list[list[int]]:
    """The original's window rule (``OnlineTrajectoryLidarDataset.gen_next_index_list`` of the
    original's lidar datasets), one window at a time: the window ends where the last one ended plus ``window`` poses,
    cut at the end of the trajectory, and starts again at pose 0 after the end."""
    out, end = [], 0
    for _ in range(count):
        if end >= num_poses:
            end = 0
        start, end = end, min(end + window, num_poses)
        out.append(list(range(start, end)))
    return out
