"""Config schemas of the density mapping problems (``experiment.problem: density | online_density``).

Keys follow the original research code's density configs; registered into
:data:`experiments.config.SCHEMAS` and :data:`experiments.config.CROSS_CHECKS`.
"""

from __future__ import annotations

from experiments.config import (
    COMMON_EXPERIMENT, DENSITY_METRICS, GRAPH_SCHEMA, METRICS_CONFIG, OPTIONAL, REQUIRED, Bool, Choice, ConfigError, Float,
    Int, ListOf, Str, check_graph_parameters, excerpt, problem_schema,
)
from optimizers.base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, schema_entry

DENSITY_LOSSES = ("BCE", "MSE", "L1")
ONLINE_ONLY_METRICS = ("current_position", "current_graph")

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
    "mesh_every": (Int, OPTIONAL, AT_LEAST_ONE),  # keep the mesh every this many rounds (and at the end)
}

DENSITY_PROBLEM = problem_schema(DENSITY_METRICS, ["forward_pass_count", "train_loss_moving_average",
                                                  "validation_loss", "consensus_error", "current_epoch"],
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
    for key, pc in cfg["problem_configs"].items():
        if pc["train_batch_size"] > window_points:
            raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger than "
                              f"a window's {window_points} points (num_scans_in_window x num_beams x beam_samps)")


def register(schemas: dict, cross_checks: dict) -> None:
    schemas["density"] = (DENSITY_EXPERIMENT, DENSITY_PROBLEM)
    schemas["online_density"] = (DENSITY_EXPERIMENT, DENSITY_PROBLEM)
    cross_checks["density"] = _check_density
    cross_checks["online_density"] = _check_online
