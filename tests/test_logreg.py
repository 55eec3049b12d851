"""The logreg kind: the exact optimum, the optimality gap against a slow reference, exact methods
converging to f* and DSGD stalling at its bias, under one process and under torchrun."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
import yaml

from experiments.config import load_yaml, validate_config
from experiments.kinds import KINDS
from experiments.runner import main
from tests.helpers.distributed import assert_same_metrics, one_process, torchrun, write_config
from tests.helpers.paths import REPO_ROOT

SHIPPED = REPO_ROOT / "experiments" / "configs" / "logreg_algorithms.yaml"


def small_config(dataset: str = "breast_cancer", rounds: int = 300, split: str = "sorted") -> dict:
    cfg = validate_config(load_yaml(SHIPPED))
    cfg = copy.deepcopy(cfg)
    cfg["experiment"].update(dataset=dataset, data_split_type=split, centralized=False)
    cfg["experiment"]["graph"]["num_nodes"] = 6
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["metrics_config"]["evaluate_frequency"] = rounds // 6
        if dataset != "breast_cancer":
            pc["metrics"] = [m for m in pc["metrics"] if m != "top1_accuracy"]
    return cfg


@pytest.mark.parametrize("dataset", ["breast_cancer", "diabetes"])
def test_newton_optimum_is_the_minimizer_of_the_team_objective(dataset):
    cfg = small_config(dataset)
    setup = KINDS["logreg"].setup(cfg, torch.device("cpu"))
    objective = setup.objective
    theta = objective.theta_star.clone().requires_grad_(True)
    # the team objective written out robot by robot: (1/N) sum_i mean_{s in D_i} loss + reg/2 |theta|^2
    x, y = setup.data["train_x"], setup.data["train_y"]
    total = 0.0
    for ix in setup.node_indices:
        z = x[ix] @ theta[:-1] + theta[-1]
        if dataset == "breast_cancer":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y[ix])
        else:
            loss = 0.5 * ((z - y[ix]) ** 2).mean()
        total = total + loss / setup.num_nodes
    total = total + 0.5 * objective.reg * (theta ** 2).sum()
    (grad,) = torch.autograd.grad(total, theta)
    assert float(grad.norm()) < 1e-12
    assert abs(float(total.detach()) - objective.f_star) < 1e-14
    # any other point is worse, by at least the strong convexity bound
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1e-1):
        other = objective.theta_star + scale * torch.randn(objective.theta_star.shape, generator=generator,
                                                           dtype=torch.float64)
        gap = float(objective.values(other.unsqueeze(0))) - objective.f_star
        assert gap >= 0.5 * objective.reg * float((other - objective.theta_star).norm()) ** 2 * (1 - 1e-9)


def test_exact_methods_reach_f_star_and_dsgd_stalls_at_its_bias(tmp_path):
    cfg = small_config(rounds=600)
    config = write_config(cfg, tmp_path)
    assert main([str(config), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    final = {}
    for name in ("extra", "next", "dsgt", "dinno", "prox_pda", "dsgd", "choco_sgd"):
        history = torch.load(tmp_path / "out" / f"{name}_results.pt", weights_only=True)
        gaps = torch.as_tensor(history["optimality_gap"][-1])
        assert gaps.shape == (6,) and bool((gaps > -1e-12).all())
        final[name] = float(gaps.max())
        # the gap of the robots' mean is recorded once for the team
        assert history["mean_optimality_gap"][-1].shape == (1,)
    for name in ("extra", "next", "dsgt", "dinno", "prox_pda"):
        assert final[name] < 1e-6, (name, final[name])
    assert final["dsgd"] > 1e-3 and final["choco_sgd"] > 1e-3  # a constant step leaves a bias
    history = torch.load(tmp_path / "out" / "dsgd_results.pt", weights_only=True)
    last = [float(torch.as_tensor(g).max()) for g in history["optimality_gap"][-3:]]
    assert max(last) / min(last) < 1.01  # it has stalled, not merely slowed down


def test_optimality_gap_equals_a_per_robot_evaluation(tmp_path):
    cfg = small_config(rounds=30)
    cfg["problem_configs"] = {"dsgd": cfg["problem_configs"]["dsgd"]}
    config = write_config(cfg, tmp_path)
    assert main([str(config), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    history = torch.load(tmp_path / "out" / "dsgd_results.pt", weights_only=True)
    theta = torch.load(tmp_path / "out" / "dsgd_final_params.pt", weights_only=True)
    setup = KINDS["logreg"].setup(cfg, torch.device("cpu"))
    x, y = setup.data["train_x"], setup.data["train_y"]
    for i in range(6):
        f = sum(torch.nn.functional.binary_cross_entropy_with_logits(x[ix] @ theta[i, :-1] + theta[i, -1], y[ix])
                for ix in setup.node_indices) / 6 + 0.5 * setup.objective.reg * float((theta[i] ** 2).sum())
        assert math.isclose(float(f) - setup.objective.f_star, float(history["optimality_gap"][-1][i]),
                            rel_tol=1e-9, abs_tol=1e-15)
    mean = theta.mean(0, keepdim=True)
    assert math.isclose(float(setup.objective.values(mean)) - setup.objective.f_star,
                        float(history["mean_optimality_gap"][-1]), rel_tol=1e-9, abs_tol=1e-15)


def test_regression_data_refuse_accuracy_with_one_line(tmp_path, capsys):
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["experiment"]["dataset"] = "diabetes"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main([str(config), "--output-dir", str(tmp_path / "never"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "top1_accuracy" in err[0] and "diabetes" in err[0]
    assert not (tmp_path / "never").exists()


@pytest.mark.integration
def test_logreg_under_torchrun_matches_one_process(tmp_path):
    cfg = small_config(rounds=40)
    cfg["problem_configs"] = {k: cfg["problem_configs"][k] for k in ("extra", "dinno", "dsgd")}
    cfg["experiment"]["individual_training"]["train_solo"] = True
    cfg["experiment"]["centralized"] = True
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(2, config, tmp_path / "k2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_metrics(tmp_path / "k1", tmp_path / "k2", ("extra", "dinno", "dsgd", "individual", "centralized"),
                        1e-9)


def test_a_scaling_sweep_of_the_logreg_kind(tmp_path):
    raw = yaml.safe_load(SHIPPED.read_text())
    raw["experiment"].pop("graph")
    raw["experiment"]["centralized"] = False
    raw["experiment"]["scaling"] = {"const": "fiedler", "min_N": 4, "max_N": 8, "target_fied": 0.5,
                                    "num_trials": 2, "target_accuracy": 0.9}
    raw["problem_configs"] = {k: raw["problem_configs"][k] for k in ("extra", "dsgd")}
    for pc in raw["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = 40
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main([str(config), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    with open(tmp_path / "out" / "scaling.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["num_nodes"]), r["problem_name"]) for r in rows] == [(4, "extra"), (4, "dsgd"), (8, "extra"),
                                                                      (8, "dsgd")]
    for r in rows:
        history = torch.load(tmp_path / "out" / f"trial_{int(r['trial']):02d}" / f"{r['problem_name']}_results.pt",
                             weights_only=True)
        assert torch.as_tensor(history["optimality_gap"][-1]).shape == (int(r["num_nodes"]),)
        assert 0.5 < float(r["final_top1_mean"]) <= 1.0
