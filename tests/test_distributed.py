"""TorchDistributedNetwork against the one-process network, with K real processes on gloo.

Each test starts K processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), each runs ``worker(scenario, out_dir)`` of this module and saves its local results;
the test stitches the blocks together and compares them with InProcessNetwork on the whole stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import pytest
import torch

from optimizers.comm.distributed import robot_blocks
from optimizers.comm.graphs import make_graph
from optimizers.comm.network import InProcessNetwork
from optimizers.dinno import DiNNO
from optimizers.dsgd import DSGD
from optimizers.dsgt import DSGT
from problems.base import consensus_distances

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"float64": torch.float64, "float32": torch.float32}
ROUNDS = 20


def graphs(num_nodes: int) -> list[nx.Graph]:
    """Random graphs (dense path); the last one is the graph set_graph switches to mid-run."""
    return [make_graph("random", num_nodes, seed=s, p=0.4) for s in range(3)] + [nx.cycle_graph(num_nodes)]


def sparse_graph() -> nx.Graph:
    """40 robots on a disk graph: the sparse-CSR path of both networks."""
    return make_graph("disk", 40, seed=1, radius=0.3)


def stack(num_nodes: int, seed: int, dtype, width: int = 6) -> torch.Tensor:
    return torch.randn(num_nodes, width, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64).to(dtype)


class LeastSquares:
    """Robot i fits theta_i to 0.5 mean((A_i theta_i - b_i)^2); this object holds only ``rows``."""

    def __init__(self, num_nodes: int, rows: slice, dtype, n: int = 5, m: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(num_nodes, m, n, generator=g, dtype=torch.float64)
        b = torch.randn(num_nodes, m, generator=g, dtype=torch.float64)
        theta = torch.randn(num_nodes, n, generator=g, dtype=torch.float64)
        self.a, self.b, self.theta = a[rows].to(dtype), b[rows].to(dtype), theta[rows].to(dtype).clone()

    def local_grads(self, theta):
        residual = torch.einsum("imn,in->im", self.a, theta) - self.b
        self.last_losses = 0.5 * residual.square().mean(dim=1)
        return self.last_losses, torch.einsum("imn,im->in", self.a, residual) / residual.shape[1]


def train(optimizer_cls, config, problem, network) -> torch.Tensor:
    opt = optimizer_cls(problem, network, config)
    with torch.no_grad():
        opt.setup()
        for k in range(1, ROUNDS + 1):
            opt.round(k)
    return problem.theta


OPTIMIZERS = {"dsgd": (DSGD, {"outer_iterations": ROUNDS, "alpha0": 0.05, "mu": 0.01}),
              "dsgt": (DSGT, {"outer_iterations": ROUNDS, "alpha": 0.05}),
              "dinno": (DiNNO, {"outer_iterations": ROUNDS, "rho_init": 0.1, "rho_scaling": 1.01,
                                "primal_iterations": 2, "primal_lr_start": 0.01})}


def run_all(num_nodes: int, make_network, rows: slice) -> dict:
    """Everything the equivalence test compares, on this process's ``rows`` of the stack."""
    out = {}
    for name, dtype in DTYPES.items():
        gs = graphs(num_nodes)
        net = make_network(gs[0], dtype)
        for i, g in enumerate(gs):
            net.set_graph(g)  # the first call re-sets the same graph; later ones are dynamic changes
            x = stack(num_nodes, 100 + i, dtype)[rows]
            out[name, "mix", i] = net.mix(x)
            out[name, "neighbor_sum", i] = net.neighbor_sum(x)
            out[name, "degrees", i] = net.degrees
        out[name, "bytes_sent"] = net.bytes_sent
        sparse = make_network(sparse_graph(), dtype)
        x = stack(40, 7, dtype)[sparse.local_nodes]
        out[name, "sparse_mix"] = sparse.mix(x)
        out[name, "sparse_neighbor_sum"] = sparse.neighbor_sum(x)
        for opt, (cls, config) in OPTIMIZERS.items():
            network = make_network(gs[1], dtype)
            out[name, opt] = train(cls, config, LeastSquares(num_nodes, rows, dtype), network)
            out[name, opt, "bytes_sent"] = network.bytes_sent
    return out


# ---------------------------------------------------------------- the rank side


def worker(scenario: str, out_dir: str, num_nodes: int) -> None:
    from optimizers.comm import dist_launch
    from optimizers.comm.distributed import (
        TorchDistributedNetwork,
        any_rank,
        check_identical,
        consensus_error,
        gather_rows,
    )

    timeout = float(os.environ.get("TEST_DIST_TIMEOUT", "30"))
    env, _ = dist_launch.init_distributed("gloo", timeout_s=timeout)

    def main():
        if scenario == "equivalence":
            rows = robot_blocks(num_nodes, env.world_size)[env.rank]
            out = run_all(num_nodes, lambda g, dtype: TorchDistributedNetwork(g, dtype=dtype), rows)
            net = TorchDistributedNetwork(graphs(num_nodes)[0], dtype=torch.float64)
            theta = stack(num_nodes, 5, torch.float64)[rows]
            out["consensus_error"] = consensus_error(theta, num_nodes)
            out["gathered"] = gather_rows(theta, net)
            out["any_rank"] = (any_rank(env.rank == env.world_size - 1), any_rank(False))
            check_identical(stack(num_nodes, 5, torch.float64), "base model")
            try:
                check_identical(torch.tensor([float(env.rank == 1)]), "base model")
            except ValueError as error:
                out["check_identical_error"] = str(error)
            try:
                net.set_graph(graphs(num_nodes)[env.rank % 2], verify=True)
            except ValueError as error:
                out["set_graph_error"] = str(error)
            net.set_graph(graphs(num_nodes)[0], verify=True)
            out["wire"] = (net.wire_bytes_sent, net.wire_bytes_per_exchange)
            net.mix(theta)
            out["wire_after_mix"] = (net.wire_bytes_sent, net.wire_bytes_per_exchange)
            torch.save(out, Path(out_dir) / f"rank{env.rank}.pt")
        elif scenario in ("kill", "hang"):
            net = TorchDistributedNetwork(nx.cycle_graph(num_nodes), dtype=torch.float64)
            x = torch.ones(net.num_local, 1000, dtype=torch.float64)
            for k in range(1, 100000):
                if env.rank == 1 and k == 50:
                    if scenario == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(3600)
                x = net.mix(x)

    dist_launch.exit_on_peer_loss(main)


