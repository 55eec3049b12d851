"""Nothing lost: atomic files, signals at any moment, kill -9 and --resume, reproducible reruns."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from experiments.run_record import run_is_live
from experiments.runner import main
from foundation import results_io
from optimizers.dinno import DiNNO
from optimizers.local import LocalTraining
from problems.node_stack import NodeStack
from tests.helpers.density import make_plan, tiny_online_config
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import (
    SETS,
    crash_once,
    long_tiny,
    manifest_of,
    run,
    same_results,
    write_config,
)


def start_run(cfg_path, out, *extra):
    return subprocess.Popen([sys.executable, "experiments/run.py", str(cfg_path), "--output-dir", str(out),
                             "--quiet", *SETS, *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------ resume after kill -9

@pytest.mark.integration
def test_kill_9_then_resume_gives_the_uninterrupted_numbers_bit_for_bit(tmp_path):
    cfg_path = write_config(tmp_path, long_tiny())
    reference = tmp_path / "reference"
    assert run(cfg_path, reference) == 0

    out = tmp_path / "killed"
    proc = start_run(cfg_path, out)
    checkpointed = wait_for(lambda: (out / "dsgd_checkpoint.pt").exists())
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert checkpointed, "no checkpoint was written"
    manifest = manifest_of(out)
    assert manifest["status"] == "running" and manifest["pid"] == proc.pid and manifest["host"] == socket.gethostname()
    assert not run_is_live(manifest)  # the process is gone: a reader can tell it crashed
    statuses = {p["problem_name"]: p["status"] for p in manifest["pairs"]}
    assert statuses["dinno"] == "completed" and statuses["dsgd"] == "running"
    assert statuses["dsgt"] == statuses["centralized"] == "not started"
    assert not (out / "dinno_checkpoint.pt").exists()  # finished pairs drop their checkpoint

    dinno_before = (out / "dinno_metrics.csv").read_bytes()
    assert main(["--resume", str(out), "--quiet"]) == 0
    manifest = manifest_of(out)
    assert manifest["status"] == "completed" and len(manifest["resumed"]) == 1
    assert (out / "dinno_metrics.csv").read_bytes() == dinno_before  # kept as it was
    assert not list(out.glob("*_checkpoint.pt"))
    same_results(reference, out, ["dinno", "dsgd", "dsgt", "centralized"])


@pytest.mark.integration
@pytest.mark.parametrize("crashing", ["dinno", "centralized"])
def test_a_crashed_online_density_pair_resumes_with_its_windows_positions_and_graph(tmp_path, monkeypatch, crashing):
    plan = make_plan(tmp_path / "plan")
    cfg = tiny_online_config(plan, rounds=16)
    cfg["experiment"]["execution"] = "grouped"
    cfg["experiment"]["checkpoint_every"] = 3
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg_path = write_config(tmp_path, cfg)
    reference = tmp_path / "reference"
    assert main([str(cfg_path), "--output-dir", str(reference), "--quiet"]) == 0

    crash_once(monkeypatch, DiNNO if crashing == "dinno" else LocalTraining, 11)
    out = tmp_path / "crashed"
    assert main([str(cfg_path), "--output-dir", str(out), "--quiet"]) == 1
    pair = next(p for p in manifest_of(out)["pairs"] if p["problem_name"] == crashing)
    assert pair["status"] == "failed" and pair["checkpoint_round"] == 9
    monkeypatch.undo()
    assert main(["--resume", str(out), "--quiet"]) == 0
    same_results(reference, out, ["dinno", "dsgd", "dsgt", "centralized"])


def test_resume_refuses_changed_configs_live_runs_and_foreign_folders(tmp_path, capsys):
    cfg = long_tiny(rounds=4)
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 0
    capsys.readouterr()

    def refused(args, words):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(w in err[0] for w in words), err

    before = sorted(p.name for p in out.iterdir())
    refused(["--resume", str(out), "--set", "experiment.seed=5"], ["experiment.seed", "outer_iterations"])
    refused(["--resume", str(tmp_path)], ["not an output folder"])
    refused(["--resume", str(out), str(tmp_path / "cfg.yaml")], ["either"])
    manifest = manifest_of(out)
    live = {**manifest, "status": "running", "pid": os.getppid(), "host": socket.gethostname(),
            "heartbeat": dt.datetime.now().isoformat(timespec="seconds")}
    results_io.write_json(out / "manifest.json", live)
    refused(["--resume", str(out)], ["still live", str(os.getppid())])
    assert sorted(p.name for p in out.iterdir()) == before
    results_io.write_json(out / "manifest.json", manifest)
    # rounds may change, but not for a pair that finished: it keeps no state to go on from (never ignored)
    refused(["--resume", str(out), "--quiet", "--set", "problem_configs.problem2.optimizer_config.outer_iterations=6"],
            ["pair dsgd completed after its 4 rounds", "6 rounds need a new run"])


def test_liveness_from_pid_host_and_heartbeat():
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    base = {"status": "running", "host": "elsewhere", "pid": 1, "heartbeat_interval_s": 15,
            "heartbeat": now.isoformat()}
    assert run_is_live(base, now + dt.timedelta(seconds=30))
    assert not run_is_live(base, now + dt.timedelta(seconds=120))  # stale heartbeat
    assert not run_is_live({**base, "status": "completed"}, now)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not run_is_live({**base, "host": socket.gethostname(), "pid": dead.pid}, now)


# ------------------------------------------------------------------------------------------ signals

@pytest.mark.integration
def test_any_number_of_ctrl_c_ends_cleanly_with_every_pair_listed(tmp_path):
    cfg_path = write_config(tmp_path, long_tiny(rounds=100000))
    out = tmp_path / "out"
    proc = start_run(cfg_path, out)
    assert wait_for(lambda: (out / "manifest.json").exists())
    time.sleep(1.5)
    while proc.poll() is None:  # keep pressing Ctrl-C, also while results are being written
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    manifest = manifest_of(out)
    assert manifest["status"] == "interrupted"
    assert [p["status"] for p in manifest["pairs"]] == ["interrupted", "not started", "not started", "not started"]
    assert torch.load(out / "dinno_results.pt", weights_only=True)["round"][0] == 0
    assert (out / "summary.csv").is_file() and not list(out.glob(".*tmp*"))


@pytest.mark.integration
@pytest.mark.parametrize("delay", [0.3, 2.0])
def test_ctrl_c_while_starting_exits_130_with_one_line(tmp_path, delay):
    cfg_path = write_config(tmp_path, long_tiny(rounds=100000))
    out = tmp_path / "out"
    proc = start_run(cfg_path, out)
    time.sleep(delay)
    if (out / "manifest.json").exists():
        pytest.skip("the run had already started on this machine")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if out.exists():  # setup had finished: the run is consistent and marked interrupted
        assert manifest_of(out)["status"] == "interrupted"


# ------------------------------------------------------------------------------------ atomic files

def test_a_write_that_dies_halfway_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "dinno_results.pt"
    results_io.torch_save({"round": [0, 1]}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        results_io.torch_save({"round": [0, 1, 2]}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"round": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["dinno_results.pt"]


# ----------------------------------------------------------------------------- reproducible reruns

@pytest.mark.integration
def test_identical_reruns_with_automatic_execution_are_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDT_PLAN_CACHE", str(tmp_path / "plans.json"))
    cfg_path = write_config(tmp_path, long_tiny(rounds=30, execution="auto"))
    assert run(cfg_path, tmp_path / "a") == 0
    assert run(cfg_path, tmp_path / "b") == 0
    same_results(tmp_path / "a", tmp_path / "b", ["dinno", "dsgd", "dsgt", "centralized"])
    first, second = manifest_of(tmp_path / "a"), manifest_of(tmp_path / "b")
    decided = lambda m: {d["decided_by"] for p in m["pairs"] for d in p["node_stack"].values()}  # noqa: E731
    assert "measured" in decided(first) and decided(second) == {"cache"}
    assert first["execution_plan_cache"] == str(tmp_path / "plans.json")


# ------------------------------------------------------------------------------------- divergence

def test_diverged_pair_keeps_its_last_finite_parameters(tmp_path):
    cfg = long_tiny(rounds=40)
    cfg["problem_configs"] = {"p": cfg["problem_configs"]["problem2"]}
    cfg["problem_configs"]["p"]["optimizer_config"]["alpha0"] = 1e4
    cfg["experiment"]["centralized"] = False
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 1
    pair = manifest_of(out)["pairs"][0]
    assert pair["status"] == "diverged"
    saved = torch.load(out / "dsgd_last_finite_params.pt", weights_only=True)
    assert saved["round"] == pair["last_finite_round"] < pair["diverged_round"]
    assert torch.isfinite(saved["theta"]).all() and saved["theta"].shape[0] == 4


# ------------------------------------------------------------------------- models the stack refuses

@pytest.mark.parametrize("layer", [nn.BatchNorm1d(8), nn.Dropout(0.2), nn.LayerNorm(8)])
def test_models_with_modes_or_buffers_are_refused_with_one_clear_line(layer):
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 2))
    if isinstance(layer, nn.LayerNorm):  # parameters only: supported
        NodeStack(model, 3)
        return
    with pytest.raises(ValueError, match=type(layer).__name__):
        NodeStack(model, 3)


@pytest.mark.integration
@pytest.mark.parametrize("asynchrony", [None, {"activation": 0.7, "max_delay": 2, "seed": 1}])
def test_resume_with_lossy_links_a_graph_schedule_and_random_compression_is_bit_identical(tmp_path, monkeypatch,
                                                                                           asynchrony):
    from optimizers.choco import CHOCOSGD as ChocoSGD

    cfg = long_tiny(rounds=12)
    cfg["experiment"].update(links={"drop_prob": 0.3, "seed": 5}, checkpoint_every=3, centralized=False,
                             graph_schedule={"random_edges_per_round": 2, "seed": 6})
    if asynchrony is not None:  # asleep robots and late messages on top
        cfg["experiment"]["asynchrony"] = asynchrony
    cfg["problem_configs"] = {"choco": {
        "problem_name": "choco", "train_batch_size": 16, "val_batch_size": 500,
        "metrics_config": {"evaluate_frequency": 4},
        "optimizer_config": {"alg_name": "choco_sgd", "outer_iterations": 12, "lr": 0.01, "consensus_stepsize": 0.5,
                             "compressor": {"name": "random_k", "fraction": 0.2, "seed": 3}}}}
    # relaxed ADMM keeps a row per edge end; the schedule brings edges it has never seen
    cfg["problem_configs"]["radmm"] = {**cfg["problem_configs"]["choco"], "problem_name": "radmm",
                                       "optimizer_config": {"alg_name": "relaxed_admm", "outer_iterations": 12,
                                                            "rho": 0.5, "primal_iterations": 2,
                                                            "primal_lr_start": 0.005}}
    # push-sum keeps running sums per edge and draws out-neighbours per round
    cfg["problem_configs"]["sgp"] = {**cfg["problem_configs"]["choco"], "problem_name": "sgp",
                                     "optimizer_config": {"alg_name": "sgp", "outer_iterations": 12, "lr": 0.01,
                                                          "out_neighbors": 1, "direction_seed": 2}}
    cfg_path = write_config(tmp_path, cfg)
    assert run(cfg_path, tmp_path / "reference") == 0
    crash_once(monkeypatch, ChocoSGD, 8)
    out = tmp_path / "crashed"
    assert run(cfg_path, out) == 1
    assert manifest_of(out)["pairs"][0]["checkpoint_round"] == 6
    monkeypatch.undo()
    assert main(["--resume", str(out), "--quiet"]) == 0
    same_results(tmp_path / "reference", out, ["choco", "radmm", "sgp"])


def test_a_checkpoint_with_the_earlier_network_layout_still_resumes():
    """Checkpoints once kept the lossy links' held rows at the network state's top level."""
    import networkx as nx

    from optimizers.comm.network import InProcessNetwork

    def lossy():
        net = InProcessNetwork(nx.cycle_graph(4))
        net.set_links(0.5, seed=3)
        return net

    net, x = lossy(), torch.arange(8.0).reshape(4, 2)
    for _ in range(3):
        net.mix(x)
    saved = net.state_dict()
    flat = {**{k: v for k, v in saved.items() if k != "held"}, **saved["held"]}
    now, earlier = lossy(), lossy()
    now.load_state_dict(saved)
    earlier.load_state_dict(flat)
    assert earlier.held.edge_ids == now.held.edge_ids and len(now.held.edge_ids) == 8
    for channel in now.held.last_rows:
        assert torch.equal(earlier.held.last_rows[channel], now.held.last_rows[channel])
        assert torch.equal(earlier.held.arrived[channel], now.held.arrived[channel])
    assert torch.equal(earlier.mix(x + 1), now.mix(x + 1))
