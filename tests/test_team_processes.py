"""``experiments/team.py`` and ``experiments/robot.py`` as users run them: one process per robot over Zenoh on this
machine, compared with the one-process run; a robot killed and restarted; an outsider on the team's keys; a robot
with the wrong key; real packet loss from the kernel in a network namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from foundation.results_io import check_files
from optimizers.comm import team_messages as tm
from tests.helpers.distributed import free_port_block, one_process, tiny_mnist_config, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def team_config(folder: Path, rounds: int = 20, deadline_ms: float = 60000.0, **team) -> Path:
    cfg = tiny_mnist_config(rounds=rounds)
    cfg["experiment"]["threads"] = 1
    cfg["experiment"]["team"] = {"deadline_ms": deadline_ms, "base_port": free_port_block(5),
                                 "start_timeout_s": 60.0, **team}
    return write_config(cfg, folder)


def team_command(config: Path, out: Path, *extra: str) -> list[str]:
    return [PYTHON, str(REPO / "experiments" / "team.py"), str(config), "--output-dir", str(out), "--quiet", *extra]


def run_team(config: Path, out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(team_command(config, out, *extra), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def pairs(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return {p["problem_name"]: p for p in manifest["pairs"]}


def exact_team_config(folder: Path) -> Path:
    """Every row in time also on a loaded machine: a generous deadline, senders that wait on a congested link
    rather than drop, and neighbours that stay present through long pauses."""
    return team_config(folder, congestion="block", silent_after_s=600.0)


def every_row_was_fresh(out: Path, pair: str) -> None:
    for robot, facts in enumerate(pairs(out)[pair]["team"]["per_robot"]):
        late = {k: (facts or {}).get(k, 0) for k in ("missing", "used_held")}
        assert not any(late.values()), f"{pair}: robot {robot} went on without a fresh row: {late}"


def test_ten_steps_of_every_pair_match_the_one_process_run_in_float64(tmp_path):
    """With every row there in time, each robot computes what the one-process run computes for it: every metric
    within 1e-9 (the robots' own arithmetic is that of a one-robot block, as under torchrun), except the
    consensus error, which a robot measures over its neighbourhood."""
    config = exact_team_config(tmp_path)
    one_process(config, tmp_path / "one")
    done = run_team(config, tmp_path / "team")
    assert done.returncode == 0, done.stderr[-3000:]
    team = tmp_path / "team"
    for name in ("dinno", "dsgd", "dsgt"):
        every_row_was_fresh(team, name)
    for name in ("dinno", "dsgd", "dsgt", "individual", "centralized"):
        a = pd.read_csv(tmp_path / "one" / f"{name}_metrics.csv")
        b = pd.read_csv(team / f"{name}_metrics.csv")
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, name
        for column in a.columns:
            if column == "consensus_error" or a[column].dtype == object:
                continue
            assert (a[column] - b[column]).abs().max() <= 1e-9, (name, column)
    facts = pairs(team)
    assert all(p["status"] == "completed" for p in facts.values())
    assert facts["dinno"]["team"].get("missing", 0) == 0 and facts["dinno"]["team"].get("used_held", 0) == 0
    assert facts["dinno"]["team"]["used_fresh"] == 20 * 10  # 20 rounds, 5 robots with 2 neighbours each
    assert torch.load(team / "dinno_final_params.pt", weights_only=True).shape[0] == 5
    for name, pair in facts.items():
        assert check_files(team, pair["files"]) is None, name
    assert (team / "summary.csv").is_file() and list((team / "figures").glob("*.png"))
    # the folder reads as any run's: run.py --resume finds every pair finished
    again = subprocess.run([PYTHON, str(REPO / "experiments" / "run.py"), "--resume", str(team), "--quiet"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


def wait_for(condition, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def robot_manifest(out: Path, robot: int) -> dict:
    path = out / "robots" / str(robot) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def checkpointed(out: Path, robot: int, pair: str, round_index: int) -> bool:
    return any(p["problem_name"] == pair and p.get("checkpoint_round", 0) >= round_index
               for p in robot_manifest(out, robot).get("pairs", []))


@pytest.mark.parametrize("restarts", [1, 0])
def test_a_robot_killed_mid_run_restarts_and_rejoins_or_leaves_its_neighbours_on_held_rows(tmp_path, restarts):
    config = team_config(tmp_path, rounds=60, deadline_ms=2000.0, silent_after_s=3.0)
    out = tmp_path / "team"
    team = subprocess.Popen(team_command(config, out, "--pairs", "dsgd", "--max-restarts", str(restarts)), cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: checkpointed(out, 2, "dsgd", 10), "robot 2's checkpoint at round 10")
        os.kill(robot_manifest(out, 2)["pid"], signal.SIGKILL)
        stdout, stderr = team.communicate(timeout=900)
    finally:
        if team.poll() is None:
            team.kill()
    manifest = json.loads((out / "manifest.json").read_text())
    dsgd = pairs(out)["dsgd"]
    if restarts:
        assert team.returncode == 0, stderr[-3000:]
        assert manifest["team"]["restarts"] == {"2": 1}
        assert dsgd["status"] == "completed" and dsgd["rounds_completed"] == 60
        assert dsgd["team"]["per_robot"][2]["incarnation"] == 1
        robot = out / "robots" / "2"
        assert check_files(robot, robot_manifest(out, 2)["pairs"][0]["files"]) is None
        assert len(robot_manifest(out, 2)["resumed"]) == 1
        assert check_files(out, dsgd["files"]) is None
    else:
        assert team.returncode == 1
        assert dsgd["robot_statuses"][2] == "running"  # killed: its folder says it was running
        assert dsgd["robot_statuses"].count("completed") == 4
        neighbours = [dsgd["team"]["per_robot"][i] for i in (1, 3)]
        assert all(n["missing"] + n.get("used_held", 0) > 0 for n in neighbours)
        assert "robot 2 ended with status -9" in stderr


def test_an_outsider_publishing_on_the_team_s_keys_changes_nothing(tmp_path):
    config = exact_team_config(tmp_path)
    clean = run_team(config, tmp_path / "clean", "--pairs", "dinno")
    assert clean.returncode == 0, clean.stderr[-3000:]
    base = __import__("yaml").safe_load(config.read_text())["experiment"]["team"]["base_port"]
    outsider = subprocess.Popen([PYTHON, "-c", OUTSIDER, str(base)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        attacked = run_team(config, tmp_path / "attacked", "--pairs", "dinno")
    finally:
        outsider.terminate()
        outsider.communicate(timeout=30)
    assert attacked.returncode == 0, attacked.stderr[-3000:]
    every_row_was_fresh(tmp_path / "clean", "dinno")
    every_row_was_fresh(tmp_path / "attacked", "dinno")
    a = torch.load(tmp_path / "clean" / "dinno_final_params.pt", weights_only=True)
    b = torch.load(tmp_path / "attacked" / "dinno_final_params.pt", weights_only=True)
    assert torch.equal(a, b)
    assert pairs(tmp_path / "attacked")["dinno"]["team"].get("dropped_unauthenticated", 0) > 0


OUTSIDER = """
import sys, time, torch
from optimizers.comm import team_messages as tm
from optimizers.comm.team_transport import ZenohTransport, endpoint
base = int(sys.argv[1])
transport = ZenohTransport([endpoint("127.0.0.1", base + 7)], [endpoint("127.0.0.1", base + i) for i in range(5)])
forged = tm.encode(b"an outsider's key, not the team's", tm.run_id("x"), tm.ROW, 1, 9, 10**9, "theta",
                   torch.full((3000,), 1e6, dtype=torch.float64))
while True:
    for robot in range(5):
        transport.publish(f"nndt/dinno/{robot}/theta", forged)
    time.sleep(0.01)
"""


def test_a_robot_with_the_wrong_key_gets_nothing_in_and_says_so(tmp_path):
    config = team_config(tmp_path, start_timeout_s=20.0)
    out = tmp_path / "team"
    robot = [PYTHON, str(REPO / "experiments" / "robot.py"), str(config), "--output-dir", str(out), "--quiet",
             "--pairs", "dsgd"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    good = [subprocess.Popen(robot + ["--robot", str(i)], cwd=REPO, env={**env, tm.KEY_ENVIRONMENT: "k" * 32},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1, 3, 4)]
    wrong = subprocess.run(robot + ["--robot", "2"], cwd=REPO, env={**env, tm.KEY_ENVIRONMENT: "w" * 32},
                           capture_output=True, text=True, timeout=600)
    for process in good:
        process.communicate(timeout=900)
    assert wrong.returncode == 2
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed authentication: its team key is not the team's" in errors[0]
    assert all(process.returncode == 0 for process in good)


def netns_unavailable() -> str | None:
    from experiments.netns import unavailable
    return unavailable()


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_real_packet_loss_from_the_kernel_reaches_the_team_and_it_still_finishes(tmp_path):
    from experiments.netns import LossyNamespace

    config = team_config(tmp_path, deadline_ms=300.0, silent_after_s=10.0)
    out = tmp_path / "team"
    with LossyNamespace(loss=0.2) as namespace:
        done = subprocess.run(namespace.command(team_command(config, out, "--pairs", "dsgd")), cwd=REPO,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
        counters = namespace.counters()
    assert done.returncode == 0, done.stderr[-3000:]
    assert counters["dropped_packets"] > 0 and counters["passed_packets"] > counters["dropped_packets"]
    dsgd = pairs(out)["dsgd"]
    assert dsgd["status"] == "completed"
    assert dsgd["team"].get("missing", 0) + dsgd["team"].get("used_held", 0) > 0
    shutil.rmtree(out / "robots")  # the gathered folder stands on its own
    assert check_files(out, dsgd["files"]) is None


def test_the_real_radio_study_runs_its_table_and_figure(tmp_path):
    import csv

    import yaml

    config = team_config(tmp_path, rounds=6)
    raw = yaml.safe_load(config.read_text())
    raw["real_radio"] = {"packet_loss": [0.0, 0.2] if netns_unavailable() is None else [0.0]}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    done = subprocess.run([PYTHON, str(REPO / "experiments" / "real_radio.py"), str(study), "--output-dir",
                           str(tmp_path / "out"), "--pairs", "dsgd", "--quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "real_radio.csv")))
    assert {(r["where"], r["status"]) for r in rows} == {("team", "completed"), ("simulated", "completed")}
    assert len(rows) == 2 * len(raw["real_radio"]["packet_loss"])
    lossless = next(r for r in rows if r["where"] == "team" and float(r["packet_loss"]) == 0.0)
    simulated = next(r for r in rows if r["where"] == "simulated" and float(r["packet_loss"]) == 0.0)
    assert lossless["top1_mean"] == simulated["top1_mean"]  # every row in time: the one-process numbers
    assert (tmp_path / "out" / "real_radio.png").stat().st_size > 10_000
