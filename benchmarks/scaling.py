"""Seconds per round and peak memory as the team grows: N = 10, 100, 1,000 robots of batch B = 4.

For each N (random split of MNIST, disk graph of radius sqrt(2 ln N / (pi N)) so the mean degree grows
like 2 ln N, sparse mixing) and each optimizer (DSGD, DSGT, DiNNO with 1 primal Adam step) the real
engine (MNISTProblem + InProcessNetwork + optimizer class) is timed round by round, interleaved block by
block with one centralized Adam step of the same CNN on the pooled N x B batch, in the same process
(medians over the repeats; the machine may be shared). Peak memory: the rise of the process's
high-water mark during one round (as benchmarks/round_time.py measures it), and the process's
high-water mark at the end. Evaluation: seconds to evaluate a fixed sample of robots on the full
test set (``metrics_config.eval_nodes``), and with ``--full-eval`` every robot.

Targets (issue 14): at N = 1,000 a DSGD round costs at most 2x the centralized step on the pooled batch;
seconds per round grow no faster than N from N = 10 to 1,000; peak memory at N = 1,000 within 4 GiB.

Example:  venv/bin/python benchmarks/scaling.py --sizes 10,100,1000 --rounds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

from round_time import SHARED_MNIST, CentralRunner, PeakMemory, time_block  # noqa: E402

from optimizers import DSGD, DSGT, DiNNO  # noqa: E402
from optimizers.comm.graphs import make_graph  # noqa: E402
from optimizers.comm.network import InProcessNetwork  # noqa: E402
from problems.mnist import MNISTProblem, mnist_cnn  # noqa: E402
from problems.mnist_data import images_to_tensor, load_mnist  # noqa: E402
from problems.splits import DataError, split_indices  # noqa: E402

OPTIMIZERS = {
    "dsgd": (DSGD, {"alpha0": 0.005, "mu": 0.001}),
    "dsgt": (DSGT, {"alpha": 0.005, "init_grads": True}),
    "dinno": (DiNNO, {"rho_init": 0.5, "rho_scaling": 1.0003, "primal_iterations": 1, "primal_optimizer": "adam",
                      "persistant_primal_opt": False, "primal_lr_start": 0.005, "primal_lr_finish": 0.0005,
                      "lr_decay_type": "log"}),
}
DSGD_VS_CENTRAL = 2.0
MEMORY_GIB = 4.0


class EngineRunner:
    """One optimizer on the node stack, as experiments/run.py runs it."""

    def __init__(self, alg, base_model, node_indices, data, graph, batch, eval_nodes):
        train_x, train_y, val_x, val_y = data
        self.problem = MNISTProblem(f"bench_{alg}", base_model, node_indices, train_x, train_y, val_x, val_y,
                                    loss="NLL", metrics=["validation_loss", "top1_accuracy"],
                                    train_batch_size=batch, val_batch_size=1000, seed=1, eval_nodes=eval_nodes)
        cls, cfg = OPTIMIZERS[alg]
        self.optimizer = cls(self.problem, InProcessNetwork(graph), {**cfg, "outer_iterations": 100_000})
        with torch.no_grad():
            self.optimizer.setup()
        self.k = 0

    def round(self) -> None:
        self.k += 1
        with torch.no_grad():
            self.optimizer.round(self.k)


def process_peak_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def load(data_dir: Path):
    try:
        data = load_mnist(data_dir, "mnist")
    except DataError:
        data = load_mnist(data_dir, "mnist_subset")
    return (images_to_tensor(data.train_images), data.train_labels, images_to_tensor(data.test_images),
            data.test_labels, data.source)


def bench_size(n, args, data, memory) -> list[dict]:
    torch.manual_seed(0)
    base_model = mnist_cnn()
    for p in base_model.parameters():
        p.requires_grad_(False)
    radius = min(1.5, math.sqrt(2 * math.log(n) / (math.pi * n)))
    graph = make_graph("disk", n, seed=0, radius=radius, gen_attempts=1000)
    node_indices = split_indices(data[1], n, "random", seed=0, min_size=args.batch)
    central = CentralRunner(base_model, node_indices, data, n, args.batch, torch.device("cpu"))
    rows = []
    for alg in args.optimizers:
        engine = EngineRunner(alg, base_model, node_indices, data[:4], graph, args.batch, args.eval_nodes)
        runners = {"engine": engine, "central": central}
        for runner in runners.values():
            time_block(runner, 1, torch.device("cpu"))  # warm-up (plans the node stack's execution)
        times = {name: [] for name in runners}
        for rep in range(args.repeats):
            for name in (runners if rep % 2 == 0 else list(runners)[::-1]):
                times[name].append(time_block(runners[name], args.rounds, torch.device("cpu")) / 1000)
        start = time.perf_counter()
        engine.problem.compute_metrics(engine.problem.theta)
        eval_s = time.perf_counter() - start
        rows.append({"N": n, "alg": alg, "edges": graph.number_of_edges(),
                     "round_s": statistics.median(times["engine"]), "central_s": statistics.median(times["central"]),
                     "round_mib": memory.measure(engine.round), "eval_s": eval_s,
                     "evaluated": min(n, args.eval_nodes or n)})
        if args.full_eval and args.eval_nodes and args.eval_nodes < n:
            engine.problem.eval_nodes = None
            start = time.perf_counter()
            engine.problem.compute_metrics(engine.problem.theta)
            rows[-1]["full_eval_s"] = time.perf_counter() - start
        print(f"  done N={n} {alg}", file=sys.stderr, flush=True)
    return rows


def report(rows, sizes) -> bool:
    print(f"{'N':>5} {'edges':>6} {'alg':<6} {'s/round':>8} {'central s':>9} {'ratio':>6} {'round MiB':>9} "
          f"{'eval s (robots)':>16}")
    for r in rows:
        full = f", all {r['full_eval_s']:.1f}" if "full_eval_s" in r else ""
        print(f"{r['N']:>5} {r['edges']:>6} {r['alg']:<6} {r['round_s']:>8.3f} {r['central_s']:>9.3f} "
              f"{r['round_s'] / r['central_s']:>6.2f} {r['round_mib']:>9.1f} "
              f"{r['eval_s']:>8.2f} ({r['evaluated']}){full}")
    ok = True
    lo, hi = min(sizes), max(sizes)
    at = {(r["N"], r["alg"]): r for r in rows}
    if (hi, "dsgd") in at:
        r = at[(hi, "dsgd")]
        ratio = r["round_s"] / r["central_s"]
        passed = ratio <= DSGD_VS_CENTRAL
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  N={hi} DSGD round / centralized step on the pooled batch = "
              f"{ratio:.2f} (target <= {DSGD_VS_CENTRAL:g})")
    for alg in dict.fromkeys(r["alg"] for r in rows):
        if (lo, alg) in at and (hi, alg) in at and hi > lo:
            growth = at[(hi, alg)]["round_s"] / at[(lo, alg)]["round_s"]
            passed = growth <= hi / lo
            ok &= passed
            print(f"{'PASS' if passed else 'FAIL'}  {alg}: s/round grows {growth:.1f}x from N={lo} to N={hi} "
                  f"(target <= {hi / lo:g}x, the growth of the work)")
    peak = process_peak_mib() / 1024
    passed = peak <= MEMORY_GIB
    ok &= passed
    print(f"{'PASS' if passed else 'FAIL'}  process peak memory {peak:.2f} GiB (target <= {MEMORY_GIB:g} GiB)")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--optimizers", default="dsgd,dsgt,dinno")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per runner (interleaved)")
    parser.add_argument("--eval-nodes", type=int, default=10, help="robots evaluated on the full test set")
    parser.add_argument("--full-eval", action="store_true", help="also time evaluating every robot")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(SHARED_MNIST))
    args = parser.parse_args(argv)
    args.optimizers = args.optimizers.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)
    data = load(Path(args.data_dir))
    print(f"data: {data[4]}; batch {args.batch} per robot; {args.threads} threads; medians of {args.repeats} "
          f"interleaved blocks of {args.rounds} rounds")
    memory = PeakMemory(torch.device("cpu"))
    rows = [row for n in sizes for row in bench_size(n, args, data, memory)]
    return 0 if report(rows, sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
