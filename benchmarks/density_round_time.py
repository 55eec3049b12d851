"""Seconds per DiNNO round on the paper-scale density setup, engine vs a per-node loop vs centralized.

    python benchmarks/density_round_time.py [--rounds 5] [--threads 2]

Paper scale: 7 robots, batch 12,500 per robot, Fourier network [2, 256, 64, 64, 64, 1], 5 primal Adam
steps per round. Measured, each in its own process (so peak memory is its own):

* ``engine``: the DiNNO optimizer on the node stack as the runner uses it (automatic node chunks);
  also the stack forced to other chunk sizes / execution forms for comparison;
* ``loop``: a plain per-node loop, one ``nn.Module`` and one Adam per node, the same DiNNO update;
* ``central``: one Adam step of one model on the pooled 87,500 samples;
* ``data``: the data side of a round on the real shipped paper plan (5 window batches for all robots,
  the disk-graph rebuild from current positions).

Prints seconds per round, samples per second, ratios and peak resident memory (MiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

N, BATCH, PRIMAL, SHAPE, SCALE = 7, 12500, 5, [2, 256, 64, 64, 64, 1], 0.05


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(torch, n, batch, gen):
    x = (torch.rand(n, batch, 2, generator=gen) - 0.5) * torch.tensor([2100.0, 1600.0])
    y = (torch.rand(n, batch, 1, generator=gen) > 0.7).float()
    return x, y


def bench_engine(args, execution="auto", chunk=None):
    import networkx as nx
    import torch

    from optimizers.dinno import DiNNO
    from optimizers.network import InProcessNetwork
    from problems.base import per_node_loss
    from problems.density import fourier_net
    from problems.node_stack import NodeStack

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [synthetic(torch, N, BATCH, gen) for _ in range(4)]

    class Problem:  # the parts of a problem DiNNO uses, fed with fixed synthetic batches
        def __init__(self):
            self.stack = NodeStack(fourier_net(SHAPE, SCALE), N, execution=execution, chunk_size=chunk)
            self.theta = self.stack.theta
            self.calls = 0

        def local_grads(self, theta):
            x, y = data[self.calls % len(data)]
            self.calls += 1
            return self.stack.loss_and_grad(theta, x, y, lambda o, t: per_node_loss("BCE", o, t).mean(1))

    problem = Problem()
    net = InProcessNetwork(nx.cycle_graph(N))
    opt = DiNNO(problem, net, {"outer_iterations": 1000, "rho_init": 0.3, "rho_scaling": 1.0004,
                               "primal_iterations": PRIMAL, "primal_lr_start": 1e-3, "primal_lr_finish": 1e-4,
                               "lr_decay_type": "log"})
    with torch.no_grad():
        opt.setup()
        opt.round(1)  # warm-up
        t0 = time.perf_counter()
        for k in range(2, args.rounds + 2):
            opt.round(k)
        dt = (time.perf_counter() - t0) / args.rounds
    return {"seconds_per_round": dt, "execution": problem.stack.execution,
            "chunks": [s.stop - s.start for s in problem.stack.chunks(BATCH)]}


def bench_loop(args):
    import copy

    import networkx as nx
    import torch

    from problems.density import fourier_net

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [synthetic(torch, N, BATCH, gen) for _ in range(4)]
    base = fourier_net(SHAPE, SCALE)
    models = [copy.deepcopy(base) for _ in range(N)]
    graph = nx.cycle_graph(N)
    duals = [[torch.zeros_like(p) for p in m.parameters()] for m in models]
    loss_fn = torch.nn.BCELoss()
    calls = 0

    def round_(rho):
        nonlocal calls
        anchors = [[p.detach().clone() for p in m.parameters()] for m in models]
        for i in range(N):
            for j in graph.neighbors(i):
                for d, a, b in zip(duals[i], anchors[i], anchors[j]):
                    d += rho * (a - b)
        for i, m in enumerate(models):
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            nbrs = list(graph.neighbors(i))
            deg = len(nbrs)
            pulls = [0.5 * (deg * a + sum(anchors[j][idx] for j in nbrs)) for idx, a in enumerate(anchors[i])]
            for _ in range(PRIMAL):
                x, y = data[calls % len(data)]
                calls += 1
                opt.zero_grad()
                loss_fn(m(x[i]), y[i]).backward()
                with torch.no_grad():
                    for p, d, pull in zip(m.parameters(), duals[i], pulls):
                        p.grad += d + 2 * rho * (deg * p - pull)
                opt.step()

    round_(0.3)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        round_(0.3)
    return {"seconds_per_round": (time.perf_counter() - t0) / args.rounds}


def bench_central(args):
    import torch

    from problems.density import fourier_net

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x, y = synthetic(torch, 1, N * BATCH, gen)
    model = fourier_net(SHAPE, SCALE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCELoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x[0]), y[0]).backward()
        opt.step()

    step()
    steps = args.rounds * 2
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"seconds_per_step": (time.perf_counter() - t0) / steps}


def bench_data(args):
    import torch

    from experiments.config import apply_overrides, load_yaml, validate_config
    from experiments.setups import SETUPS
    from optimizers.network import InProcessNetwork

    raw = apply_overrides(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_paper.yaml"),
                          ["experiment.data.num_validation_scans=10"])
    cfg = validate_config(raw)
    t0 = time.perf_counter()
    setup = SETUPS["online_density"](cfg, torch.device("cpu"))
    build = time.perf_counter() - t0
    problem = setup.make_problem(cfg["problem_configs"]["problem1"])
    net = InProcessNetwork(setup.graph)
    # a short window so that windows move (and graphs change) often during the measurement
    rounds = max(args.rounds, 20)
    t_batch = t_graph = 0.0
    for k in range(1, rounds + 1):
        t0 = time.perf_counter()
        problem.before_round(k, net)
        t_graph += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(PRIMAL):
            problem.next_batch()
        t_batch += time.perf_counter() - t0
    return {"window_sampling_per_round": t_batch / rounds, "graph_update_per_round": t_graph / rounds,
            "setup_seconds": build, "trajectory_poses": setup.num_poses,
            "scan_points": int(setup.scans.shape[0] * setup.scans.shape[1] * setup.scans.shape[2])}


VARIANTS = {
    "engine": lambda a: bench_engine(a),
    "grouped_all_nodes": lambda a: bench_engine(a, "grouped", N),
    "vmap_chunk1": lambda a: bench_engine(a, "vmap", 1),
    "loop": bench_loop,
    "central": bench_central,
    "data": bench_data,
}


def run_child(name, args) -> dict:
    cmd = [sys.executable, __file__, "--variant", name, "--rounds", str(args.rounds), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS))
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.variant:
        result = VARIANTS[args.variant](args)
        result["peak_mib"] = peak_mib()
        print(json.dumps(result))
        return 0

    print(f"DiNNO on the paper-scale density setup: {N} nodes x batch {BATCH}, Fourier {SHAPE}, "
          f"{PRIMAL} primal steps per round, {args.threads} threads, torch {torch.__version__}")
    res = {name: run_child(name, args) for name in (args.only or VARIANTS)}
    samples = N * BATCH * PRIMAL
    central = res.get("central", {}).get("seconds_per_step")
    loop = res.get("loop", {}).get("seconds_per_round")
    print(f"\n{'form':<20} {'s/round':>9} {'s/primal step':>14} {'samples/s':>11} {'vs loop':>8} "
          f"{'step vs central':>16} {'peak MiB':>9}")
    for name in ("engine", "grouped_all_nodes", "vmap_chunk1", "loop"):
        if name not in res:
            continue
        r = res[name]
        s = r["seconds_per_round"]
        step = s / PRIMAL
        extra = f"  ({r['execution']}, chunks {r['chunks']})" if "chunks" in r else ""
        print(f"{name:<20} {s:9.3f} {step:14.3f} {samples / s:11.0f} "
              f"{(s / loop if loop else float('nan')):8.2f} {(step / central if central else float('nan')):16.2f} "
              f"{r['peak_mib']:9.0f}{extra}")
    if central:
        print(f"{'central (1 step)':<20} {'':>9} {central:14.3f} {N * BATCH / central:11.0f} {'':>8} {1.0:16.2f} "
              f"{res['central']['peak_mib']:9.0f}")
    if "data" in res:
        d = res["data"]
        per_round = d["window_sampling_per_round"] + d["graph_update_per_round"]
        engine = res.get("engine", {}).get("seconds_per_round")
        share = f"{100 * per_round / (engine + per_round):.1f}% of a round" if engine else ""
        print(f"\ndata side per round: window sampling {d['window_sampling_per_round'] * 1000:.1f} ms "
              f"(5 batches of {N} x {BATCH}), graph update {d['graph_update_per_round'] * 1000:.2f} ms  {share}")
        print(f"paper plan setup (scanning {sum(d['trajectory_poses'])} poses, {d['scan_points']} points): "
              f"{d['setup_seconds']:.1f} s, peak {d['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
