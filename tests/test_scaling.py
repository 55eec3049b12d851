"""The scaling study: config forms, the sweep's output folder, resuming it, refused configs."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from experiments import runner
from experiments.config import ConfigError, validate_scaling_config
from experiments.scaling import trial_plan
from foundation.graph_files import graph_from_json
from optimizers.comm.graphs import fiedler_value

REPO = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO.parent / "shared" / "seed" / "configs" / "dist_mnist_scaling.yaml"

SHORT = ["experiment.dataset=mnist_subset", "experiment.validation_size=200", "experiment.execution=grouped"]

COMPARE = {
    "experiment": {"name": "cmp", "scaling": {"const": "num_nodes", "num_nodes": 8, "min_fied": 0.5,
                                              "max_fied": 2.0, "num_trials": 2, "target_accuracy": 0.2}},
    "problem_configs": {
        "p1": {"problem_name": "dsgd", "train_batch_size": 8,
               "metrics_config": {"evaluate_frequency": 2, "eval_nodes": 3},
               "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 4, "alpha0": 0.05}},
        "p2": {"problem_name": "dsgt", "train_batch_size": 8, "metrics_config": {"evaluate_frequency": 2},
               "optimizer_config": {"alg_name": "dsgt", "outer_iterations": 4, "alpha": 0.05}},
    },
}


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run(args):
    return runner.main(args + ["--quiet"])


def test_trial_plan_sweeps_n_or_fiedler():
    n_sweep = trial_plan({"const": "fiedler", "min_N": 10, "max_N": 100, "target_fied": 1.0, "num_trials": 4})
    assert [p["num_nodes"] for p in n_sweep] == [10, 40, 70, 100]
    assert {p["target_fiedler"] for p in n_sweep} == {1.0}
    f_sweep = trial_plan({"const": "num_nodes", "num_nodes": 20, "min_fied": 0.1, "max_fied": 2.0,
                          "num_trials": 3})
    assert [p["num_nodes"] for p in f_sweep] == [20, 20, 20]
    assert [round(p["target_fiedler"], 6) for p in f_sweep] == [0.1, 1.05, 2.0]


@pytest.mark.skipif(not SEED_CONFIG.exists(), reason="../shared/seed/configs/dist_mnist_scaling.yaml absent")
def test_original_scaling_config_validates_with_its_defaults():
    cfg = validate_scaling_config(yaml.safe_load(SEED_CONFIG.read_text()))
    assert cfg["experiment"]["scaling"]["const"] == "fiedler"
    assert cfg["experiment"]["data_split_type"] == "sorted"
    assert list(cfg["problem_configs"]) == ["problem"]
    assert cfg["problem_configs"]["problem"]["optimizer_config"]["alg_name"] == "dinno"


@pytest.mark.skipif(not SEED_CONFIG.exists(), reason="../shared/seed/configs/dist_mnist_scaling.yaml absent")
def test_original_scaling_config_runs(tmp_path):
    out = tmp_path / "out"
    code = run([str(SEED_CONFIG), "--output-dir", str(out), "--device", "cpu", *sum((["--set", s] for s in SHORT + [
        "experiment.data_dir=" + str(tmp_path), "experiment.scaling.min_N=4", "experiment.scaling.max_N=6",
        "experiment.scaling.num_trials=2", "problem.train_batch_size=16",
        "problem.optimizer_config.outer_iterations=3", "problem.metrics_config.evaluate_frequency=3",
        "problem.verbose_evals=false"]), [])])
    assert code == 0
    rows = read_csv(out / "scaling.csv")
    assert [int(r["num_nodes"]) for r in rows] == [4, 6]
    for r in rows:
        graph = graph_from_json(json.loads((out / "graphs" / f"trial_{int(r['trial']):02d}.json").read_text()))
        assert graph.number_of_nodes() == int(r["num_nodes"])
        assert all("pos" in attrs for _, attrs in graph.nodes(data=True))
        assert float(r["fiedler"]) == pytest.approx(fiedler_value(graph))
        assert 0.0 <= float(r["final_top1_mean"]) <= 1.0 and int(r["rounds"]) == 3
        assert float(r["bytes_sent_per_node"]) > 0
    # one frozen base model: every trial's first evaluation starts from it
    assert (out / "base_model.pt").exists()
    reference = json.loads((out / "reference" / "done.json").read_text())
    assert float(rows[0]["target_accuracy"]) == pytest.approx(0.9 * reference["top1_accuracy"])
    for name in ("scaling_accuracy.png", "scaling_rounds_to_target.png", "scaling_seconds_per_round.png"):
        assert (out / "figures" / name).stat().st_size > 1000


def test_compare_sweep_resume_skips_finished_trials(tmp_path):
    config = tmp_path / "cmp.yaml"
    config.write_text(yaml.safe_dump(COMPARE))
    out = tmp_path / "out"
    sets = sum((["--set", s] for s in SHORT + ["experiment.data_dir=" + str(tmp_path)]), [])
    assert run([str(config), "--output-dir", str(out), *sets]) == 0
    rows = read_csv(out / "scaling.csv")
    assert [(r["trial"], r["problem_name"]) for r in rows] == [("0", "dsgd"), ("0", "dsgt"), ("1", "dsgd"),
                                                               ("1", "dsgt")]
    fiedler = [float(r["fiedler"]) for r in rows[::2]]
    assert fiedler[0] < fiedler[1]  # the sweep thickens the graph
    assert all(float(r["target_accuracy"]) == 0.2 for r in rows)
    assert all(math.isnan(float(r["rounds_to_target"])) or float(r["rounds_to_target"]) in (2.0, 4.0)
               for r in rows)
    # eval_nodes: the dsgd pair evaluated a fixed sample of 3 of the 8 robots, the others read NaN
    history = torch.load(out / "trial_00" / "dsgd_results.pt", weights_only=True)
    evaluated = [int((~torch.isnan(torch.as_tensor(acc))).sum()) for acc in history["top1_accuracy"]]
    assert evaluated == [3] * len(evaluated)
    history = torch.load(out / "trial_00" / "dsgt_results.pt", weights_only=True)
    assert not torch.isnan(torch.as_tensor(history["top1_accuracy"][-1])).any()

    # An interruption during trial 1: its folder is still partial and the table has trial 0 only.
    os.replace(out / "trial_01", out / "trial_01.partial")
    (out / "trial_01.partial" / "done.json").unlink()
    with open(out / "scaling.csv", "w") as fh:
        fh.write("stale\n")
    finished = (out / "trial_00" / "dsgd_results.pt").stat().st_mtime_ns
    assert run(["--resume", str(out)]) == 0
    assert (out / "trial_00" / "dsgd_results.pt").stat().st_mtime_ns == finished  # not rerun
    assert not (out / "trial_01.partial").exists()
    again = read_csv(out / "scaling.csv")
    keys = ("num_nodes", "fiedler", "final_top1_mean", "final_top1_min", "final_consensus_error")
    for before, after in zip(rows, again):
        for key in keys:
            assert float(after[key]) == pytest.approx(float(before[key]), rel=1e-5, abs=1e-7), key


def _refused(tmp_path, capsys, data, *sets):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "never"
    code = run([str(config), "--output-dir", str(out), *sum((["--set", s] for s in sets), [])])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_bad_scaling_configs_are_refused_before_anything_runs(tmp_path, capsys):
    assert "experiment.scaling.min_N" in _refused(
        tmp_path, capsys, COMPARE, "experiment.scaling.const=fiedler", "experiment.scaling.min_N=30",
        "experiment.scaling.max_N=20")
    assert "experiment.scaling.max_fied" in _refused(tmp_path, capsys, COMPARE, "experiment.scaling.max_fied=9")
    assert "experiment.scaling.num_trials" in _refused(
        tmp_path, capsys, COMPARE, "experiment.scaling.const=fiedler", "experiment.scaling.min_N=4",
        "experiment.scaling.max_N=5", "experiment.scaling.num_trials=3")
    assert "eval_nodes" in _refused(tmp_path, capsys, COMPARE,
                                    "problem_configs.p1.metrics_config.eval_nodes=0")
    assert "experiment.scaling.target_accuracy" in _refused(tmp_path, capsys, COMPARE,
                                                            "experiment.scaling.target_accuracy=1.5")
    assert "experiment.graph" in _refused(tmp_path, capsys, COMPARE, "experiment.graph.type=cycle")
    assert "train_batch_size" in _refused(
        tmp_path, capsys, COMPARE, *SHORT, "experiment.data_dir=" + str(tmp_path),
        "problem_configs.p1.train_batch_size=4000")
    both = dict(COMPARE, problem=COMPARE["problem_configs"]["p1"])
    with pytest.raises(ConfigError, match="^problem: "):
        validate_scaling_config(both)


def test_resume_of_a_folder_that_is_not_a_sweep_is_refused(tmp_path, capsys):
    assert run(["--resume", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_nodes_evaluates_a_fixed_sample_in_chunks_with_the_same_numbers(tmp_path):
    from problems.mnist import MNISTProblem, mnist_cnn
    from problems.mnist_data import images_to_tensor, load_mnist
    from problems.splits import split_indices

    data = load_mnist(tmp_path, "mnist_subset")
    x, y = images_to_tensor(data.train_images), data.train_labels
    vx, vy = images_to_tensor(data.test_images[:64]), data.test_labels[:64]
    split = split_indices(y, 40, "random", seed=0)
    torch.manual_seed(0)

    def problem(eval_nodes):
        p = MNISTProblem("p", mnist_cnn(), split, x, y, vx, vy, loss="NLL", metrics=["top1_accuracy"],
                         train_batch_size=4, val_batch_size=32, chunk_size=4, eval_nodes=eval_nodes)
        p.theta.copy_(theta)
        return p

    theta = torch.randn(40, sum(p.numel() for p in mnist_cnn().parameters())) * 0.05
    full = problem(None).compute_metrics(theta)["top1_accuracy"]
    sampled_problem = problem(5)
    sample = sampled_problem.compute_metrics(theta)["top1_accuracy"]
    picked = ~torch.isnan(sample)
    assert int(picked.sum()) == 5 and picked.nonzero().max() > 4  # a spread sample, not the first chunk
    assert torch.equal(sample[picked], full[picked])
    assert torch.equal(picked, ~torch.isnan(sampled_problem.compute_metrics(theta)["top1_accuracy"]))  # fixed



NOTEBOOK = REPO / "visualization" / "scaling.ipynb"


def test_scaling_notebook_is_shipped_with_its_title_and_pictures():
    from tests.helpers.paths import assert_notebook_is_shipped_whole
    assert_notebook_is_shipped_whole(NOTEBOOK)


@pytest.mark.integration
def test_scaling_notebook_redraws_a_sweep(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    from tests.helpers.paths import execute_results_notebook

    config = tmp_path / "cmp.yaml"
    config.write_text(yaml.safe_dump(COMPARE))
    out = tmp_path / "sweep"
    sets = sum((["--set", s] for s in SHORT + ["experiment.data_dir=" + str(tmp_path)]), [])
    assert run([str(config), "--output-dir", str(out), *sets]) == 0
    printed = execute_results_notebook(NOTEBOOK, out, ("notebook_scaling_summary.png",
                                                        "notebook_scaling_graph.png"), monkeypatch)
    assert "const num_nodes, status completed, 2 trial(s) planned, 2 finished" in printed
    assert printed.count("completed") >= 5 and "dsgt" in printed and "target accuracy: 0.200" in printed
