"""``experiments/run.py`` under ``torchrun``: K real gloo processes give the numbers of one process.

Each test launches ``python -m torch.distributed.run --standalone --nproc-per-node K experiments/run.py``
(what the ``torchrun`` command runs) on a small config, and compares the per-robot metrics CSVs with
the one-process run of the same config: float64 within 1e-9, float32 within 1e-4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from experiments.runner import main
from tests.helpers.density import make_plan, tiny_online_config
from tests.helpers.distributed import REPO, assert_same_metrics, one_process, tiny_mnist_config, torchrun, write_config

pytestmark = pytest.mark.integration  # real subprocesses: torchrun workers, notebook kernels

PAIRS = ("dinno", "dsgd", "dsgt")


@pytest.fixture(scope="module")
def mnist_one_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    config = write_config(tiny_mnist_config(), folder)
    one_process(config, folder / "k1")
    return config, folder / "k1"


@pytest.mark.parametrize("k", [2, 3])
def test_mnist_under_torchrun_matches_one_process_float64(mnist_one_process, tmp_path, k):
    config, one = mnist_one_process
    done = torchrun(k, config, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    many = tmp_path / "out"
    assert_same_metrics(one, many, PAIRS + ("individual", "centralized"), 1e-9)
    manifest = json.loads((many / "manifest.json").read_text())
    blocks = {2: [[0, 3], [3, 5]], 3: [[0, 2], [2, 4], [4, 5]]}[k]
    assert manifest["distributed"] == {"backend": "gloo", "world_size": k, "robots_per_rank": blocks}
    assert manifest["status"] == "completed"
    assert all(p["status"] == "completed" for p in manifest["pairs"])
    one_manifest = json.loads((one / "manifest.json").read_text())
    assert [p["bytes_sent_total"] for p in manifest["pairs"]] == [p["bytes_sent_total"] for p in one_manifest["pairs"]]
    # rank 0 alone prints: one table
    assert done.stdout.count("results: ") == 1


def test_mnist_float32_under_torchrun_within_1e_4(tmp_path):
    # Per-robot models ("loop"): a robot's arithmetic then does not depend on which robots share its
    # stacked call; grouped kernels round differently with the block's size, and DiNNO's fresh Adam steps
    # (about lr * sign(gradient)) amplify last-bit differences about tenfold per round in float32.
    cfg = tiny_mnist_config("float32")
    cfg["experiment"]["execution"] = "loop"
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(3, config, tmp_path / "k3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_metrics(tmp_path / "k1", tmp_path / "k3", PAIRS + ("individual", "centralized"), 1e-4)


def static_density_config(plan: Path) -> dict:
    cfg = tiny_online_config(plan, rounds=20)
    exp = cfg["experiment"]
    exp.update(problem="density", dtype="float64", execution="grouped")
    exp["individual_training"]["train_solo"] = False
    for key in ("num_scans_in_window", "window_step"):
        exp["data"].pop(key)
    exp["data"].update(split_type="random", num_scans=10)
    exp["graph"] = {"num_nodes": 3, "type": "complete"}
    for pc in cfg["problem_configs"].values():
        pc.pop("comm_radius")
        pc["dynamic_graph"] = False
        pc["metrics"] = [m for m in pc["metrics"] if m not in ("current_position", "current_graph")]
        pc["metrics_config"].update(evaluate_frequency=5, mesh_only_at_end=True)
    return cfg


def online_density_config(plan: Path) -> dict:
    cfg = tiny_online_config(plan, rounds=20)
    cfg["experiment"].update(dtype="float64", execution="grouped")
    for pc in cfg["problem_configs"].values():
        pc["metrics_config"].update(evaluate_frequency=5)
    return cfg


@pytest.mark.parametrize("kind", ["static", "online"])
def test_density_under_torchrun_matches_one_process(tmp_path, kind):
    plan = make_plan(tmp_path / "plan")
    cfg = (static_density_config if kind == "static" else online_density_config)(plan)
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    names = PAIRS + (("individual", "centralized") if kind == "online" else ())
    for k in (2, 3):
        done = torchrun(k, config, tmp_path / f"k{k}")
        assert done.returncode == 0, done.stderr[-2000:]
        assert_same_metrics(tmp_path / "k1", tmp_path / f"k{k}", names, 1e-9)
        one = torch.load(tmp_path / "k1" / "dinno_results.pt", weights_only=True)
        many = torch.load(tmp_path / f"k{k}" / "dinno_results.pt", weights_only=True)
        assert torch.allclose(one["mesh_grid_density"][-1], many["mesh_grid_density"][-1], atol=1e-6)
        assert one["map_balanced_accuracy"][-1].tolist() == many["map_balanced_accuracy"][-1].tolist()
        if kind == "online":  # the robots moved, the graph changed, identically
            assert torch.equal(one["current_position"][-1], many["current_position"][-1])
            assert [g.tolist() for g in one["current_graph"]] == [g.tolist() for g in many["current_graph"]]
            assert any(not torch.equal(one["current_graph"][0], g) for g in one["current_graph"])


def test_rl_under_torchrun_matches_one_process(tmp_path):
    """Every process simulates the team's shared episodes with the gathered policies and keeps its own robots'
    samples: the one-process numbers, batch rewards included, on 2 and 3 processes."""
    from tests.helpers.rl import tiny

    cfg = tiny(execution="grouped")
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    names = ("dinno", "dsgt", "individual", "centralized")
    for k in (2, 3):
        done = torchrun(k, config, tmp_path / f"k{k}")
        assert done.returncode == 0, done.stderr[-2000:]
        assert_same_metrics(tmp_path / "k1", tmp_path / f"k{k}", names, 1e-9)
        for name in names:
            one = torch.load(tmp_path / "k1" / f"{name}_results.pt", weights_only=True)
            many = torch.load(tmp_path / f"k{k}" / f"{name}_results.pt", weights_only=True)
            assert many["batch_episode_reward"] == pytest.approx(one["batch_episode_reward"], abs=1e-9), name


def test_more_processes_than_robots_is_refused_with_one_line(tmp_path):
    cfg = tiny_mnist_config()
    cfg["experiment"]["graph"]["num_nodes"] = 2
    cfg["experiment"]["data_split_type"] = "random"
    config = write_config(cfg, tmp_path)
    done = torchrun(3, config, tmp_path / "out", timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: torchrun --nproc-per-node: world size 3 exceeds the 2 robots: every rank must host "
                     "at least one robot (use at most 2 processes)"]
    assert not (tmp_path / "out").exists()


def test_lossy_links_and_random_compression_under_torchrun_match_one_process(tmp_path):
    """Lost messages and random compressors draw counter-based per (seed, exchange, edge / robot), so
    two processes lose the same messages and compress the same way as one."""
    cfg = tiny_mnist_config(rounds=12)
    cfg["experiment"]["links"] = {"drop_prob": 0.3, "seed": 5}
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    cfg["problem_configs"]["p5"] = {**cfg["problem_configs"]["p2"], "problem_name": "deepsqueeze",
                                    "optimizer_config": {"alg_name": "deepsqueeze", "outer_iterations": 12, "lr": 0.01,
                                                         "consensus_stepsize": 0.5,
                                                         "compressor": {"name": "random_k", "fraction": 0.2,
                                                                        "seed": 1}}}
    cfg["problem_configs"]["p4"] = {**cfg["problem_configs"]["p2"], "problem_name": "choco",
                                    "optimizer_config": {"alg_name": "choco_sgd", "outer_iterations": 12, "lr": 0.01,
                                                         "consensus_stepsize": 0.5,
                                                         "compressor": {"name": "qsgd", "levels": 8, "seed": 2}}}
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(2, config, tmp_path / "k2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_metrics(tmp_path / "k1", tmp_path / "k2", PAIRS + ("choco", "deepsqueeze"), 1e-9)


def test_a_nan_robot_under_torchrun_is_isolated_as_in_one_process(tmp_path):
    """A robot that sends NaN from round 4, on a rank of its own: every rank drops its rows like lost messages
    (the held row is used), the pairs complete with finite parameters, and the numbers are one process's."""
    cfg = tiny_mnist_config(rounds=12)
    cfg["experiment"]["faults"] = [{"robots": [1], "kind": "nan", "from_round": 4}]
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(3, config, tmp_path / "k3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_metrics(tmp_path / "k1", tmp_path / "k3", PAIRS, 1e-9)
    for name in PAIRS:
        final = torch.load(tmp_path / "k3" / f"{name}_final_params.pt", weights_only=True)
        assert final.shape[0] == 5 and torch.isfinite(final).all(), name
        dropped = [torch.as_tensor(torch.load(tmp_path / k / f"{name}_results.pt", weights_only=True)
                                   ["messages_dropped"][-1]) for k in ("k1", "k3")]
        assert torch.equal(dropped[0], dropped[1]) and dropped[1][[0, 2]].min() > 0, name  # robot 1's neighbours
    manifest = json.loads((tmp_path / "k3" / "manifest.json").read_text())
    assert all(p["status"] == "completed" for p in manifest["pairs"])


def test_a_refused_config_under_torchrun_prints_its_one_line(tmp_path):
    config = write_config(tiny_mnist_config(), tmp_path)
    done = torchrun(2, config, tmp_path / "out", "--set", "experiment.graph.num_nodes=0", timeout=120)
    assert done.returncode != 0  # torchrun reports a failed worker as 1, whatever its status
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: experiment.graph.num_nodes: must be at least 1, got 0"]
    assert not (tmp_path / "out").exists()


def wait_for_pairs(out: Path, ready, failure: str, limit_s: float = 240) -> None:
    """Poll the run's manifest until ``ready(pairs)``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        manifest = out / "manifest.json"
        if manifest.is_file() and ready(json.loads(manifest.read_text())["pairs"]):
            return
        time.sleep(0.5)
    pytest.fail(failure)


def test_a_killed_rank_ends_the_others_with_one_line_and_keeps_finished_pairs(tmp_path):
    cfg = tiny_mnist_config(rounds=4000)
    cfg["problem_configs"]["p1"]["optimizer_config"]["outer_iterations"] = 5  # finishes first
    cfg["experiment"]["dist_timeout_s"] = 30
    cfg["experiment"]["centralized"] = False
    cfg["experiment"]["individual_training"]["train_solo"] = False
    config = write_config(cfg, tmp_path)
    out = tmp_path / "out"
    launcher = torchrun(3, config, out, wait=False)
    try:
        wait_for_pairs(out, lambda pairs: pairs[0]["status"] == "completed" and pairs[1]["status"] == "running",
                       "the second pair never started")
        time.sleep(2)
        victim = rank_pid(launcher.pid, rank=2)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=cfg["experiment"]["dist_timeout_s"] + 60)
        assert time.monotonic() - killed_at < cfg["experiment"]["dist_timeout_s"] + 30
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    lost = [line for line in stderr.splitlines() if line.startswith("error: rank")]
    assert lost and all("lost" in line for line in lost), stderr[-3000:]
    assert any("rank 2" in line for line in lost)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    statuses = {p["problem_name"]: p["status"] for p in manifest["pairs"]}
    assert statuses["dinno"] == "completed" and statuses["dsgd"] == "failed"
    assert (out / "dinno_metrics.csv").is_file() and (out / "summary.csv").is_file()
    assert len(pd.read_csv(out / "dinno_metrics.csv")) == 2 * 5  # rounds 0 and 5, 5 robots


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker process with RANK=rank among the launcher's children."""
    for _ in range(100):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            if ppid == launcher_pid and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher_pid}")