# ---------------------------------------------------------------- the test side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, scenario: str, out_dir: Path, num_nodes: int, timeout_s: float = 30):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world_size),
               TEST_DIST_TIMEOUT=str(timeout_s), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    code = f"from tests.test_distributed import worker; worker({scenario!r}, {str(out_dir)!r}, {num_nodes})"
    return [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True,
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(world_size)]


def finish(procs, limit_s: float):
    deadline = time.monotonic() + limit_s
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            results.append((None, err))
            continue
        results.append((p.returncode, err))
    return results


def in_process(num_nodes: int) -> dict:
    return run_all(num_nodes, lambda g, dtype: InProcessNetwork(g, dtype=dtype), slice(0, num_nodes))


@pytest.mark.integration
@pytest.mark.parametrize("world_size,num_nodes", [(2, 8), (3, 7)])
def test_matches_one_process(tmp_path, world_size, num_nodes):
    procs = launch(world_size, "equivalence", tmp_path, num_nodes)
    expected = in_process(num_nodes)
    for rc, err in finish(procs, 120):
        assert rc == 0, err
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for key, want in expected.items():
        got = torch.cat([rank[key] for rank in ranks])
        if key[0] == "float64" or "bytes_sent" in key:
            assert torch.equal(got, want), key
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=str(key))
    theta = stack(num_nodes, 5, torch.float64)
    torch.testing.assert_close(torch.cat([r["consensus_error"] for r in ranks]),
                               consensus_distances(theta)[0], rtol=0, atol=1e-12)
    assert torch.equal(ranks[0]["gathered"], theta)
    assert all(r["gathered"] is None for r in ranks[1:])
    assert all(r["any_rank"] == (True, False) for r in ranks)
    assert all(r["check_identical_error"] == "base model differs across ranks: rank(s) [1] disagree with rank 0"
               for r in ranks)
    assert all(r["set_graph_error"].startswith("communication graph differs across ranks: rank(s) [1")
               for r in ranks)
    # wire bytes: rows that cross a block boundary, once per peer rank, 6 rows of 8-byte floats
    blocks = robot_blocks(num_nodes, world_size)
    adjacency = nx.to_numpy_array(graphs(num_nodes)[0], nodelist=range(num_nodes)) != 0
    for r, rank in enumerate(ranks):
        rows = sum(int(adjacency[blocks[r]][:, b].any(axis=1).sum()) for q, b in enumerate(blocks) if q != r)
        assert rank["wire"] == (0, 0)
        assert rank["wire_after_mix"] == (rows * 6 * 8, rows * 6 * 8)
        assert 0 < rows * 6 * 8 <= rank["float64", "bytes_sent"].sum()


def test_more_ranks_than_robots_refused():
    with pytest.raises(ValueError, match="world size 4 exceeds the 3 robots"):
        robot_blocks(3, 4)
    assert robot_blocks(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]


def test_rank_environment_and_backend_checked():
    from optimizers.comm.dist_launch import RankEnv, rank_env, resolve_backend

    assert rank_env({}) is None
    assert rank_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}) == RankEnv(1, 3, 1)
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        rank_env({"RANK": "3", "WORLD_SIZE": "3"})
    with pytest.raises(ValueError, match="must all be integers"):
        rank_env({"RANK": "x", "WORLD_SIZE": "3"})
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(ValueError, match="backend nccl needs a CUDA device"):
        resolve_backend("nccl", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of auto, gloo, nccl"):
        resolve_backend("mpi", torch.device("cpu"))


def _check_peer_lost(tmp_path, scenario, timeout_s, limit_s):
    procs = launch(3, scenario, tmp_path, 6, timeout_s=timeout_s)
    start = time.monotonic()
    results = finish([procs[0], procs[2]], limit_s)
    elapsed = time.monotonic() - start
    procs[1].kill()
    procs[1].communicate()
    for r, (rc, err) in zip((0, 2), results):
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1, (rc, err)
        assert lines[0].startswith(f"error: rank {r} lost rank 1 while exchanging rows"), err
    return elapsed


@pytest.mark.integration
def test_killed_rank_ends_the_others_with_one_line(tmp_path):
    _check_peer_lost(tmp_path, "kill", timeout_s=20, limit_s=60)


@pytest.mark.slow
def test_hung_rank_ends_the_others_within_the_timeout(tmp_path):
    elapsed = _check_peer_lost(tmp_path, "hang", timeout_s=5, limit_s=60)
    assert elapsed < 40
