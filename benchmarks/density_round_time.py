"""Seconds per DiNNO round on the paper-scale density setup, engine vs a per-node loop vs centralized.

    python benchmarks/density_round_time.py [--rounds 5] [--threads 2]

Paper scale: 7 robots, batch 12,500 per robot, Fourier network [2, 256, 64, 64, 64, 1], 5 primal Adam
steps per round. Measured, each in its own process (so peak memory is its own):

* ``engine``: the DiNNO optimizer on the node stack as the runner uses it (automatic node chunks);
  also the stack forced to other chunk sizes / execution forms for comparison;
* ``compiled``: the same with every training step compiled (``compile: on``; the compile itself is done in
  the warm-up round and not timed);
* ``loop``: a plain per-node loop, one ``nn.Module`` and one Adam per node, the same DiNNO update;
* ``central``: one Adam step of one model on the pooled 87,500 samples;
* ``data``: the data side of a round on the real shipped paper plan (5 window batches for all robots,
  the disk-graph rebuild from current positions).

* ``matmul``: a plain float32 matrix product of the network's largest layer's shape,
  (12,500 x 256) @ (256 x 64), repeated to about the work of one round;
* ``products``: the round's own matrix products and nothing else (every layer's forward, weight-gradient
  and input-gradient products of the 7 robots' batches, 5 primal steps): the floor of a fully fused round.

Prints seconds per round, samples per second, ratios and peak resident memory (MiB); then the achieved
GFLOP/s of a round (the forward and backward multiply-adds of the network, counted from its layer
shapes: 3 x 2 x sum(in x out) per sample, about 66 GFLOP a round) next to the plain matrix product's
GFLOP/s, and their ratio as the last line.
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

N, BATCH, PRIMAL, SHAPE, SCALE = 7, 12500, 5, [2, 256, 64, 64, 64, 1], 0.05


def peak_mib() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it does not carry over the
    parent's peak through fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(torch, n, batch, gen):
    x = (torch.rand(n, batch, 2, generator=gen) - 0.5) * torch.tensor([2100.0, 1600.0])
    y = (torch.rand(n, batch, 1, generator=gen) > 0.7).float()
    return x, y


def timed(fn, args, info):
    """Child mode: warm up, time ``args.rounds`` calls. Interleaved mode: hand the callable back."""
    if getattr(args, "interleave", False):
        return fn, info
    fn()
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        fn()
    return {**info, "seconds": (time.perf_counter() - t0) / args.rounds}


def bench_engine(args, execution="auto", chunk=None, compile="off"):
    import networkx as nx
    import torch

    from optimizers.comm.network import InProcessNetwork
    from optimizers.dinno import DiNNO
    from problems.base import per_node_loss
    from problems.density import fourier_net
    from problems.node_stack import NodeStack

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [synthetic(torch, N, BATCH, gen) for _ in range(4)]

    class Problem:  # the parts of a problem DiNNO uses, fed with fixed synthetic batches
        def __init__(self):
            self.stack = NodeStack(fourier_net(SHAPE, SCALE), N, execution=execution, chunk_size=chunk,
                                   compile=compile)
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
    counter = iter(range(1, 10 ** 6))
    info = {}

    def one_round():
        with torch.no_grad():
            opt.round(next(counter))
        # the form the stack runs (with execution auto: the fastest it measured on the first batch)
        execution, size = next(iter(problem.stack.plans.values()))
        info.update(execution=execution, chunks=[s.stop - s.start for s in problem.stack.chunks(BATCH, size)])

    with torch.no_grad():
        opt.setup()
    return timed(one_round, args, info)


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

    return timed(lambda: round_(0.3), args, {})


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

    return timed(step, args, {})


def bench_data(args):
    import torch

    from experiments.config import apply_overrides, load_yaml, validate_config
    from experiments.kinds import KINDS
    from optimizers.comm.links import FollowPositions
    from optimizers.comm.network import InProcessNetwork

    raw = apply_overrides(load_yaml(REPO_ROOT / "experiments" / "configs" / "density_paper.yaml"),
                          ["experiment.data.num_validation_scans=10"])
    cfg = validate_config(raw)
    t0 = time.perf_counter()
    setup = KINDS["online_density"].setup(cfg, torch.device("cpu"))
    build = time.perf_counter() - t0
    problem = setup.make_problem(cfg["problem_configs"]["problem1"])
    net = InProcessNetwork(setup.graph)
    follow = FollowPositions(net, problem.team_positions, cfg["problem_configs"]["problem1"]["comm_radius"])
    # a short window so that windows move (and graphs change) often during the measurement
    rounds = max(args.rounds, 20)
    t_batch = t_graph = 0.0
    for k in range(1, rounds + 1):
        t0 = time.perf_counter()
        follow(k)
        t_graph += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(PRIMAL):
            problem.next_batch()
        t_batch += time.perf_counter() - t0
    return {"window_sampling_per_round": t_batch / rounds, "graph_update_per_round": t_graph / rounds,
            "setup_seconds": build, "trajectory_poses": setup.num_poses,
            "scan_points": int(setup.scans.shape[0] * setup.scans.shape[1] * setup.scans.shape[2])}


def round_flops() -> float:
    """Multiply-add work of one DiNNO round: every primal step's forward and backward (taken as 3 x the
    forward's 2 x sum(in x out) per sample, the usual count; activations and the optimizer not counted)."""
    forward = 2 * sum(a * b for a, b in zip(SHAPE[:-1], SHAPE[1:]))
    return 3.0 * forward * N * BATCH * PRIMAL


