"""Seconds per ``mix`` with K = 1 (InProcessNetwork) and K processes (TorchDistributedNetwork on
gloo, started here the way torchrun starts them), float32, plus the bytes one exchange sends:
the per-robot ``bytes_sent`` metric (a row per neighbour) and the bytes actually handed between
processes (a row once per peer rank that hosts a neighbour). For K > 1 it also times the collective
alternative (all_gather of every block, then the local rows of W times the whole stack).

    python benchmarks/dist_exchange.py [--world-sizes 1 2] [--repeats 20] [--threads T]

Cases: the MNIST paper graph (cycle of 10 robots), a cycle of 100 and a 100-robot disk graph
(radius 0.2; robots numbered at random with respect to position, so most have a neighbour in the
other block), rows of n = 30,000 floats (about the paper CNN's 28,535 parameters).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import torch

from optimizers.comm.graphs import make_graph, metropolis_weights  # noqa: E402
from optimizers.comm.network import InProcessNetwork  # noqa: E402

CASES = {"cycle N=10": ("cycle", 10, {}), "cycle N=100": ("cycle", 100, {}),
         "disk N=100": ("disk", 100, {"radius": 0.2})}
WIDTH = 30_000


def graph_of(case):
    kind, n, kwargs = CASES[case]
    return make_graph(kind, n, seed=0, **kwargs)


def time_mix(network, x, repeats):
    network.mix(x)  # warm-up (and the first exchange)
    start = time.perf_counter()
    for _ in range(repeats):
        x = network.mix(x)
    return (time.perf_counter() - start) / repeats


def measure(case, repeats):
    """One rank's figures for ``case`` (or the one-process figures outside torchrun)."""
    graph = graph_of(case)
    n = graph.number_of_nodes()
    if "RANK" not in os.environ:
        net = InProcessNetwork(graph)
        x = torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(0))
        seconds = time_mix(net, x, repeats)
        return {"seconds": seconds, "robot_bytes": float(net.bytes_sent.sum()) / (repeats + 1), "wire_bytes": 0}
    import torch.distributed as dist

    from optimizers.comm.distributed import TorchDistributedNetwork

    net = TorchDistributedNetwork(graph)
    net.mixing_full = metropolis_weights(graph)
    x = torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(0))[net.local_nodes]
    dist.barrier()
    mix_seconds = time_mix(net, x, repeats)
    dist.barrier()
    seconds = torch.tensor([mix_seconds, time_all_gather(net, x, repeats)])
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # a round waits for the slowest rank
    counts = torch.tensor([float(net.bytes_sent.sum()) / (repeats + 1), float(net.wire_bytes_per_exchange)],
                          dtype=torch.float64)
    dist.all_reduce(counts)
    return {"seconds": float(seconds[0]), "all_gather_seconds": float(seconds[1]),
            "robot_bytes": float(counts[0]), "wire_bytes": float(counts[1])}


def time_all_gather(net, x, repeats):
    """The collective alternative: every rank gets every block (padded to the longest), then W x."""
    import torch.distributed as dist

    longest = max(b.stop - b.start for b in net.blocks)
    mixing = torch.as_tensor(net.mixing_full, dtype=x.dtype)[net.local_nodes]
    start = time.perf_counter()
    for _ in range(repeats):
        padded = x.new_zeros(longest, x.shape[1])
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in net.blocks]
        dist.all_gather(parts, padded)
        whole = torch.cat([p[:b.stop - b.start] for p, b in zip(parts, net.blocks)])
        x = mixing @ whole
    return (time.perf_counter() - start) / repeats


def rank_main(repeats):
    from optimizers.comm import dist_launch

    env, _ = dist_launch.init_distributed("gloo")

    def run():
        results = {case: measure(case, repeats) for case in CASES}
        if env.rank == 0:
            print(json.dumps(results))

    dist_launch.exit_on_peer_loss(run)


def threads_for(world_size, threads):
    return threads or max(1, (os.cpu_count() or 1) // world_size)


def run_ranks(world_size, repeats, threads):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
               OMP_NUM_THREADS=str(threads_for(world_size, threads)))
    procs = [subprocess.Popen([sys.executable, __file__, "--rank-main", "--repeats", str(repeats)],
                              stdout=subprocess.PIPE, text=True, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world_size)]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.returncode for p in procs]}")
    return json.loads(outputs[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per process (default: CPU cores // K)")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_main:
        return rank_main(a.repeats)
    print(f"float32 rows of n = {WIDTH}; {a.repeats} mixes after one warm-up; "
          f"bytes are per exchange, summed over all robots / ranks")
    print(f"{'case':<12} {'K':>2} {'s/mix':>9} {'s/all_gather+W':>15} {'bytes_sent (robots)':>20} "
          f"{'bytes between processes':>24}")
    for k in a.world_sizes:
        if k == 1:
            torch.set_num_threads(threads_for(1, a.threads))
            results = {case: measure(case, a.repeats) for case in CASES}
        else:
            results = run_ranks(k, a.repeats, a.threads)
        for case, r in results.items():
            gather = f"{r['all_gather_seconds']:.4f}" if "all_gather_seconds" in r else "-"
            print(f"{case:<12} {k:>2} {r['seconds']:>9.4f} {gather:>15} {r['robot_bytes']:>20,.0f} "
                  f"{r['wire_bytes']:>24,.0f}")


if __name__ == "__main__":
    main()
