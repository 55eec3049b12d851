"""The experiment runner: one YAML file -> every (problem, optimizer) pair under identical conditions.

Exit status: 0 when every pair completed, 1 when a pair failed or diverged, 2 for a bad config or
command line (nothing written), 130 when interrupted (what exists is written first).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import signal
import subprocess
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from experiments.config import ConfigError, apply_overrides, load_yaml, validate_config
from experiments.setups import REPO_ROOT, SETUPS, resolve_path
from optimizers import BASELINES, OPTIMIZERS
from optimizers.base import DivergedError
from optimizers.graphs import GraphError, graph_to_json
from optimizers.network import InProcessNetwork
from problems.mnist_data import DataError

DEFAULT_OUTPUT_DIR = REPO_ROOT / "experiments" / "outputs"
SUMMARY_METRICS = ("validation_loss", "top1_accuracy", "consensus_error", "train_loss_moving_average",
                   "current_epoch", "forward_pass_count", "bytes_sent")
# Per-evaluation values with one number per node go into the tidy CSV.
SCALAR_METRICS = ("forward_pass_count", "validation_loss", "top1_accuracy", "consensus_error",
                  "current_epoch", "train_loss_moving_average", "bytes_sent", "wall_time")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="run.py", description="Run every (problem, optimizer) pair of an experiment config.")
    parser.add_argument("config", nargs="?", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. problem_configs.problem1.optimizer_config."
                             "outer_iterations=5 (value parsed as YAML; repeatable)")
    parser.add_argument("--output-dir", help="write into this folder (default: "
                                             "<output_metadir>/<timestamp>_<name>/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides experiment.use_cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--resume", metavar="OUTPUT_DIR",
                        help="continue an interrupted run in its folder (scaling sweeps: finished trials are kept)")
    args = parser.parse_args(argv)
    if args.config is None and args.resume is None:
        parser.error("a config file (or --resume OUTPUT_DIR) is required")
    return args


def pick_device(requested: str | None, use_cuda: bool) -> torch.device:
    if requested == "cuda" or (requested is None and use_cuda):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if requested == "cuda":
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
        print("note: experiment.use_cuda is true but no CUDA device is available; running on CPU",
              file=sys.stderr)
    return torch.device("cpu")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_output_dir(base: Path, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    candidate = base / f"{stamp}_{name}"
    suffix = 1
    while candidate.exists():
        candidate = base / f"{stamp}_{name}_{suffix}"
        suffix += 1
    return candidate


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def history_rows(history: dict) -> list[dict]:
    """Tidy rows: one per (round, node) with one column per scalar metric."""
    rows = []
    metrics = [m for m in SCALAR_METRICS if m in history]
    for e, round_index in enumerate(history.get("round", [])):
        columns = {}
        for m in metrics:
            if e < len(history[m]):
                columns[m] = torch.as_tensor(history[m][e]).reshape(-1)
        num_nodes = max((len(v) for v in columns.values()), default=0)
        for node in range(num_nodes):
            row = {"round": round_index, "node": node}
            for m, v in columns.items():
                row[m] = float(v[node] if len(v) > 1 else v[0])
            rows.append(row)
    return rows


def write_pair_results(out_dir: Path, name: str, history: dict, theta: torch.Tensor | None) -> None:
    torch.save(history, out_dir / f"{name}_results.pt")
    rows = history_rows(history)
    if rows:
        with open(out_dir / f"{name}_metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if theta is not None:
        torch.save(theta.detach().cpu(), out_dir / f"{name}_final_params.pt")


def summarize(pair: dict, history: dict) -> dict:
    row = {"problem_name": pair["problem_name"], "alg_name": pair["alg_name"], "status": pair["status"],
           "rounds": pair.get("rounds_completed", 0), "seconds": round(pair.get("seconds", 0.0), 3)}
    for m in SUMMARY_METRICS:
        if history.get(m):
            final = torch.as_tensor(history[m][-1], dtype=torch.float64).reshape(-1)
            row[f"{m}_mean"] = float(final.mean())
            row[f"{m}_min"] = float(final.min())
            row[f"{m}_max"] = float(final.max())
    return row


def format_ranges(metrics: dict) -> str:
    parts = []
    for m in ("validation_loss", "top1_accuracy", "consensus_error", "train_loss_moving_average"):
        if m in metrics:
            v = metrics[m].to(torch.float64)
            parts.append(f"{m} {float(v.min()):.4g}..{float(v.max()):.4g}")
    return ", ".join(parts)


def run_pair(name: str, alg_name: str, problem, optimizer_cls, opt_cfg: dict, graph, device, out_dir,
             quiet: bool, verbose: bool, pair: dict) -> dict:
    """Train one pair; returns its history (also on divergence/failure)."""
    network = InProcessNetwork(graph, device=device, dtype=problem.dtype)
    optimizer = optimizer_cls(problem, network, opt_cfg)
    bar = tqdm(total=optimizer.outer_iterations, desc=f"{name} ({alg_name})", disable=quiet,
               dynamic_ncols=True, leave=True, file=sys.stdout, mininterval=1.0)
    rounds_done = 0

    def progress(k, metrics):
        nonlocal rounds_done
        rounds_done = k
        bar.update(1)
        if metrics is not None:
            if "validation_loss" in metrics:
                bar.set_postfix(val_loss=f"{float(metrics['validation_loss'].mean()):.4f}")
            if verbose:
                bar.write(f"  [{name}] round {k}: {format_ranges(metrics)}")

    start = time.perf_counter()
    try:
        before_round = None  # problems whose data or graph change every round define it
        if hasattr(problem, "before_round"):
            before_round = partial(problem.before_round, network=network)
        optimizer.train(progress=progress, profile_dir=out_dir, before_round=before_round)
        pair["status"] = "completed"
    except DivergedError as exc:
        pair["status"] = "diverged"
        pair["diverged_round"] = exc.round_index
        pair["error"] = str(exc)
        bar.write(f"  [{name}] diverged: {exc}")
        problem.evaluate(exc.round_index, extras=optimizer._extras())
    finally:
        bar.close()
        pair["seconds"] = time.perf_counter() - start
        pair["rounds_completed"] = rounds_done
        pair["outer_iterations"] = optimizer.outer_iterations
        pair["bytes_sent_total"] = float(network.bytes_sent.sum())
        pair["node_stack"] = {"x".join(map(str, shape)): {"execution": form, "nodes_per_chunk": size}
                              for shape, (form, size) in problem.stack.plans.items()}
    return problem.history


def print_table(rows: list[dict]) -> None:
    cols = [("problem_name", "pair", "{}"), ("alg_name", "alg", "{}"), ("status", "status", "{}"),
            ("rounds", "rounds", "{}"), ("seconds", "seconds", "{:.1f}"),
            ("validation_loss_mean", "val loss (mean)", "{:.4f}"),
            ("top1_accuracy_mean", "top-1 mean", "{:.4f}"), ("top1_accuracy_min", "top-1 min", "{:.4f}"),
            ("consensus_error_mean", "consensus err", "{:.3g}")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if c[0] in r else "-" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for i, row in enumerate(cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _terminate_as_interrupt(signum, frame):
    """SIGTERM (e.g. a batch scheduler stopping the job) ends the run like Ctrl-C: results are kept."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2

    from experiments import scaling  # scaling studies: their own sweep over graphs (experiments/scaling.py)
    if scaling.handles(args):
        return scaling.main(args)
    if args.resume is not None:
        print(f"error: --resume {args.resume}: not a scaling sweep folder (only sweeps can be resumed so far)",
              file=sys.stderr)
        return 2

    try:
        raw = apply_overrides(load_yaml(args.config), args.overrides)
        cfg = validate_config(raw)
        exp = cfg["experiment"]
        device = pick_device(args.device, exp["use_cuda"])
        setup = SETUPS[exp["problem"]](cfg, device)
    except (ConfigError, GraphError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    writeout = exp["writeout"] or args.output_dir is not None
    out_dir = None
    if writeout:
        if args.output_dir:
            out_dir = Path(args.output_dir).resolve()
            if out_dir.exists() and any(out_dir.iterdir()):
                print(f"error: --output-dir {out_dir} exists and is not empty; choose a new folder",
                      file=sys.stderr)
                return 2
        else:
            base = resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR)
            out_dir = new_output_dir(base, exp["name"])
        out_dir.mkdir(parents=True, exist_ok=True)

    manifest = {
        "name": exp["name"], "status": "running", "config_file": str(Path(args.config).resolve()),
        "overrides": args.overrides, "started": dt.datetime.now().isoformat(timespec="seconds"),
        "seed": exp["seed"], "device": str(device), "dtype": exp["dtype"], "problem": exp["problem"],
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "platform": platform.platform()},
        "data": setup.describe(),
        "graph": {"type": setup.graph.graph.get("type"), "num_nodes": setup.graph.number_of_nodes(),
                  "num_edges": setup.graph.number_of_edges()},
        "pairs": [],
    }
    try:
        import torchvision
        manifest["versions"]["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if out_dir is not None:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        write_json(out_dir / "graph.json", graph_to_json(setup.graph))
        write_json(out_dir / "manifest.json", manifest)

    jobs = [(pc["problem_name"], pc["optimizer_config"]["alg_name"], pc) for pc in cfg["problem_configs"].values()]
    if exp["individual_training"]["train_solo"]:
        jobs.append(("individual", "local", None))
    if exp["centralized"]:
        jobs.append(("centralized", "local", None))

    summary_rows = []
    interrupted = False
    print(f"experiment {exp['name']}: {len(jobs)} pair(s), {setup.graph.number_of_nodes()} nodes, "
          f"device {device}, data: {manifest['data'].get('source', '')}")
    for name, alg_name, pc in jobs:
        pair = {"problem_name": name, "alg_name": alg_name, "status": "running"}
        manifest["pairs"].append(pair)
        history: dict = {}
        problem = None
        try:
            if pc is not None:
                problem = setup.make_problem(pc)
                opt_cfg = dict(pc["optimizer_config"])
                cls = OPTIMIZERS[alg_name]
                verbose = pc["verbose_evals"]
            else:
                problem, opt_cfg = setup.make_baseline(name)
                cls = BASELINES["local"]
                verbose = exp["individual_training"]["verbose"]
            opt_cfg.pop("alg_name", None)
            history = run_pair(name, alg_name, problem, cls, opt_cfg, setup.graph, device, out_dir,
                               args.quiet, verbose, pair)
        except KeyboardInterrupt:
            pair["status"] = "interrupted"
            history = problem.history if problem is not None else {}
            interrupted = True
        except Exception as exc:  # a crash of one pair never loses the others
            pair["status"] = "failed"
            pair["error"] = f"{type(exc).__name__}: {exc}"
            pair["traceback"] = traceback.format_exc()
            history = problem.history if problem is not None else {}
            print(f"pair {name} failed: {pair['error']}", file=sys.stderr)
        if out_dir is not None and history:
            write_pair_results(out_dir, name, history, problem.theta if problem is not None else None)
        summary_rows.append(summarize(pair, history))
        if out_dir is not None:
            write_json(out_dir / "manifest.json", manifest)
        if interrupted:
            break

    statuses = [p["status"] for p in manifest["pairs"]]
    if interrupted:
        manifest["status"] = "interrupted"
    elif all(s == "completed" for s in statuses):
        manifest["status"] = "completed"
    else:
        manifest["status"] = "failed"
    manifest["finished"] = dt.datetime.now().isoformat(timespec="seconds")

    print()
    print_table(summary_rows)
    if out_dir is not None:
        with open(out_dir / "summary.csv", "w", newline="") as fh:
            fields = list(dict.fromkeys(k for r in summary_rows for k in r))
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(summary_rows)
        try:
            from visualization.plotting import save_standard_figures
            write_json(out_dir / "manifest.json", manifest)
            figures = save_standard_figures(out_dir)
            figures += setup.save_figures(out_dir)
            manifest["figures"] = [str(p.relative_to(out_dir)) for p in figures]
        except Exception as exc:  # figures must never cost the results
            manifest["figures_error"] = f"{type(exc).__name__}: {exc}"
            print(f"warning: figures could not be drawn: {exc}", file=sys.stderr)
        write_json(out_dir / "manifest.json", manifest)
        print(f"\nresults: {out_dir}")
        print(f"figures: {out_dir / 'figures'}")
    if interrupted:
        print("interrupted: results so far are written", file=sys.stderr)
        return 130
    return 0 if manifest["status"] == "completed" else 1
