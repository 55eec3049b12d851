"""Shared test helpers: runs."""

from __future__ import annotations

import copy
import json

import torch
import yaml

from experiments.runner import main
from tests.helpers.paths import shared_mnist_dir


def data_overrides():
    path = shared_mnist_dir()
    if path is None:
        return ["experiment.dataset=mnist_subset"]
    return [f"experiment.data_dir={path}", "experiment.dataset=mnist"]


TINY = {
    "experiment": {
        "name": "tiny", "seed": 1, "validation_size": 1000, "data_split_type": "random", "loss": "NLL",
        "graph": {"num_nodes": 4, "type": "cycle"},
        "model": {"num_filters": 2, "kernel_size": 5, "linear_width": 8},
        "individual_training": {"train_solo": True, "lr": 0.005, "epochs": 1, "train_batch_size": 100,
                                "val_batch_size": 500},
        "centralized": True,
    },
    "problem_configs": {
        "problem1": {"problem_name": "dinno", "train_batch_size": 16, "val_batch_size": 500,
                     "metrics": ["forward_pass_count", "validation_loss", "consensus_error", "top1_accuracy",
                                 "current_epoch", "validation_as_vector", "train_loss_moving_average"],
                     "metrics_config": {"evaluate_frequency": 2},
                     "optimizer_config": {"alg_name": "dinno", "outer_iterations": 4, "rho_init": 0.5,
                                          "primal_iterations": 2, "primal_lr_start": 0.005,
                                          "primal_lr_finish": 0.001, "lr_decay_type": "log", "profile": True}},
        "problem2": {"problem_name": "dsgd", "train_batch_size": 16, "val_batch_size": 500,
                     "metrics_config": {"evaluate_frequency": 2},
                     "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 3, "alpha0": 0.01, "mu": 0.001}},
        "problem3": {"problem_name": "dsgt", "train_batch_size": 16, "val_batch_size": 500,
                     "metrics_config": {"evaluate_frequency": 2},
                     "optimizer_config": {"alg_name": "dsgt", "outer_iterations": 3, "alpha": 0.01}},
    },
}


def write_config(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config_path, out_dir, *sets):
    args = [str(config_path), "--output-dir", str(out_dir), "--quiet"]
    for item in [*data_overrides(), *sets]:
        args += ["--set", item]
    return main(args)


SETS = sum((["--set", s] for s in data_overrides()), [])


def long_tiny(rounds: int = 150, execution: str = "grouped") -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=True, execution=execution)
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
        pc["metrics_config"] = {"evaluate_frequency": 10}
    cfg["problem_configs"]["problem1"]["optimizer_config"]["persistant_primal_opt"] = True  # Adam moments carry over
    return cfg


def same_results(a, b, names):
    for name in names:
        assert (a / f"{name}_metrics.csv").read_bytes() == (b / f"{name}_metrics.csv").read_bytes(), name
        pa = torch.load(a / f"{name}_final_params.pt", weights_only=True)
        pb = torch.load(b / f"{name}_final_params.pt", weights_only=True)
        assert torch.equal(pa, pb), name
        ha = torch.load(a / f"{name}_results.pt", weights_only=True)
        hb = torch.load(b / f"{name}_results.pt", weights_only=True)
        assert ha.keys() == hb.keys()
        for key in ha:
            if key != "wall_time":
                for x, y in zip(ha[key], hb[key]):
                    torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), rtol=0, atol=0, equal_nan=True)


def crash_once(monkeypatch, optimizer_cls, round_index):
    """Make ``optimizer_cls`` raise at ``round_index`` (a crash of the pair) until ``monkeypatch.undo()``."""
    original = optimizer_cls.round

    def crashing(self, k):
        if k == round_index:
            raise RuntimeError("simulated crash")
        original(self, k)

    monkeypatch.setattr(optimizer_cls, "round", crashing)


def manifest_of(out):
    return json.loads((out / "manifest.json").read_text())


TUNING = {
    "tune": {
        "trials": 4, "rounds": 60, "seeds": [0, 1],
        "objective": {"metric": "optimality_gap", "summary": "final_mean"},
        "pruner": {"startup_trials": 2},
        "space": {"dsgd": {"optimizer_config.alpha0": {"log_uniform": [0.01, 1.0]}},
                  "extra": {"optimizer_config.alpha": {"uniform": [0.05, 0.5]}}},
    },
    "experiment": {"name": "tiny_tune", "problem": "logreg", "dtype": "float64",
                   "graph": {"num_nodes": 6, "type": "cycle"}},
    "problem_configs": {
        "dsgd": {"problem_name": "dsgd", "metrics": ["forward_pass_count", "validation_loss", "optimality_gap"],
                 "metrics_config": {"evaluate_frequency": 10},
                 "optimizer_config": {"alg_name": "dsgd", "alpha0": 0.1, "outer_iterations": 100}},
        "extra": {"problem_name": "extra", "metrics": ["forward_pass_count", "validation_loss", "optimality_gap"],
                  "metrics_config": {"evaluate_frequency": 10},
                  "optimizer_config": {"alg_name": "extra", "alpha": 0.1, "outer_iterations": 100}},
    },
}
