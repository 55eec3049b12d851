"""Seconds per DSGD and DiNNO round with each robust aggregation rule (and with a faulty robot), against the fault-free
round with plain averaging, measured side by side (interleaved, median over the repeats).

    venv/bin/python benchmarks/robust_round_time.py [--rounds 10] [--repeats 5] [--nodes 10] [--threads 2]

The paper's CNN, 10 robots of batch 64 on a Delaunay graph (seed 0), synthetic 28x28 images (the time of a round does
not depend on what the digits show). "mean" is the exact product every fault-free run takes; "mean + NaN robot" has
robot 2 sending NaN rows, which its neighbours drop (the per-edge path); the robust rules always take that path. The
ratios are printed last; the target is at most 1.3x the fault-free round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from foundation.schema import validate_mapping
from optimizers import DSGD, DiNNO
from optimizers.comm.aggregation import AGGREGATION_SCHEMA
from optimizers.comm.faults import Faults, validate_faults
from optimizers.comm.graphs import make_graph
from optimizers.comm.network import InProcessNetwork
from problems.mnist import MNISTProblem, mnist_cnn

VARIANTS = {
    "mean": ({"rule": "mean"}, None),
    "mean + NaN robot": ({"rule": "mean"}, [{"robots": [2], "kind": "nan"}]),
    "clip": ({"rule": "clip"}, None),
    "trimmed_mean": ({"rule": "trimmed_mean", "trim": 1}, None),
    "median": ({"rule": "median"}, None),
}
OPTIMIZERS = {"dsgd": (DSGD, {"alpha0": 0.01}),
              "dinno": (DiNNO, {"rho_init": 0.5, "primal_iterations": 1, "primal_lr_start": 0.005})}


def build(name: str, variant: str, nodes: int, batch: int):
    torch.manual_seed(0)
    samples = nodes * 256
    x = torch.rand(samples, 1, 28, 28)
    y = torch.randint(0, 10, (samples,))
    split = [torch.arange(i * 256, (i + 1) * 256) for i in range(nodes)]
    problem = MNISTProblem("p", mnist_cnn(), split, x, y, x[:64], y[:64], loss="NLL", metrics=["validation_loss"],
                           train_batch_size=batch, val_batch_size=64, execution="grouped")
    graph = make_graph("delaunay", nodes, seed=0)
    network = InProcessNetwork(graph)
    aggregation, faults = VARIANTS[variant]
    network.set_aggregation(validate_mapping("aggregation", AGGREGATION_SCHEMA, aggregation))
    if faults:
        hook = Faults(validate_faults("faults", faults), nodes)
        hook(1)
        network.set_faults(hook)
    cls, config = OPTIMIZERS[name]
    optimizer = cls(problem, network, {"outer_iterations": 10_000, **config})
    with torch.no_grad():
        optimizer.setup()
    return optimizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {(name, variant): build(name, variant, args.nodes, args.batch) for name in OPTIMIZERS for variant in VARIANTS}
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    k = {key: 0 for key in runs}
    for _ in range(args.repeats + 1):  # the first block warms up (plans, allocations)
        for key, optimizer in runs.items():
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(args.rounds):
                    k[key] += 1
                    optimizer.round(k[key])
            times[key].append((time.perf_counter() - start) / args.rounds)
    print(f"{args.nodes} robots of batch {args.batch} on a Delaunay graph, {args.threads} threads, median of "
          f"{args.repeats} blocks of {args.rounds} rounds")
    for (name, variant), values in times.items():
        print(f"{name:6s} {variant:18s} {1000 * statistics.median(values[1:]):8.2f} ms per round")
    for name in OPTIMIZERS:
        base = statistics.median(times[name, "mean"][1:])
        for variant in VARIANTS:
            if variant != "mean":
                ratio = statistics.median(times[name, variant][1:]) / base
                print(f"{name} {variant} / fault-free mean: {ratio:.2f}x")


if __name__ == "__main__":
    main()
