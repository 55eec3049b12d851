"""Evaluating a whole team: every robot's model on the whole MNIST test set, against the machine's limit.

Times ``problem.validation_outputs(theta)`` (what every evaluation of ``validation_loss`` /
``top1_accuracy`` runs: each robot's per-digit loss and correctness) for N robots of the paper CNN on M
test digits, and sets it beside the time the same floating-point work takes at the rate of a plain
matrix product measured in the same process (``2 x multiply-adds / matmul FLOP/s``). Also timed, side by
side: the same evaluation in blocks of one whole validation batch (``EVAL_BLOCK_BYTES`` unbounded), to
show what the cache-sized blocks buy, and in blocks sized by the activation budget alone
(``EVAL_MIN_SAMPLES`` = 1: 16 robots x 37 digits), to show what the floor on the samples per block buys. Peak memory: the rise of the resident-set high-water mark
(``VmHWM``) over the evaluation.

Reads the MNIST test set from ``--data-dir`` (torchvision layout) when given, else random digits of the
same shape (the time does not depend on the pixel values). The last line is the ratio.

Example:  venv/bin/python benchmarks/eval_time.py --nodes 1000 --digits 10000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
try:  # imported as benchmarks.eval_time (the tests), or run as a script beside round_time.py
    from benchmarks.round_time import PeakMemory  # noqa: E402
except ModuleNotFoundError:
    from round_time import PeakMemory  # noqa: E402
from problems import node_stack  # noqa: E402
from problems.mnist import MNISTProblem, mnist_cnn  # noqa: E402
from problems.mnist_data import images_to_tensor, load_mnist  # noqa: E402
from problems.splits import DataError  # noqa: E402


def multiply_adds_per_digit(model: torch.nn.Sequential) -> int:
    """Multiply-adds of one digit through ``model``'s convolutions and linear layers."""
    total, hooks = 0, []

    def count(module, _inputs, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += out.numel() * module.weight[0].numel()
        elif isinstance(module, torch.nn.Linear):
            total += out.numel() * module.in_features

    for module in model.modules():
        hooks.append(module.register_forward_hook(count))
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    return total


def matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def test_digits(data_dir: str | None, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data_dir:
        try:
            data = load_mnist(Path(data_dir), "mnist")
        except DataError:
            data = load_mnist(Path(data_dir), "mnist_subset")
        if len(data.test_labels) < count:
            raise SystemExit(f"error: --digits {count}: {data_dir} has {len(data.test_labels)} test digits")
        return images_to_tensor(data.test_images[:count]), data.test_labels[:count], str(data.source)
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(count, 1, 28, 28, generator=generator), torch.randint(0, 10, (count,), generator=generator),
            "random digits")


def print_profile(problem, theta, floor_seconds: float, top: int = 8) -> None:
    """Where one evaluation's time goes: the operators with the most own (self) time, in seconds and as a share
    of the evaluation, beside the time the whole work takes at the matrix-product rate."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        problem.validation_outputs(theta)
    total = time.perf_counter() - start
    events = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")),
                    key=lambda e: -e.self_cpu_time_total)
    print(f"  profile of one evaluation ({total:.2f} s under the profiler; {floor_seconds:.2f} s at the matmul rate):")
    for event in events[:top]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"    {event.key.removeprefix('aten::'):<28} {seconds:7.2f} s  {100 * seconds / total:5.1f}%  "
              f"({event.count} calls)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000, help="robots (default 1000)")
    parser.add_argument("--digits", type=int, default=10000, help="test digits (default 10000)")
    parser.add_argument("--val-batch", type=int, default=500, help="validation batch (as mnist_scaling_1000.yaml)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole-batch-nodes", type=int, default=100,
                        help="robots timed in whole-batch blocks (scaled to --nodes; 0: skip)")
    parser.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout (else random digits)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one evaluation (torch.profiler) and print the operators with the most time")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("error: --threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.nodes < 1 or args.digits < 1 or args.val_batch < 1 or args.repeats < 1:
        raise SystemExit("error: --nodes, --digits, --val-batch and --repeats must be at least 1")

    x, y, source = test_digits(args.data_dir, args.digits)
    model = mnist_cnn()
    train_split = [torch.arange(1)] * args.nodes
    problem = MNISTProblem("eval", model, train_split, x[:1], y[:1], x, y, loss="NLL",
                           metrics=["validation_loss", "top1_accuracy"], train_batch_size=1,
                           val_batch_size=args.val_batch, execution="grouped", seed=0)
    theta = problem.theta + 0.01 * torch.randn(problem.theta.shape, generator=torch.Generator().manual_seed(1))
    macs = multiply_adds_per_digit(model) * args.nodes * args.digits

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    memory = PeakMemory(torch.device("cpu"))
    peak = memory.measure(lambda: problem.validation_outputs(theta))
    blocked, whole, unfloored, rates = [], [], [], []
    subset = theta[:min(args.whole_batch_nodes, args.nodes)]
    for _ in range(args.repeats):  # interleaved: the machine is noisy
        rates.append(matmul_flops())
        blocked.append(timed(lambda: problem.validation_outputs(theta)))
        saved = node_stack.EVAL_MIN_SAMPLES
        node_stack.EVAL_MIN_SAMPLES = 1
        try:
            unfloored_block = problem.stack.eval_block(x)
            unfloored.append(timed(lambda: problem.validation_outputs(theta)))
        finally:
            node_stack.EVAL_MIN_SAMPLES = saved
        if args.whole_batch_nodes:
            saved = node_stack.EVAL_BLOCK_BYTES
            node_stack.EVAL_BLOCK_BYTES = 1 << 62
            try:
                whole.append(timed(lambda: problem.validation_outputs(subset)) * args.nodes / len(subset))
            finally:
                node_stack.EVAL_BLOCK_BYTES = saved
    seconds, rate = statistics.median(blocked), statistics.median(rates)
    limit = 2 * macs / rate
    nodes, samples = problem.stack.eval_block(x)
    print(f"evaluation of {args.nodes} robots (paper CNN) on {args.digits} digits ({source}), "
          f"{torch.get_num_threads()} threads, validation batch {args.val_batch}")
    print(f"  multiply-adds: {macs / 1e12:.3f} T; matmul rate {rate / 1e9:.1f} GFLOP/s -> {limit:.2f} s at that rate")
    print(f"  blocks of {nodes} robots x {samples} digits: {seconds:.2f} s (median of {args.repeats}); "
          f"peak memory +{peak:.0f} MiB ({memory.method})")
    print(f"  blocks of {unfloored_block[0]} robots x {unfloored_block[1]} digits (no floor on the digits per block): "
          f"{statistics.median(unfloored):.2f} s")
    if whole:
        print(f"  whole-batch blocks ({len(subset)} robots, scaled to {args.nodes}): {statistics.median(whole):.2f} s")
    if args.profile:
        print_profile(problem, theta, limit)
    print(f"evaluation / matmul-rate time: {seconds / limit:.2f}")


if __name__ == "__main__":
    main()