MATMUL_SHAPE = (BATCH, 256, 64)


def bench_matmul(args):
    """One 'round' of plain matrix products: (B x 256) @ (256 x 64), as many times as make the round's FLOPs."""
    import torch

    b, k, n = MATMUL_SHAPE
    x, w = torch.randn(b, k), torch.randn(k, n)
    out = torch.empty(b, n)
    repeats = max(1, round(round_flops() / (2.0 * b * k * n)))

    def products():
        for _ in range(repeats):
            torch.mm(x, w, out=out)

    return timed(products, args, {"repeats": repeats, "flops": 2.0 * b * k * n * repeats})


def bench_products(args):
    """The matrix products a DiNNO round cannot do without, and nothing else: for every primal step and every
    layer, the forward product, the weight-gradient product and (past the first layer) the input-gradient
    product of all the robots' stacked batches, as ``torch.bmm`` over the robots. Their rate is the ceiling
    for a round whose element-wise work (activations, loss, optimizer) were free."""
    import torch

    shapes = list(zip(SHAPE[:-1], SHAPE[1:]))
    acts = [torch.randn(N, BATCH, fan_in) for fan_in, _ in shapes]
    grads = [torch.randn(N, BATCH, fan_out) for _, fan_out in shapes]
    weights = [torch.randn(N, fan_out, fan_in) for fan_in, fan_out in shapes]
    outs = [torch.empty(N, BATCH, fan_out) for _, fan_out in shapes]
    grad_in = [torch.empty(N, BATCH, fan_in) for fan_in, _ in shapes]
    grad_w = [torch.empty(N, fan_out, fan_in) for fan_in, fan_out in shapes]

    def products():
        for _ in range(PRIMAL):
            for layer in range(len(shapes)):
                torch.bmm(acts[layer], weights[layer].transpose(1, 2), out=outs[layer])
            for layer in reversed(range(len(shapes))):
                torch.bmm(grads[layer].transpose(1, 2), acts[layer], out=grad_w[layer])
                if layer:
                    torch.bmm(grads[layer], weights[layer], out=grad_in[layer])

    return timed(products, args, {})


VARIANTS = {
    "engine": lambda a: bench_engine(a),
    "compiled": lambda a: bench_engine(a, compile="on"),
    "grouped_all_nodes": lambda a: bench_engine(a, "grouped", N),
    "vmap_chunk1": lambda a: bench_engine(a, "vmap", 1),
    "loop": bench_loop,
    "central": bench_central,
    "matmul": bench_matmul,
    "products": bench_products,
    "data": bench_data,
}


