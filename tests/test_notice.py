"""Nothing wrong without notice: cases that could go silently wrong or end in a traceback (a damaged plan cache,
a full disk, a longer resume, mixed studies, ...), each reproduced, with the refusal or the record it gets."""

from __future__ import annotations

import copy
import errno
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from experiments.runner import main
from problems.node_stack import ExecutionPlanCache, NodeStack
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TINY, data_overrides, run, write_config


def tiny(rounds: int = 4) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=False)
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
    return cfg


# ------------------------------------------------------------------------------------ the plan cache (1-3)
def stack_with(cache: ExecutionPlanCache) -> NodeStack:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    return NodeStack(model, 5, execution="auto", plan_cache=cache)


def plan_key(stack: NodeStack, x: torch.Tensor) -> str:
    return stack._cache_key(x)


@pytest.mark.parametrize("entry", [["vmap", -3], ["vmap", 99], True, ["warp", 2], ["grouped", 2.5], "grouped"])
def test_an_invalid_cached_plan_is_ignored_with_a_note_and_measured_again(tmp_path, caplog, entry):
    cache = ExecutionPlanCache(tmp_path / "plans.json")
    stack = stack_with(cache)
    x, y = torch.randn(5, 8, 3), torch.randn(5, 8, 2)
    key = plan_key(stack, x)
    (tmp_path / "plans.json").write_text(json.dumps({key: entry}))
    with caplog.at_level("WARNING", logger="nndt"):
        plan = stack.plan(stack.theta, x, y, lambda out, target: ((out - target) ** 2).mean((1, 2)))
    assert stack.plan_sources[(8, 3)] == "measured" and 1 <= plan[1] <= 5
    assert any(str(tmp_path / "plans.json") in r.getMessage() and "measured again" in r.getMessage()
               for r in caplog.records)


def test_of_two_runs_measuring_at_once_the_first_to_write_is_kept(tmp_path):
    first, second = ExecutionPlanCache(tmp_path / "plans.json"), ExecutionPlanCache(tmp_path / "plans.json")
    assert first.get("k | nodes 4") is None and second.get("k | nodes 4") is None  # both measure
    assert first.put("k | nodes 4", ("grouped", 4)) == ("grouped", 4)
    assert tuple(second.put("k | nodes 4", ("vmap", 2))) == ("grouped", 4)  # the second adopts the first
    assert json.loads((tmp_path / "plans.json").read_text()) == {"k | nodes 4": ["grouped", 4]}


def test_a_cache_path_that_is_a_folder_is_noted_and_leaves_no_file_behind(tmp_path, caplog):
    folder = tmp_path / "plans.json"
    folder.mkdir()
    cache = ExecutionPlanCache(folder)
    with caplog.at_level("WARNING", logger="nndt"):
        assert cache.put("k | nodes 2", ("vmap", 1)) == ("vmap", 1)
    assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())
    assert any("is a folder" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ every ending (4)
def test_a_full_disk_mid_run_is_recorded_as_failed_with_its_reason(tmp_path, monkeypatch, capsys):
    from foundation import results_io

    original = results_io.torch_save
    calls = {"n": 0}

    def filling(obj, path):
        calls["n"] += 1
        if calls["n"] == 3:  # the disk fills while a pair writes
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(obj, path)

    monkeypatch.setattr(results_io, "torch_save", filling)
    out = tmp_path / "out"
    assert run(write_config(tmp_path, tiny()), out) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left on device" in manifest["error"]
    assert not (out / ".manifest.reserve").exists()  # freed to say so
    assert "cannot write into" in capsys.readouterr().err


@pytest.mark.integration
def test_sighup_ends_a_run_as_interrupted_with_one_line(tmp_path):
    cfg = tiny(rounds=100000)
    out = tmp_path / "out"
    sets = [a for item in data_overrides() for a in ("--set", item)]
    proc = subprocess.Popen([sys.executable, "experiments/run.py", str(write_config(tmp_path, cfg)), "--output-dir",
                             str(out), "--quiet", *sets], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out / "dinno_checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGHUP): results so far are written")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["interrupted_by"] == "SIGHUP"


# ------------------------------------------------------------------------------------ longer resumes (5)
def test_more_rounds_for_a_finished_pair_are_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, tiny()), out) == 0
    capsys.readouterr()
    code = main(["--resume", str(out), "--quiet", "--set", "problem_configs.problem1.optimizer_config.outer_iterations=9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "pair dinno completed after its 4 rounds and keeps no state to train on from; 9 rounds need a new run" in err[0]
    # the one edit the docs allow, made in config.yaml: refused the same way
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["problem_configs"]["problem2"]["optimizer_config"]["outer_iterations"] = 7
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["--resume", str(out), "--quiet"]) == 2
    assert "pair dsgd completed after its 4 rounds" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text()).get("resumed") is None  # nothing recorded as applied


