"""Shared test helpers: distributed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

from experiments.runner import main

REPO = Path(__file__).resolve().parents[2]


def tiny_mnist_config(dtype: str = "float64", rounds: int = 20) -> dict:
    def pair(name, opt, **metrics_config):
        return {"problem_name": name, "train_batch_size": 16, "val_batch_size": 200,
                "metrics": ["forward_pass_count", "validation_loss", "consensus_error", "top1_accuracy",
                            "current_epoch", "train_loss_moving_average"],
                "metrics_config": {"evaluate_frequency": 5, **metrics_config},
                "optimizer_config": {"outer_iterations": rounds, **opt}}

    return {
        "experiment": {"name": "tiny", "dataset": "mnist_subset", "seed": 3, "dtype": dtype,
                       "data_split_type": "hetero", "validation_size": 200, "centralized": True,
                       "execution": "grouped",
                       "graph": {"num_nodes": 5, "type": "cycle"},
                       "individual_training": {"train_solo": True, "epochs": 1, "train_batch_size": 16}},
        "problem_configs": {
            "p1": pair("dinno", {"alg_name": "dinno", "rho_init": 0.5, "primal_iterations": 2,
                                 "primal_lr_start": 0.005}),
            "p2": pair("dsgd", {"alg_name": "dsgd", "alpha0": 0.01}),
            "p3": pair("dsgt", {"alg_name": "dsgt", "alpha": 0.01}, eval_nodes=3),
        },
    }


def write_config(cfg: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def torchrun(k: int, config: Path | None, out: Path | None, *extra: str, timeout: float = 300,
             wait: bool = True, launcher: tuple = ()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}", *launcher,
           str(REPO / "experiments" / "run.py"), *([str(config)] if config is not None else []), "--quiet", *extra]
    if out is not None:
        cmd += ["--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def one_process(config: Path, out: Path) -> None:
    """The reference run in this process, on one thread like each torchrun worker (a different thread
    count splits reductions differently, which changes float32 results in the last bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(config), "--output-dir", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)


def assert_same_metrics(one: Path, many: Path, names, tolerance: float) -> None:
    for name in names:
        a = pd.read_csv(one / f"{name}_metrics.csv")
        b = pd.read_csv(many / f"{name}_metrics.csv")
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, name
        assert a["node"].tolist() == b["node"].tolist() and a["round"].tolist() == b["round"].tolist()
        for column in a.columns:
            x, y = a[column].to_numpy(), b[column].to_numpy()
            assert (pd.isna(x) == pd.isna(y)).all(), (name, column)
            diff = abs(x - y)[~pd.isna(x)]
            assert diff.size == 0 or diff.max() <= tolerance * max(1.0, abs(x[~pd.isna(x)]).max()), \
                (name, column, float(diff.max()))


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on 127.0.0.1 now."""
    import random
    import socket

    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports")
