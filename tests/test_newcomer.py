"""What a newcomer meets first: overrides for a whole run, a --check that checks, the Python API, devices and threads
chosen by the run, tables that show each kind's main metric, and the warning about another checkout's package."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from experiments import api
from experiments.config import ConfigError, apply_overrides
from experiments.runner import main
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TINY, data_overrides, write_config


def tiny(rounds: int = 2) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=False)
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
    return cfg


# ------------------------------------------------------------------------------------------- overrides
def test_a_pair_is_named_by_its_key_its_problem_name_or_a_wildcard():
    raw = tiny()
    out = apply_overrides(raw, ["problem_configs.dsgt.train_batch_size=7",  # dsgt is problem3's problem_name
                                "problem_configs.*.metrics_config.evaluate_frequency=3",
                                "problem_configs.problem1.optimizer_config.rho_init=0.25"])
    assert out["problem_configs"]["problem3"]["train_batch_size"] == 7
    assert "dsgt" not in out["problem_configs"]  # no new pair was made
    assert {pc["metrics_config"]["evaluate_frequency"] for pc in out["problem_configs"].values()} == {3}
    assert out["problem_configs"]["problem1"]["optimizer_config"]["rho_init"] == 0.25


def test_an_override_of_a_pair_that_does_not_exist_names_the_pairs():
    with pytest.raises(ConfigError, match=r"problem_configs has no pair problem9; its pairs: problem1 \(dinno\), "
                                          r"problem2 \(dsgd\), problem3 \(dsgt\)"):
        apply_overrides(tiny(), ["problem_configs.problem9.train_batch_size=8"])


def test_rounds_and_eval_every_set_every_pair(tmp_path, capsys):
    config = write_config(tmp_path, tiny(rounds=50))
    sets = [a for item in data_overrides() for a in ("--set", item)]
    assert main([str(config), "--rounds", "3", "--eval-every", "1", "--check", *sets]) == 0
    out = capsys.readouterr().out
    assert out.count(": 3 rounds") == 3
    assert main([str(config), "--rounds", "0", "--check"]) == 2
    assert "--rounds: must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- check
def test_check_reads_the_data_and_prints_what_the_run_would_use(tmp_path, capsys):
    config = write_config(tmp_path, tiny())
    sets = [a for item in data_overrides() for a in ("--set", item)]
    assert main([str(config), "--check", "--output-dir", str(tmp_path / "out"), *sets]) == 0
    out = capsys.readouterr().out
    for line in ("  data: ", "  robots' data: ", "  graph: cycle, 4 robots, 4 edges, connected, Fiedler value 2",
                 "  device: cpu, threads: ", f"  output folder: {tmp_path / 'out'}"):
        assert line in out, line
    assert not (tmp_path / "out").exists()  # nothing written


def test_check_refuses_missing_data_with_one_line(tmp_path, capsys):
    config = write_config(tmp_path, tiny())
    code = main([str(config), "--check", "--set", "experiment.dataset=mnist", "--set",
                 f"experiment.data_dir={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MNIST files missing" in err[0]


# ------------------------------------------------------------------------------------------------- api
def test_the_python_api_runs_a_config_and_reads_its_folder(tmp_path):
    folder = api.run(tiny(), output_dir=tmp_path / "out", overrides=data_overrides() + [
        "problem_configs.*.metrics_config.evaluate_frequency=1"])
    results = api.load(folder)
    assert list(results.summary["problem_name"]) == ["dinno", "dsgd", "dsgt"]
    assert set(results.summary["status"]) == {"completed"}
    assert set(results.metrics["pair"]) == {"dinno", "dsgd", "dsgt"}
    assert sorted(results.metrics.query("pair == 'dsgd'")["round"].unique()) == [0, 1, 2]
    assert results.config["experiment"]["name"] == "tiny"
    assert len(results.history("dinno")["round"]) == 3
    with pytest.raises(KeyError, match="its pairs: dinno, dsgd, dsgt"):
        results.history("../dinno")


def test_the_python_api_raises_with_the_runs_error_line(tmp_path):
    bad = tiny()
    bad["experiment"]["graph"]["num_nodes"] = 0
    with pytest.raises(api.RunError, match="exit status 2: error: experiment.graph.num_nodes") as raised:
        api.run(bad, output_dir=tmp_path / "never")
    assert raised.value.status == 2 and raised.value.folder is None


# ------------------------------------------------------------------------------------- devices, threads
def test_use_cuda_auto_takes_the_cpu_without_a_note_and_true_requires_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    config = write_config(tmp_path, tiny())
    sets = [a for item in data_overrides() for a in ("--set", item)]
    assert main([str(config), "--output-dir", str(tmp_path / "a"), *sets]) == 0
    assert "CUDA" not in capsys.readouterr().err
    assert main([str(config), "--output-dir", str(tmp_path / "b"), "--set", "experiment.use_cuda=true", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: experiment.use_cuda: true requires a CUDA device and none is available; use use_cuda: "
                   "auto (CUDA when present, else the CPU) or --device cpu"]


def test_small_models_run_on_one_thread_and_the_manifest_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    cfg = {"experiment": {"name": "lr", "problem": "logreg", "graph": {"num_nodes": 4, "type": "cycle"}},
           "problem_configs": {"p": {"problem_name": "dsgd", "optimizer_config": {"alg_name": "dsgd", "alpha0": 0.1,
                                                                                  "outer_iterations": 3}}}}
    out = tmp_path / "out"
    assert main([str(write_config(tmp_path, cfg)), "--output-dir", str(out), "--quiet"]) == 0
    threads = json.loads((out / "manifest.json").read_text())["threads"]
    assert threads["count"] == 1 and "31 parameters" in threads["chosen_by"]
    assert torch.get_num_threads() == before  # the run's choice does not outlive it
    cfg["experiment"]["threads"] = 2
    out = tmp_path / "out2"
    assert main([str(write_config(tmp_path, cfg, "two.yaml")), "--output-dir", str(out), "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["threads"] == {"count": 2,
                                                                           "chosen_by": "experiment.threads"}


def test_the_printed_table_shows_each_kinds_main_metric(tmp_path, capsys):
    cfg = {"experiment": {"name": "lr", "problem": "logreg", "graph": {"num_nodes": 4, "type": "cycle"}},
           "problem_configs": {"p": {"problem_name": "dsgd", "optimizer_config": {"alg_name": "dsgd", "alpha0": 0.1,
                                                                                  "outer_iterations": 3}}}}
    assert main([str(write_config(tmp_path, cfg)), "--output-dir", str(tmp_path / "o"), "--quiet"]) == 0
    header = capsys.readouterr().out.strip().splitlines()[0]
    assert "gap mean" in header and "gap worst" in header and "mean-model gap" in header


# ------------------------------------------------------------------------------------------- checkouts
@pytest.mark.integration
def test_a_script_of_another_checkout_warns_that_it_runs_this_package(tmp_path):
    other = tmp_path / "elsewhere" / "experiments"
    other.mkdir(parents=True)
    (other / "run.py").write_text((REPO_ROOT / "experiments" / "run.py").read_text())
    done = subprocess.run([sys.executable, str(other / "run.py"), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr.startswith(f"warning: run.py is in {tmp_path / 'elsewhere'} but imports the package of "
                                  f"{REPO_ROOT}")
    here = subprocess.run([sys.executable, "experiments/run.py", "--help"], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert here.returncode == 0 and "warning" not in here.stderr


# ------------------------------------------------------------------------------------------ tracking
def test_mlflow_tracks_every_pair_in_a_local_store(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
    from mlflow.tracking import MlflowClient

    cfg = tiny(rounds=4)
    cfg["experiment"]["mlflow"] = True
    for pc in cfg["problem_configs"].values():
        pc["metrics_config"]["evaluate_frequency"] = 2
    out = tmp_path / "out"
    assert main([str(write_config(tmp_path, cfg)), "--output-dir", str(out), "--quiet",
                 *[a for item in data_overrides() for a in ("--set", item)]]) == 0
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"dinno", "dsgd", "dsgt"}
    run = runs["dsgd"]
    assert run.data.params["experiment.seed"] == "1" and run.data.params["problem_configs.problem2.optimizer_config.alpha0"]
    assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "top1_accuracy.mean")
    assert [m.step for m in history] == [0, 2, 4]
    final = json.loads((out / "manifest.json").read_text())
    assert 0.0 <= history[-1].value <= 1.0 and final["status"] == "completed"


def test_mlflow_without_an_output_folder_tracks_to_its_uri_and_refuses_true(tmp_path, capsys):
    pytest.importorskip("mlflow", reason="mlflow-skinny is not installed")
    from mlflow.tracking import MlflowClient

    cfg = tiny(rounds=2)
    cfg["experiment"].update(writeout=False, mlflow=True)
    sets = [a for item in data_overrides() for a in ("--set", item)]
    assert main([str(write_config(tmp_path, cfg)), "--quiet", *sets]) == 2
    assert "experiment.mlflow: true keeps the store in the output folder" in capsys.readouterr().err
    store = tmp_path / "runs.db"
    cfg["experiment"]["mlflow"] = f"sqlite:///{store}"
    assert main([str(write_config(tmp_path, cfg, "uri.yaml")), "--quiet", *sets]) == 0
    experiment = MlflowClient(f"sqlite:///{store}").get_experiment_by_name("tiny")
    assert {r.info.run_name for r in MlflowClient(f"sqlite:///{store}").search_runs([experiment.experiment_id])} == \
        {"dinno", "dsgd", "dsgt"}