# ------------------------------------------------------------------------------------ corrupt records (6-7)
def test_a_manifest_file_record_of_the_wrong_type_gets_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, tiny()), out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["pairs"][0]["files"]["dinno_results.pt"] = "not a record"
    manifest["status"] = "failed"
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the record of file 'dinno_results.pt' is not {bytes, sha256}" in err[0]
    manifest["pairs"][0]["files"] = {}
    manifest["pairs"][0]["rounds_completed"] = "four"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--resume", str(out), "--quiet"]) == 2
    assert "rounds_completed is str, not int" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_study_database_gets_one_line(tmp_path, capsys, damage):
    from experiments.tuning import main as tune_main
    from tests.helpers.runs import TUNING

    config = tmp_path / "tune.yaml"
    cfg = copy.deepcopy(TUNING)
    cfg["tune"]["trials"] = 1
    cfg["tune"]["rounds"] = 10
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "tune"
    assert tune_main([str(config), "--output-dir", str(out), "--quiet"]) == 0
    db = out / "study.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a database at all" * 100)
    capsys.readouterr()
    assert tune_main(["--resume", str(out), "--trials", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {db}: cannot be read as an Optuna study database")
    assert "move it away" in err[0]


# ------------------------------------------------------------------------------------ numbers that cannot run (8)
def test_a_step_that_overflows_float32_is_refused_at_check(tmp_path, capsys):
    config = write_config(tmp_path, tiny())
    assert main([str(config), "--check", "--set", "problem_configs.problem2.optimizer_config.alpha0=1e308"]) == 2
    assert capsys.readouterr().err.strip() == ("error: problem_configs.problem2.optimizer_config.alpha0: 1e+308 does not "
                                               "fit the run's float32 (at most 3.4e+38); use a smaller value or "
                                               "experiment.dtype: float64")


def test_a_team_that_cannot_fit_is_refused_at_once_with_the_figure(tmp_path, capsys, monkeypatch):
    from experiments.kinds import base

    cfg = tiny()
    cfg["experiment"]["graph"] = {"num_nodes": 200_000, "type": "complete"}
    for pc in cfg["problem_configs"].values():
        pc["train_batch_size"] = 1
    monkeypatch.setattr(base, "available_memory", lambda: 8 << 30)
    config = write_config(tmp_path, cfg)
    start = time.perf_counter()
    code = main([str(config), "--check", "--set", "experiment.dataset=mnist_subset"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.perf_counter() - start < 60
    assert err.startswith("error: problem_configs.") or "GiB are free" in err
    cfg["experiment"]["dataset"] = "mnist_subset"
    cfg["experiment"]["graph"] = {"num_nodes": 2_000, "type": "complete"}
    monkeypatch.setattr(base, "available_memory", lambda: 1 << 20)
    code = main([str(write_config(tmp_path, cfg, "two.yaml")), "--check"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs about" in err and "GiB are free" in err


# ------------------------------------------------------------------------------------ studies that mix (9)
def test_combining_condition_tables_of_different_settings_is_refused(tmp_path, capsys):
    from experiments.conditions import main as conditions_main

    folders = []
    for seed in (0, 1):
        cfg = tiny(rounds=2)
        cfg["experiment"]["seed"] = seed
        del cfg["problem_configs"]["problem1"], cfg["problem_configs"]["problem3"]
        cfg["conditions"] = {f"lossless_{seed}": {}}
        path = tmp_path / f"c{seed}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        folder = tmp_path / f"runs{seed}"
        sets = [a for item in data_overrides() for a in ("--set", item)]
        assert conditions_main([str(path), "--output-dir", str(folder), "--quiet", *sets]) == 0
        folders.append(str(folder))
    capsys.readouterr()
    assert conditions_main(["--combine", *folders, "--output-dir", str(tmp_path / "joined")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was run with other settings than" in err[0] and "experiment.seed" in err[0]
    assert conditions_main(["--combine", *folders, "--output-dir", str(tmp_path / "joined2"),
                            "--allow-different", "experiment.seed"]) == 0
    rows = (tmp_path / "joined2" / "conditions.csv").read_text()
    assert "lossless_0 (experiment.seed=0)" in rows and "lossless_1 (experiment.seed=1)" in rows
