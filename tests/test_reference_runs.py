"""Short runs of every problem kind against numbers recorded from an earlier version of the code.

The restructuring of the experiment layer must not change what a run computes: every pair of a short
float64 run of each kind (MNIST on the shipped offline sample, static density, online density) is
compared with ``tests/data/reference_runs.json`` (metrics at every evaluation and every robot's final
parameter norm and sum). float64 and a relative tolerance of 1e-9 absorb differences between BLAS
kernels of different CPUs, which are many orders smaller; a changed computation is not.

Record the numbers again (only when a change of results is intended): ``python -m tests.test_reference_runs``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

REFERENCE = Path(__file__).resolve().parent / "data" / "reference_runs.json"
PAIRS = ("dinno", "dsgd", "dsgt", "individual", "centralized")
COMPARED = ("forward_pass_count", "validation_loss", "top1_accuracy", "consensus_error", "current_epoch",
            "train_loss_moving_average", "bytes_sent", "map_balanced_accuracy")


def _optimizers(rounds: int, lr: float) -> dict:
    return {
        "problem1": {"alg": {"alg_name": "dinno", "rho_init": 0.1, "rho_scaling": 1.01, "primal_iterations": 2,
                             "primal_optimizer": "adam", "primal_lr_start": lr, "primal_lr_finish": lr / 10,
                             "lr_decay_type": "log", "outer_iterations": rounds}, "name": "dinno"},
        "problem2": {"alg": {"alg_name": "dsgd", "alpha0": lr * 10, "mu": 0.01, "outer_iterations": rounds},
                     "name": "dsgd"},
        "problem3": {"alg": {"alg_name": "dsgt", "alpha": lr * 10, "init_grads": True, "outer_iterations": rounds},
                     "name": "dsgt"},
    }


def mnist_config() -> dict:
    problems = {key: {"problem_name": p["name"], "train_batch_size": 16, "val_batch_size": 200,
                      "metrics": ["forward_pass_count", "validation_loss", "consensus_error", "top1_accuracy",
                                  "current_epoch", "train_loss_moving_average"],
                      "metrics_config": {"evaluate_frequency": 2}, "optimizer_config": p["alg"]}
                for key, p in _optimizers(4, 0.005).items()}
    return {"experiment": {"name": "ref_mnist", "problem": "mnist", "dataset": "mnist_subset", "seed": 3,
                           "dtype": "float64", "execution": "loop", "data_split_type": "hetero",
                           "validation_size": 200, "centralized": True,
                           "graph": {"num_nodes": 4, "type": "cycle"},
                           "model": {"num_filters": 2, "kernel_size": 5, "linear_width": 8},
                           "individual_training": {"train_solo": True, "lr": 0.005, "epochs": 1,
                                                   "train_batch_size": 256, "val_batch_size": 200,
                                                   "verbose": False}},
            "problem_configs": problems}


def density_config(plan: Path, online: bool) -> dict:
    metrics = ["forward_pass_count", "train_loss_moving_average", "validation_loss", "consensus_error",
               "mesh_grid_density", "current_epoch"]
    if online:
        metrics += ["current_position", "current_graph"]
    problems = {key: {"problem_name": p["name"], "train_batch_size": 30, "val_batch_size": 300,
                      "comm_radius": 30.0, "dynamic_graph": online, "metrics": metrics,
                      "metrics_config": {"evaluate_frequency": 2}, "optimizer_config": p["alg"]}
                for key, p in _optimizers(4, 0.01).items()}
    data = {"data_dir": str(plan), "waypoint_subdir": "paths", "num_beams": 8, "beam_length": 0.2,
            "beam_samps": 5, "collision_samps": 20, "fine_samps": 2, "border_width": 5, "round_density": True,
            "spline_res": 30, "num_validation_scans": 20}
    if online:
        data.update(num_scans_in_window=2, window_step=4)
    return {"experiment": {"name": "ref_density", "problem": "online_density" if online else "density",
                           "seed": 5, "dtype": "float64", "execution": "loop", "centralized": True, "data": data,
                           "loss": "BCE", "model": {"shape": [2, 16, 8, 1], "scale": 0.5},
                           "individual_training": {"train_solo": True, "lr": 0.01, "epochs": 1,
                                                   "train_batch_size": 30, "val_batch_size": 300,
                                                   "verbose": False}},
            "problem_configs": problems}


def run_kind(kind: str, folder: Path) -> dict:
    """Run the reference config of ``kind`` in ``folder``; the numbers to compare, per pair."""
    from experiments.runner import main

    if kind == "mnist":
        cfg = mnist_config()
    else:
        from tests.helpers.density import make_plan
        cfg = density_config(make_plan(folder / "plan"), online=kind == "online_density")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / "out"
    assert main([str(path), "--output-dir", str(out), "--quiet"]) == 0
    numbers = {}
    for pair in PAIRS:
        history = torch.load(out / f"{pair}_results.pt", weights_only=True)
        theta = torch.load(out / f"{pair}_final_params.pt", weights_only=True).double()
        entry = {"round": list(history["round"]), "theta_norm": theta.norm(dim=1).tolist(),
                 "theta_sum": theta.sum(dim=1).tolist()}
        for metric in COMPARED:
            if history.get(metric):
                entry[metric] = [torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist()
                                 for v in history[metric]]
        with open(out / f"{pair}_metrics.csv") as fh:
            entry["csv_rows"] = len(list(csv.DictReader(fh)))
        numbers[pair] = entry
    return numbers


def _close(a, b, path: str) -> None:
    if isinstance(a, dict):
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: length {len(b)} != {len(a)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{path}: {b} != nan"
    else:
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {b!r} != recorded {a!r}"


@pytest.mark.parametrize("kind", ["mnist", "density", "online_density"])
def test_short_runs_give_the_recorded_numbers(kind, tmp_path):
    recorded = json.loads(REFERENCE.read_text())[kind]
    got = run_kind(kind, tmp_path)
    assert set(got) == set(recorded)
    for pair in recorded:
        assert set(got[pair]) == set(recorded[pair]), pair
        _close(recorded[pair], got[pair], f"{kind}.{pair}")


if __name__ == "__main__":
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("mnist", "density", "online_density"):
            results[kind] = run_kind(kind, Path(tmp) / kind)
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(results, indent=1) + "\n")
    print(f"recorded {REFERENCE}", file=sys.stderr)
