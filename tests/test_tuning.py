"""experiments/tune.py: Optuna studies per pair that resume, survive Ctrl-C and kill -9, share work between
processes, refuse bad tune blocks with one line, and leave a best.yaml that run.py runs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.runner import main as run_main
from experiments.tuning import main as tune_main
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TUNING


def write(tmp_path: Path, cfg=TUNING) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tune_then_continue_keeps_the_finished_trials_and_best_yaml_runs(tmp_path):
    config = write(tmp_path)
    out = tmp_path / "out"
    assert tune_main([str(config), "--output-dir", str(out), "--trials", "2", "--quiet"]) == 0
    first = trials(out)
    assert [(r["pair"], r["trial"]) for r in first] == [("dsgd", "0"), ("dsgd", "1"), ("extra", "0"), ("extra", "1")]
    assert all(r["state"] == "complete" for r in first)  # the pruner waits for 2 trials
    for r in first:  # a trial's objective is the mean over its seeds
        assert float(r["objective"]) == pytest.approx((float(r["objective_seed_0"]) + float(r["objective_seed_1"])) / 2)
    assert tune_main(["--resume", str(out), "--trials", "4", "--quiet"]) == 0
    again = trials(out)
    assert len(again) == 8
    kept = [{k: r[k] for k in first[0]} for r in again if r["trial"] in ("0", "1")]
    assert kept == first  # the finished trials' rows are unchanged
    # best.yaml: the input config without the tune block, the best values filled in
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "tune" not in best
    for pair, key in (("dsgd", "alpha0"), ("extra", "alpha")):
        done = [r for r in again if r["pair"] == pair and r["state"] == "complete"]
        winner = min(done, key=lambda r: float(r["objective"]))
        assert best["problem_configs"][pair]["optimizer_config"][key] == pytest.approx(
            float(winner[f"params_optimizer_config.{key}"]))
        assert best["problem_configs"][pair]["optimizer_config"]["outer_iterations"] == 100  # the config's own
    assert (out / "figures" / "tune_dsgd.png").stat().st_size > 1000
    best_path = tmp_path / "best.yaml"
    best_path.write_text((out / "best.yaml").read_text())
    assert run_main([str(best_path), "--output-dir", str(tmp_path / "best_run"), "--quiet"]) == 0


def tune_process(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "experiments" / "tune.py"), str(config),
                             "--output-dir", str(out), "--quiet", *extra], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(out: Path, count: int, process: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (out / "trials.csv").exists() and len(trials(out)) >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"tune.py ended early: {process.stderr.read()[-1500:]}")
        time.sleep(0.2)
    pytest.fail("no trial finished in time")


@pytest.mark.integration
@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
def test_an_interrupted_tuning_resumes_to_the_full_count(tmp_path, how):
    cfg = {**TUNING, "tune": {**TUNING["tune"], "rounds": 400}}
    config = write(tmp_path, cfg)
    out = tmp_path / "out"
    process = tune_process(config, out, "--trials", "3")
    wait_for_rows(out, 1, process)
    process.send_signal(signal.SIGINT if how == "ctrl_c" else signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    if how == "ctrl_c":
        assert process.returncode == 130 and "Traceback" not in stderr, stderr[-1500:]
        assert "--resume" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    kept = [r for r in trials(out) if r["state"] == "complete"]
    assert tune_main(["--resume", str(out), "--trials", "3", "--quiet"]) == 0
    rows = trials(out)
    for pair in ("dsgd", "extra"):
        finished = [r for r in rows if r["pair"] == pair and r["state"] in ("complete", "pruned", "fail")]
        assert len(finished) == len([r for r in rows if r["pair"] == pair]) >= 3  # none left running
    by_trial = {(r["pair"], r["trial"]): r for r in rows}
    for r in kept:  # the finished trials' rows are unchanged (new columns may have appeared)
        assert {k: by_trial[(r["pair"], r["trial"])][k] for k in r} == r
    for pair in ("dsgd", "extra"):  # the resumed study drew new points, it did not repeat its first ones
        points = [tuple(v for k, v in sorted(r.items()) if k.startswith("params_")) for r in rows if r["pair"] == pair]
        assert len(set(points)) == len(points), points


def test_workers_share_the_studies(tmp_path):
    config = write(tmp_path)
    out = tmp_path / "out"
    assert tune_main([str(config), "--output-dir", str(out), "--trials", "4", "--workers", "2", "--quiet"]) == 0
    rows = trials(out)
    for pair in ("dsgd", "extra"):
        mine = [r for r in rows if r["pair"] == pair]
        assert len(mine) >= 4 and all(r["state"] in ("complete", "pruned", "fail") for r in mine)


@pytest.mark.parametrize("change,message", [
    (lambda c: c["tune"].update(bogus=1), "tune.bogus: unknown key"),
    (lambda c: c["tune"]["space"]["dsgd"].update({"optimizer_config.alpha0": {"log_uniform": [0.0, 1.0]}}),
     "must be positive"),
    (lambda c: c["tune"]["space"].update(nope={"optimizer_config.alpha": {"uniform": [0.1, 0.2]}}),
     "tune.space.nope: not a key of problem_configs"),
    (lambda c: c["tune"]["objective"].update(metric="map_wall_iou"), "tune.objective.metric"),
    (lambda c: c["tune"]["objective"].update(metric="top1_accuracy"), "must record top1_accuracy"),
    (lambda c: c["tune"]["space"]["dsgd"].update({"optimizer_config.alpha0": {"uniform": [2.0, 1.0]}}),
     "low must be below high"),
    (lambda c: c["tune"]["space"]["dsgd"].update({"optimizer_config.no_such_key": {"uniform": [1.0, 2.0]}}),
     "no_such_key: unknown key"),
    (lambda c: c.pop("tune"), "tune: a tuning config needs a top-level tune block"),
])
def test_bad_tuning_configs_are_refused_with_one_line(tmp_path, capsys, change, message):
    import copy

    cfg = copy.deepcopy(TUNING)
    change(cfg)
    config = write(tmp_path, cfg)
    assert tune_main([str(config), "--output-dir", str(tmp_path / "never")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "never").exists()


def test_run_py_refuses_a_tuning_config_with_a_hint(tmp_path, capsys):
    config = write(tmp_path)
    assert run_main([str(config), "--output-dir", str(tmp_path / "never")]) == 2
    line = capsys.readouterr().err.strip()
    assert "tune" in line and "tune.py" in line


def test_the_shipped_comparison_tunes_every_pair_on_one_budget():
    from experiments.config import load_yaml
    from experiments.tuning import validate_tuning

    tune, cfg = validate_tuning(load_yaml(REPO_ROOT / "experiments" / "configs" / "mnist_algorithms_tune.yaml"))
    assert set(tune["space"]) == set(cfg["problem_configs"])  # every pair is tuned
    algorithms = {pc["optimizer_config"]["alg_name"] for pc in cfg["problem_configs"].values()}
    from optimizers import OPTIMIZERS

    assert algorithms == set(OPTIMIZERS)  # every algorithm the project has
    compressors = {pc["optimizer_config"].get("compressor", {}).get("name") for pc in cfg["problem_configs"].values()}
    assert {"top_k", "qsgd"} <= compressors


def test_stop_after_judges_a_trial_on_the_first_rounds_of_the_full_schedule(tmp_path):
    """tune.stop_after: the trial trains the first R rounds of its (full-length) schedule and is judged there:
    its objective is the one a run of the whole schedule records at round R."""
    from experiments.tuning import validate_tuning

    cfg = {**TUNING, "tune": {**TUNING["tune"], "rounds": 100, "stop_after": 30, "seeds": [0], "trials": 1,
                              "space": {"dsgd": {"optimizer_config.mu": {"choice": [0.5]}}}}}
    cfg["problem_configs"]["dsgd"]["optimizer_config"]["mu"] = 0.5
    out = tmp_path / "out"
    assert tune_main([str(write(tmp_path, cfg)), "--output-dir", str(out), "--quiet"]) == 0
    (row,) = trials(out)
    assert row["state"] == "complete" and row["last_reported_round"] == "30"
    whole = {key: value for key, value in cfg.items() if key != "tune"}
    whole["problem_configs"] = {"dsgd": cfg["problem_configs"]["dsgd"]}
    run_out = tmp_path / "run"
    assert run_main([str(write_plain(tmp_path, whole)), "--output-dir", str(run_out), "--quiet"]) == 0
    with open(run_out / "dsgd_metrics.csv", newline="") as fh:
        at_30 = [float(r["optimality_gap"]) for r in csv.DictReader(fh) if r["round"] == "30"]
    assert float(row["objective"]) == pytest.approx(sum(at_30) / len(at_30), rel=1e-12)
    for bad, message in (({"stop_after": 25}, "multiple of problem_configs.dsgd.metrics_config.evaluate_frequency"),
                         ({"stop_after": 200}, "beyond the 100 rounds")):
        with pytest.raises(Exception, match=message):
            validate_tuning({**cfg, "tune": {**cfg["tune"], **bad}})


def write_plain(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
