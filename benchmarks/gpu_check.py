"""The CUDA path in one short script: the node stack's forms and short MNIST, density and RL runs on the GPU against the
same runs on the CPU (float64, within float tolerance), with the seconds per round on each device.

    venv/bin/python benchmarks/gpu_check.py [--rounds 20] [--out DIR]

Without a CUDA device every CUDA part is skipped with its reason and the CPU runs still go (what the test suite runs).
Each check prints one line ``PASS``, ``FAIL`` or ``SKIP``; the exit status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from experiments import api

TOLERANCE = 1e-6  # float64: the same math in another order of summation (cuBLAS / cuDNN against MKL)
REPO = Path(__file__).resolve().parent.parent


def mnist_config(rounds: int) -> dict:
    pair = lambda name, opt: {"problem_name": name, "train_batch_size": 16, "val_batch_size": 500,  # noqa: E731
                              "metrics": ["forward_pass_count", "validation_loss", "consensus_error", "top1_accuracy"],
                              "metrics_config": {"evaluate_frequency": max(1, rounds // 4)},
                              "optimizer_config": {"outer_iterations": rounds, **opt}}
    return {"experiment": {"name": "gpu_mnist", "dataset": "mnist_subset", "seed": 3, "dtype": "float64",
                           "validation_size": 500, "data_split_type": "hetero", "execution": "grouped",
                           "graph": {"num_nodes": 5, "type": "cycle"}},
            "problem_configs": {"dinno": pair("dinno", {"alg_name": "dinno", "rho_init": 0.5, "primal_iterations": 2,
                                                        "primal_lr_start": 0.005}),
                                "dsgt": pair("dsgt", {"alg_name": "dsgt", "alpha": 0.01})}}


def density_config(rounds: int) -> dict:
    """The shipped density demo, its DiNNO pair only, short, in float64."""
    import yaml

    cfg = yaml.safe_load((REPO / "experiments" / "configs" / "density_demo.yaml").read_text())
    exp = cfg["experiment"]
    exp.update(dtype="float64", execution="grouped", centralized=False, name="gpu_density")
    exp["individual_training"]["train_solo"] = False
    exp["data"]["data_dir"] = str(REPO / exp["data"]["data_dir"])
    exp["data"]["num_validation_scans"] = 20
    pair = cfg["problem_configs"]["problem1"]
    pair["optimizer_config"]["outer_iterations"] = rounds
    pair["metrics_config"]["evaluate_frequency"] = max(1, rounds // 4)
    pair["metrics"] = [m for m in pair["metrics"] if m != "mesh_grid_density"]
    cfg["problem_configs"] = {"problem1": pair}
    return cfg


def rl_config(rounds: int) -> dict:
    return {"experiment": {"name": "gpu_rl", "problem": "rl_tag", "seed": 0, "dtype": "float64", "execution": "grouped",
                           "graph": {"num_nodes": 3, "type": "wheel"}, "episodes_per_batch": 4, "episode_steps": 20,
                           "eval_episodes": 2},
            "problem_configs": {"dinno": {"problem_name": "dinno", "metrics_config": {"evaluate_frequency": max(1, rounds // 4)},
                                          "optimizer_config": {"alg_name": "dinno", "outer_iterations": rounds,
                                                               "rho_init": 1.0, "primal_iterations": 5,
                                                               "primal_lr_start": 0.0003}}}}


def compare(one: Path, other: Path) -> float:
    """The largest relative difference of the two runs' per-round metrics (every pair, every column)."""
    a, b = api.load(one).metrics, api.load(other).metrics
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return float("inf")
    worst = 0.0
    for column in a.columns:
        if column == "pair" or a[column].dtype == object:
            continue
        x, y = a[column].to_numpy(dtype=float), b[column].to_numpy(dtype=float)
        keep = ~(x != x)
        scale = max(1.0, float(abs(x[keep]).max(initial=0.0)))
        worst = max(worst, float(abs(x[keep] - y[keep]).max(initial=0.0)) / scale)
    return worst


def seconds_per_round(folder: Path) -> dict[str, float]:
    results = api.load(folder)
    return {pair["problem_name"]: pair.get("seconds", 0.0) / max(1, pair.get("rounds_completed", 1))
            for pair in results.manifest["pairs"]}


def stack_check() -> str:
    """The node stack's grouped and vmap forms and their gradients, CUDA against CPU."""
    from problems.mnist import mnist_cnn
    from problems.node_stack import NodeStack
    from problems.tag import actor_critic

    worst = 0.0
    for model, shape in ((mnist_cnn(), (4, 8, 1, 28, 28)), (actor_critic(12, 5, [64, 64]), (3, 16, 12))):
        torch.manual_seed(0)
        x = torch.randn(*shape, dtype=torch.float64)
        for execution in ("grouped", "vmap"):
            results = []
            for device in ("cpu", "cuda"):
                stack = NodeStack(model, shape[0], device=device, dtype=torch.float64, execution=execution)
                out = stack.forward(stack.theta, x.to(device))
                losses, grads = stack.loss_and_grad(stack.theta, x.to(device), torch.zeros_like(out),
                                                    lambda o, t: ((o - t) ** 2).flatten(1).mean(1))
                results.append((out.cpu(), grads.cpu()))
            for p, q in zip(*results):
                worst = max(worst, float((p - q).abs().max() / max(1.0, float(p.abs().max()))))
    return ("PASS" if worst <= TOLERANCE else "FAIL") + f" node stack forms on CUDA: largest relative difference {worst:.2e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    lines, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        if cuda:
            line = stack_check()
            lines.append(line)
            failed |= line.startswith("FAIL")
        else:
            lines.append("SKIP node stack forms on CUDA: no CUDA device")
        for name, config in (("mnist", mnist_config), ("density", density_config), ("rl", rl_config)):
            cfg = config(args.rounds)
            start = time.perf_counter()
            cpu = api.run(cfg, output_dir=base / f"{name}_cpu", device="cpu")
            cpu_seconds = seconds_per_round(cpu)
            lines.append(f"INFO {name} on CPU: " + ", ".join(f"{p} {1000 * s:.1f} ms/round" for p, s in cpu_seconds.items())
                         + f" ({time.perf_counter() - start:.0f} s in all)")
            if not cuda:
                lines.append(f"SKIP {name} on CUDA against CPU: no CUDA device")
                continue
            gpu = api.run(cfg, output_dir=base / f"{name}_cuda", device="cuda")
            difference = compare(cpu, gpu)
            ok = difference <= TOLERANCE * 100  # many rounds of training: the tolerance grows with them
            failed |= not ok
            gpu_seconds = seconds_per_round(gpu)
            lines.append(f"{'PASS' if ok else 'FAIL'} {name} on CUDA against CPU: largest relative difference "
                         f"{difference:.2e}; " + ", ".join(f"{p} {1000 * s:.1f} ms/round (CPU {1000 * cpu_seconds[p]:.1f})"
                                                          for p, s in gpu_seconds.items()))
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