def test_ctrl_c_on_the_launcher_ends_every_rank_and_keeps_the_results(tmp_path):
    cfg = tiny_mnist_config(rounds=4000)
    cfg["experiment"]["centralized"] = False
    cfg["experiment"]["individual_training"]["train_solo"] = False
    config = write_config(cfg, tmp_path)
    out = tmp_path / "out"
    launcher = torchrun(2, config, out, wait=False)
    try:
        wait_for_pairs(out, lambda pairs: pairs[0]["status"] == "running", "the first pair never started")
        time.sleep(3)
        os.killpg(launcher.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the whole job
        stdout, stderr = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert "KeyboardInterrupt" not in stderr
    assert not [line for line in stderr.splitlines() if line.startswith("error: rank")], stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [p["status"] for p in manifest["pairs"]] == ["interrupted", "not started", "not started"]
    rows = pd.read_csv(out / "dinno_metrics.csv")
    assert len(rows) >= 5 and (out / "summary.csv").is_file()


def checkpointed_config(rounds: int) -> dict:
    """Every kind of state a checkpoint must carry: Adam moments and duals (DiNNO), trackers (DSGT),
    random compression draws and error feedback (DeepSqueeze random-k), rows held from lossy links, a random graph schedule,
    batch streams and metrics."""
    cfg = tiny_mnist_config(rounds=rounds)
    exp = cfg["experiment"]
    exp.update(execution="loop", centralized=True, checkpoint_every=3)
    exp["individual_training"]["train_solo"] = False
    exp["links"] = {"drop_prob": 0.2, "seed": 7}
    exp["graph_schedule"] = {"random_edges_per_round": 4, "seed": 2}
    p2 = cfg["problem_configs"]["p2"]
    cfg["problem_configs"]["p4"] = {**p2, "problem_name": "deepsqueeze",
                                    "optimizer_config": {"alg_name": "deepsqueeze", "lr": 0.01, "consensus_stepsize": 0.5,
                                                         "outer_iterations": p2["optimizer_config"]["outer_iterations"],
                                                         "compressor": {"name": "random_k", "fraction": 0.3, "seed": 3}}}
    return cfg


def same_results(a: Path, b: Path, names) -> None:
    """Parameters and every metric bit for bit, except the consensus error: across processes it is
    summed from the blocks' parts (one all_reduce), which rounds differently (within 1e-12 here)."""
    for name in names:
        x, y = pd.read_csv(a / f"{name}_metrics.csv"), pd.read_csv(b / f"{name}_metrics.csv")
        rounded = [c for c in x.columns if c == "consensus_error"]
        pd.testing.assert_frame_equal(x.drop(columns=rounded), y.drop(columns=rounded), check_exact=True)
        for column in rounded:
            assert (x[column] - y[column]).abs().max() <= 1e-12, name
        assert torch.equal(torch.load(a / f"{name}_final_params.pt", weights_only=True),
                           torch.load(b / f"{name}_final_params.pt", weights_only=True)), name


def interrupt_after(launcher, out: Path, pair: str, round_index: int) -> None:
    """Ctrl-C on the whole job once ``pair`` has a checkpoint after ``round_index`` or later."""
    try:
        wait_for_pairs(out, lambda pairs: any(p["problem_name"] == pair and p.get("checkpoint_round", 0) >= round_index
                                              for p in pairs), f"{pair} never reached round {round_index}")
        os.killpg(launcher.pid, signal.SIGINT)
        launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.mark.parametrize("resume_on", [3, 1])
def test_a_run_of_two_processes_resumes_on_another_number_bit_for_bit(tmp_path, resume_on):
    cfg = checkpointed_config(rounds=150)
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    out = tmp_path / "out"
    interrupt_after(torchrun(2, config, out, wait=False), out, "dsgd", 9)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and (out / "dsgd_checkpoint.pt").is_file()
    if resume_on == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(["--resume", str(out), "--quiet"]) == 0
        finally:
            torch.set_num_threads(threads)
    else:
        done = torchrun(resume_on, None, None, "--resume", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
    same_results(tmp_path / "k1", out, PAIRS + ("deepsqueeze", "centralized"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["resumed"]) == 1


def test_a_one_process_run_resumes_under_torchrun(tmp_path):
    cfg = checkpointed_config(rounds=150)
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    alone = subprocess.Popen([sys.executable, str(REPO / "experiments" / "run.py"), str(config), "--output-dir",
                              str(out), "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    interrupt_after(alone, out, "dsgd", 9)
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    done = torchrun(2, None, None, "--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    same_results(tmp_path / "k1", out, PAIRS + ("deepsqueeze", "centralized"))


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_with_the_uninterrupted_numbers(tmp_path):
    cfg = checkpointed_config(rounds=150)
    # a survivor waiting on the lost rank gives up before torchrun's 30 s grace for stopping workers ends
    cfg["experiment"]["dist_timeout_s"] = 10
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    out = tmp_path / "out"
    job = torchrun(2, config, out, wait=False, launcher=("--max-restarts=1",))
    try:
        wait_for_pairs(out, lambda pairs: any(p["problem_name"] == "dsgd" and p.get("checkpoint_round", 0) >= 9
                                              for p in pairs), "dsgd never reached a checkpoint")
        # the worker itself (a direct child of the launcher), never a process it forked: pids wrap around
        os.kill(rank_pid(job.pid, rank=1), signal.SIGKILL)  # kill -9 of rank 1 mid-run
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr[-3000:]
    same_results(tmp_path / "k1", out, PAIRS + ("deepsqueeze", "centralized"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    (restart,) = manifest["restarts"]
    assert restart["restart"] == 1 and restart["from_rounds"]["dsgd"] >= 9
    assert any("rank 1" in line for line in restart["lost"]), restart


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_of_two_processes_give_the_one_process_numbers(tmp_path):
    """Two torchrun agents on this machine stand for two hosts (c10d rendezvous on localhost)."""
    cfg = checkpointed_config(rounds=12)
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    endpoint = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    hosts = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=two_hosts",
                               str(REPO / "experiments" / "run.py"), str(config), "--quiet", "--output-dir",
                               str(tmp_path / "k4")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    try:
        outputs = [h.communicate(timeout=600) for h in hosts]
    finally:
        for h in hosts:
            if h.poll() is None:
                os.killpg(h.pid, signal.SIGKILL)
    assert [h.returncode for h in hosts] == [0, 0], [o[1][-1500:] for o in outputs]
    manifest = json.loads((tmp_path / "k4" / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 4
    same_results(tmp_path / "k1", tmp_path / "k4", PAIRS + ("deepsqueeze", "centralized"))


def test_a_scaling_sweep_under_torchrun_matches_one_process(tmp_path):
    sweep = {
        "experiment": {"name": "sweep", "dataset": "mnist_subset", "validation_size": 100, "seed": 1,
                       "dtype": "float64", "execution": "loop",
                       "links": {"drop_prob": 0.2, "seed": 4},
                       "scaling": {"const": "fiedler", "min_N": 4, "max_N": 5, "target_fied": 0.5,
                                   "num_trials": 2, "target_fraction": 0.5}},
        "problem_configs": {
            "p1": {"problem_name": "dsgd", "train_batch_size": 8, "metrics_config": {"evaluate_frequency": 3},
                   "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 6, "alpha0": 0.05}},
            "p2": {"problem_name": "dinno", "train_batch_size": 8, "metrics_config": {"evaluate_frequency": 3},
                   "optimizer_config": {"alg_name": "dinno", "outer_iterations": 6, "rho_init": 0.3,
                                        "primal_lr_start": 0.005}},
        },
    }
    config = write_config(sweep, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(2, config, tmp_path / "k2")
    assert done.returncode == 0, done.stderr[-2000:]
    for trial in ("trial_00", "trial_01"):
        same_results(tmp_path / "k1" / trial, tmp_path / "k2" / trial, ("dsgd", "dinno"))
    one, many = pd.read_csv(tmp_path / "k1" / "scaling.csv"), pd.read_csv(tmp_path / "k2" / "scaling.csv")
    keep = ["trial", "num_nodes", "fiedler", "problem_name", "status", "rounds", "final_top1_mean",
            "final_validation_loss_mean", "target_accuracy", "rounds_to_target", "bytes_sent_per_node"]
    pd.testing.assert_frame_equal(one[keep], many[keep], check_exact=True)
    assert json.loads((tmp_path / "k2" / "manifest.json").read_text())["distributed"]["world_size"] == 2


@pytest.mark.parametrize("model", ["bursty", "symmetric"])
def test_link_models_under_torchrun_match_one_process(tmp_path, model):
    cfg = tiny_mnist_config(rounds=10)
    cfg["experiment"]["links"] = {"model": model, "drop_prob": 0.3, "seed": 5}
    cfg["experiment"]["individual_training"]["train_solo"] = False
    cfg["experiment"]["centralized"] = False
    cfg["problem_configs"]["p4"] = {**cfg["problem_configs"]["p1"], "problem_name": "radmm",
                                    "optimizer_config": {"alg_name": "relaxed_admm", "outer_iterations": 10,
                                                         "rho": 0.5, "primal_iterations": 2, "primal_lr_start": 0.005}}
    # push-sum: running sums per edge, out-neighbours drawn per round from the whole team's graph
    cfg["problem_configs"]["p5"] = {**cfg["problem_configs"]["p1"], "problem_name": "pushdig",
                                    "optimizer_config": {"alg_name": "push_diging", "outer_iterations": 10,
                                                         "alpha": 0.005, "out_neighbors": 1, "direction_seed": 3}}
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    done = torchrun(2, config, tmp_path / "k2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_metrics(tmp_path / "k1", tmp_path / "k2", PAIRS + ("radmm", "pushdig"), 1e-9)


def test_asynchrony_under_torchrun_is_refused_with_one_line(tmp_path):
    cfg = tiny_mnist_config(rounds=4)
    cfg["experiment"]["asynchrony"] = {"activation": 0.5}
    done = torchrun(2, write_config(cfg, tmp_path), tmp_path / "k2")
    assert done.returncode != 0  # torchrun reports a failed worker as 1, whatever its status
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: experiment.asynchrony: runs in one process only, not under torchrun"]


def test_rank_0_killed_while_a_finished_pair_writes_its_files_is_restarted_and_trains_it_again(tmp_path):
    """kill -9 of the writing rank right after dsgd_results.pt (before the pair is recorded complete); torchrun
    --max-restarts brings the workers back, the pair trains again from its checkpoint, and every number is the
    one-process run's."""
    cfg = checkpointed_config(rounds=60)
    cfg["experiment"]["dist_timeout_s"] = 10
    config = write_config(cfg, tmp_path)
    one_process(config, tmp_path / "k1")
    out = tmp_path / "out"
    os.environ["NNDT_KILL_AFTER_WRITE"] = f"dsgd_results.pt@{tmp_path / 'killed'}"
    try:
        job = torchrun(2, config, out, wait=False, launcher=("--max-restarts=1",))
    finally:
        del os.environ["NNDT_KILL_AFTER_WRITE"]
    try:
        stdout, stderr = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, stderr[-3000:]
    assert (tmp_path / "killed").exists()  # the hook fired once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["restarts"]) == 1
    same_results(tmp_path / "k1", out, PAIRS + ("deepsqueeze", "centralized"))


def test_torchrun_resume_refuses_another_runs_checkpoint_with_one_line(tmp_path):
    cfg = checkpointed_config(rounds=150)
    config = write_config(cfg, tmp_path)
    out = tmp_path / "out"
    interrupt_after(torchrun(2, config, out, wait=False), out, "dsgd", 9)
    other_cfg = checkpointed_config(rounds=150)
    other_cfg["experiment"]["seed"] = 4
    other = tmp_path / "other"
    interrupt_after(torchrun(2, write_config(other_cfg, tmp_path / "o"), other, wait=False), other, "dsgd", 9)
    (out / "dsgd_checkpoint.pt").write_bytes((other / "dsgd_checkpoint.pt").read_bytes())
    done = torchrun(2, None, None, "--resume", str(out))
    assert done.returncode != 0  # torchrun reports a failed worker as 1, whatever its status
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "belongs to another run" in lines[0] and "seed 4" in lines[0], done.stderr[-2000:]
