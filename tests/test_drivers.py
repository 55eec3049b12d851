"""Every driver run the way the README and docs show it: ``venv/bin/python <script> ...`` as a process of its own,
without ``--quiet``, on short configs. Each must exit 0 and keep its streams apart as docs/running.md promises:
notes and progress on stderr, the results (tables, the output folder) on stdout.

Tests that pass ``--quiet`` never exercise the notes a driver writes by default (a logging call given print's
``flush=`` raises only when the note is emitted), so these run the drivers as users do."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys

import pytest
import yaml

from experiments import runner
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TINY, data_overrides

SWEEP = {
    "experiment": {"name": "sweep", "validation_size": 200, "execution": "grouped",
                   "scaling": {"const": "num_nodes", "num_nodes": 4, "min_fied": 0.5, "max_fied": 2.0,
                               "num_trials": 2, "target_accuracy": 0.2}},
    "problem_configs": {
        "p1": {"problem_name": "dsgd", "train_batch_size": 8, "metrics_config": {"evaluate_frequency": 2},
               "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 4, "alpha0": 0.05}},
    },
}

TUNE = {
    "tune": {"trials": 2, "rounds": 20, "seeds": [0],
             "objective": {"metric": "optimality_gap", "summary": "final_mean"},
             "space": {"dsgd": {"optimizer_config.alpha0": {"log_uniform": [0.01, 1.0]}}}},
    "experiment": {"name": "tiny_tune", "problem": "logreg", "dtype": "float64",
                   "graph": {"num_nodes": 4, "type": "cycle"}},
    "problem_configs": {
        "dsgd": {"problem_name": "dsgd", "metrics": ["forward_pass_count", "validation_loss", "optimality_gap"],
                 "metrics_config": {"evaluate_frequency": 10}, "verbose_evals": True,
                 "optimizer_config": {"alg_name": "dsgd", "alpha0": 0.1, "outer_iterations": 40}},
    },
}


def tiny_run_config(rounds: int = 4) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(centralized=False, individual_training={"train_solo": False})
    for pc in cfg["problem_configs"].values():
        pc["verbose_evals"] = True
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
    return cfg


def write(tmp_path, name: str, cfg: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sets(items) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def drive(*args, env=None) -> subprocess.CompletedProcess:
    """``venv/bin/python ARGS`` (this interpreter) from the repository root, as a user types it."""
    environment = {**os.environ, **(env or {})}
    environment.pop("NNDT_QUIET", None)
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=environment, timeout=900)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- in process
def test_scaling_sweep_notes_its_trials_when_not_quiet(tmp_path, capsys):
    """The sweep's default output, in the fast tier: each trained pair gets its note on stderr, the table on stdout."""
    out = tmp_path / "out"
    config = write(tmp_path, "sweep.yaml", SWEEP)
    code = runner.main([str(config), "--output-dir", str(out),
                        *sets(["experiment.dataset=mnist_subset", f"experiment.data_dir={tmp_path}"])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("dsgd: completed, 4 rounds in") == 2
    assert "dsgd: completed" not in captured.out
    assert f"results: {out}" in captured.out
    assert [r["trial"] for r in read_csv(out / "scaling.csv")] == ["0", "1"]


# ------------------------------------------------------------------------------------------ as processes
@pytest.mark.integration
def test_run_and_resume_as_users_run_them(tmp_path):
    out = tmp_path / "out"
    config = write(tmp_path, "tiny.yaml", tiny_run_config())
    first = drive("experiments/run.py", config, "--output-dir", out, "--pairs", "dinno",
                  *sets(data_overrides()))
    assert "experiment tiny: 1 pair(s)" in first.stderr
    assert "[dinno] round 2:" in first.stderr and "[dinno] round 4:" in first.stderr
    assert "[dinno]" not in first.stdout
    assert first.stdout.splitlines()[1].split()[:2] == ["pair", "alg"]
    assert f"results: {out}" in first.stdout

    # --resume adds a pair to the folder: the finished one is kept, the new one trains and is noted
    resumed = drive("experiments/run.py", "--resume", out, "--pairs", "dinno,dsgd")
    assert "[dsgd] round 4:" in resumed.stderr and "[dinno] round" not in resumed.stderr
    rows = {r["problem_name"]: r for r in read_csv(out / "summary.csv")}
    assert rows["dinno"]["status"] == rows["dsgd"]["status"] == "completed"
    assert f"results: {out}" in resumed.stdout

    # the notebooks' module, as their README line shows it: a table on stdout
    table = drive("-m", "visualization.plotting", out, "--threshold", "0.05")
    assert table.stdout.startswith("| run | pair |") and "| dsgd |" in table.stdout


@pytest.mark.integration
def test_scaling_sweep_as_users_run_it(tmp_path):
    out = tmp_path / "out"
    config = write(tmp_path, "sweep.yaml", SWEEP)
    result = drive("experiments/run.py", config, "--output-dir", out,
                   *sets(["experiment.dataset=mnist_subset", f"experiment.data_dir={tmp_path}"]))
    assert result.stderr.count("dsgd: completed, 4 rounds in") == 2
    assert "trial" in result.stdout and f"results: {out}" in result.stdout
    for name in ("scaling_accuracy.png", "scaling_rounds_to_target.png"):
        assert (out / "figures" / name).stat().st_size > 1000


@pytest.mark.integration
def test_tune_as_users_run_it(tmp_path):
    out = tmp_path / "tune"
    config = write(tmp_path, "tune.yaml", TUNE)
    result = drive("experiments/tune.py", config, "--output-dir", out)
    assert "dsgd: best objective" in result.stdout and f"results: {out}" in result.stdout
    assert "best objective" not in result.stderr
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert 0.01 <= best["problem_configs"]["dsgd"]["optimizer_config"]["alpha0"] <= 1.0


@pytest.mark.integration
def test_conditions_as_users_run_them(tmp_path):
    cfg = tiny_run_config(rounds=2)
    del cfg["problem_configs"]["problem1"], cfg["problem_configs"]["problem3"]
    cfg["conditions"] = {"lossless": {}, "half_lost": {"links": {"model": "independent", "drop_prob": 0.5}}}
    out = tmp_path / "conditions"
    result = drive("experiments/conditions.py", write(tmp_path, "conditions.yaml", cfg), "--output-dir", out,
                   *sets(data_overrides()))
    # each condition is noted, and its run keeps its notes (conditions.py --quiet silences them)
    assert "condition lossless:" in result.stderr and "condition half_lost:" in result.stderr
    assert result.stderr.count("[dsgd] round 2:") == 2
    assert f"{out / 'conditions.csv'}" in result.stdout
    assert {r["condition"] for r in read_csv(out / "conditions.csv")} == {"lossless", "half_lost"}