def run_child(name, args) -> dict:
    cmd = [sys.executable, __file__, "--variant", name, "--rounds", str(args.rounds), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


COMPUTE = ("engine", "compiled", "grouped_all_nodes", "vmap_chunk1", "loop", "central", "matmul", "products")


def interleaved(args, names) -> dict[str, dict]:
    """Time the compute forms in one process, alternating them round by round (fair under shared load);
    the median over ``args.rounds`` repetitions."""
    import statistics

    args.interleave = True
    fns = {name: VARIANTS[name](args) for name in names}
    for fn, _ in fns.values():  # warm-up
        fn()
    times = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, (fn, _) in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {**fns[name][1], "seconds": statistics.median(times[name]), "all": times[name]} for name in names}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed repetitions of each form")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="(internal) one form in this process")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS))
    parser.add_argument("--no-memory", action="store_true", help="skip the per-form peak memory processes")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.variant:
        import networkx  # noqa: F401  (imports count in the baseline, not in the form's memory)

        import optimizers.dinno  # noqa: F401
        import problems.density  # noqa: F401
        base = peak_mib()
        result = VARIANTS[args.variant](args)
        result["peak_mib"] = peak_mib()
        result["extra_mib"] = result["peak_mib"] - base
        print(json.dumps(result))
        return 0

    print(f"DiNNO on the paper-scale density setup: {N} nodes x batch {BATCH}, Fourier {SHAPE}, "
          f"{PRIMAL} primal steps per round, {args.threads} threads, torch {torch.__version__}")
    wanted = args.only or list(VARIANTS)
    names = [n for n in COMPUTE if n in wanted]
    res = interleaved(args, names) if names else {}
    if not args.no_memory:
        mem_args = argparse.Namespace(**{**vars(args), "rounds": 1})
        for name in names:
            child = run_child(name, mem_args)
            res[name]["peak_mib"], res[name]["extra_mib"] = child["peak_mib"], child["extra_mib"]
    if "data" in wanted:
        res["data"] = run_child("data", args)
    samples = N * BATCH * PRIMAL
    central = res.get("central", {}).get("seconds")
    loop = res.get("loop", {}).get("seconds")
    print(f"\n{'form':<20} {'s/round':>9} {'s/primal step':>14} {'samples/s':>11} {'vs loop':>8} "
          f"{'step vs central':>16} {'peak MiB (+over imports)':>25}")
    for name in names:
        if name in ("central", "matmul", "products"):
            continue
        r = res[name]
        sec = r["seconds"]
        step = sec / PRIMAL
        extra = f"  ({r['execution']}, chunks {r['chunks']})" if "chunks" in r else ""
        print(f"{name:<20} {sec:9.3f} {step:14.3f} {samples / sec:11.0f} "
              f"{(sec / loop if loop else float('nan')):8.2f} {(step / central if central else float('nan')):16.2f} "
              f"{r.get('peak_mib', float('nan')):14.0f} (+{r.get('extra_mib', float('nan')):5.0f}){extra}")
    if central:
        print(f"{'central (1 step)':<20} {'':>9} {central:14.3f} {N * BATCH / central:11.0f} {'':>8} {1.0:16.2f} "
              f"{res['central'].get('peak_mib', float('nan')):14.0f} (+{res['central'].get('extra_mib', float('nan')):5.0f})")
    if "data" in res:
        d = res["data"]
        per_round = d["window_sampling_per_round"] + d["graph_update_per_round"]
        engine = res.get("engine", {}).get("seconds")
        share = f"= {100 * per_round / (engine + per_round):.1f}% of an engine round" if engine else ""
        print(f"\ndata side per round: window sampling {d['window_sampling_per_round'] * 1000:.1f} ms "
              f"(5 batches of {N} x {BATCH}), graph update {d['graph_update_per_round'] * 1000:.2f} ms  {share}")
        print(f"paper plan setup (scanning {sum(d['trajectory_poses'])} poses, {d['scan_points']} points): "
              f"{d['setup_seconds']:.1f} s, peak {d['peak_mib']:.0f} MiB")
    if "engine" in res and "matmul" in res:
        engine_rate = round_flops() / res["engine"]["seconds"] / 1e9
        mm_rate = res["matmul"]["flops"] / res["matmul"]["seconds"] / 1e9
        b, k, n = MATMUL_SHAPE
        print(f"\nwork of a round: {round_flops() / 1e9:.1f} GFLOP; engine {engine_rate:.1f} GFLOP/s; plain float32 "
              f"matrix product ({b} x {k}) @ ({k} x {n}): {mm_rate:.1f} GFLOP/s")
        print(f"engine round / matrix product rate: {engine_rate / mm_rate:.2f}")
        if "products" in res:
            products = res["products"]["seconds"]
            print(f"the round's own matrix products alone (no element-wise work): {products:.3f} s, "
                  f"{round_flops() / products / 1e9:.1f} GFLOP/s = {round_flops() / products / 1e9 / mm_rate:.2f} of the "
                  f"matrix product rate (the ceiling of fusing the rest away)")
        if "compiled" in res:
            compiled_rate = round_flops() / res["compiled"]["seconds"] / 1e9
            print(f"compiled round: {compiled_rate:.1f} GFLOP/s; compiled round / matrix product rate: "
                  f"{compiled_rate / mm_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
