"""The scaling study: how does a method degrade as the team grows or the network thins out?

A scaling config (``experiment.scaling`` plus one top-level ``problem`` as in the original research
code, or ``problem_configs`` to compare several optimizers) runs a series of trials. ``const:
fiedler`` sweeps the number of robots N over ``num_trials`` values from ``min_N`` to ``max_N`` on disk
graphs of algebraic connectivity ``target_fied``; ``const: num_nodes`` keeps ``num_nodes`` robots and
sweeps the target from ``min_fied`` to ``max_fied``. Every trial runs every pair on its own graph.

Output folder::

    config.yaml           the config as given (with --set overrides); --resume reads it back
    manifest.json         the trial plan, statuses, versions
    base_model.pt         the one frozen initial model of every node of every pair of every trial
    graphs/trial_XX.json  node-link graph with positions, radius and measured Fiedler value
    reference/            the centralized run that sets the target accuracy (when not fixed)
    trial_XX/             each pair's results as in an ordinary run, plus trial.json (its rows);
                          written as trial_XX.partial/ and renamed when the trial is complete
    scaling.csv           one row per (trial, pair)
    figures/              accuracy, rounds to target and seconds per round vs N (or Fiedler value)

``--resume OUTPUT_DIR`` keeps every complete trial and runs the others with the same graphs, base
model and splits.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from experiments.config import ConfigError, apply_overrides, load_yaml, validate_scaling_config
from experiments.setups import MnistSetup, load_experiment_mnist, resolve_path
from optimizers import BASELINES, OPTIMIZERS
from optimizers.base import DivergedError
from optimizers.graphs import GraphError, fiedler_value, graph_from_json, graph_to_json, make_graph
from optimizers.network import InProcessNetwork
from problems.mnist import mnist_cnn
from problems.mnist_data import DataError, split_indices

CSV_FIELDS = ("trial", "num_nodes", "target_fiedler", "fiedler", "radius", "num_edges", "problem_name",
              "alg_name", "status", "rounds", "seconds", "seconds_per_round", "final_top1_mean",
              "final_top1_min", "final_validation_loss_mean", "final_consensus_error", "target_accuracy",
              "rounds_to_target", "bytes_sent_per_node")


def trial_plan(scaling: dict) -> list[dict]:
    """(trial, N, target Fiedler value) of every trial."""
    count = scaling["num_trials"]
    if scaling["const"] == "fiedler":
        sizes = np.round(np.linspace(scaling["min_N"], scaling["max_N"], count)).astype(int)
        targets = [scaling["target_fied"]] * count
    else:
        sizes = [scaling["num_nodes"]] * count
        targets = np.linspace(scaling["min_fied"], scaling["max_fied"], count)
    return [{"trial": i, "num_nodes": int(n), "target_fiedler": float(f)}
            for i, (n, f) in enumerate(zip(sizes, targets))]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def _stop(signum, frame):
    """SIGTERM ends a sweep like Ctrl-C: finished trials are kept."""
    raise KeyboardInterrupt


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def final_stats(history: dict, metric: str) -> torch.Tensor | None:
    """The last evaluation of a per-node metric, without the nodes that were not evaluated (NaN)."""
    if not history.get(metric):
        return None
    values = torch.as_tensor(history[metric][-1], dtype=torch.float64).reshape(-1)
    values = values[~torch.isnan(values)]
    return values if values.numel() else None


def rounds_to_target(history: dict, target: float | None) -> float:
    """First evaluated round whose node-mean top-1 accuracy reaches ``target`` (NaN when never)."""
    if target is None:
        return math.nan
    for round_index, acc in zip(history.get("round", []), history.get("top1_accuracy", [])):
        if float(torch.as_tensor(acc, dtype=torch.float64).nanmean()) >= target:
            return float(round_index)
    return math.nan


def pair_row(plan: dict, graph, pair: dict, history: dict, target: float | None) -> dict:
    row = {**plan, "fiedler": graph.graph["fiedler"], "radius": graph.graph.get("radius"),
           "num_edges": graph.number_of_edges(), "problem_name": pair["problem_name"],
           "alg_name": pair["alg_name"], "status": pair["status"], "rounds": pair.get("rounds_completed", 0),
           "seconds": pair.get("seconds", math.nan), "target_accuracy": target,
           "rounds_to_target": rounds_to_target(history, target),
           "bytes_sent_per_node": pair.get("bytes_sent_total", math.nan) / plan["num_nodes"]}
    row["seconds_per_round"] = row["seconds"] / row["rounds"] if row["rounds"] else math.nan
    for key, metric, reduce in (("final_top1_mean", "top1_accuracy", torch.mean),
                                ("final_top1_min", "top1_accuracy", torch.min),
                                ("final_validation_loss_mean", "validation_loss", torch.mean),
                                ("final_consensus_error", "consensus_error", torch.mean)):
        values = final_stats(history, metric)
        row[key] = float(reduce(values)) if values is not None else math.nan
    return row


def trial_graph(out_dir: Path, plan: dict, exp: dict):
    """The trial's graph: read back when the folder has it (resume), else built and written."""
    path = out_dir / "graphs" / f"trial_{plan['trial']:02d}.json"
    if path.exists():
        return graph_from_json(json.loads(path.read_text()))
    graph = make_graph("fiedler", plan["num_nodes"], seed=exp["seed"], target_fiedler=plan["target_fiedler"],
                       gen_attempts=exp["graph"]["gen_attempts"])
    graph.graph["fiedler"] = float(fiedler_value(graph))
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, json.dumps(graph_to_json(graph)))
    return graph


def frozen_base_model(out_dir: Path, exp: dict):
    path = out_dir / "base_model.pt"
    torch.manual_seed(exp["seed"])
    model = mnist_cnn(**exp["model"])
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trial_config(cfg: dict, plan: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["experiment"]["graph"].update(num_nodes=plan["num_nodes"], target_fiedler=plan["target_fiedler"])
    return cfg


def train_pair(problem, optimizer_cls, opt_cfg: dict, graph, device, folder: Path, pair: dict) -> dict:
    """Train one pair of a trial on ``graph``; fills ``pair`` (status, seconds, rounds, bytes) and writes
    ``<name>_results.pt`` and ``<name>_final_params.pt`` into ``folder``. Returns the history."""
    network = InProcessNetwork(graph, device=device, dtype=problem.dtype)
    optimizer = optimizer_cls(problem, network, {k: v for k, v in opt_cfg.items() if k != "alg_name"})
    rounds = 0

    def progress(k, metrics):
        nonlocal rounds
        rounds = k

    start = time.perf_counter()
    try:
        optimizer.train(progress=progress, profile_dir=folder)
        pair["status"] = "completed"
    except DivergedError as exc:
        pair.update(status="diverged", error=str(exc))
        problem.evaluate(exc.round_index, extras=optimizer._extras())
    except Exception as exc:  # a crash of one pair never loses the others
        pair.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        print(f"pair {pair['problem_name']} failed: {pair['error']}", file=sys.stderr)
    pair.update(seconds=time.perf_counter() - start, rounds_completed=rounds,
                bytes_sent_total=float(network.bytes_sent.sum()))
    torch.save(problem.history, folder / f"{pair['problem_name']}_results.pt")
    torch.save(problem.theta.detach().cpu(), folder / f"{pair['problem_name']}_final_params.pt")
    return problem.history


def run_in_folder(final: Path, work) -> dict:
    """Run ``work(folder)`` in ``final``.partial and rename it to ``final`` once it returns: a folder
    without the suffix is always complete. Its return value is kept in done.json."""
    done = final / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    result = work(partial)
    write_json(partial / "done.json", result)
    os.replace(partial, final)
    return result


def target_accuracy(out_dir: Path, cfg: dict, setup: MnistSetup, device) -> float:
    """Fixed ``scaling.target_accuracy``, else ``target_fraction`` of a centralized run's final accuracy."""
    scaling = cfg["experiment"]["scaling"]
    if scaling["target_accuracy"] is not None:
        return scaling["target_accuracy"]

    def centralized(folder: Path) -> dict:
        problem, opt_cfg = setup.make_baseline("centralized")
        pair = {"problem_name": "centralized", "alg_name": "local"}
        history = train_pair(problem, BASELINES["local"], opt_cfg, setup.graph, device, folder, pair)
        return {"top1_accuracy": float(final_stats(history, "top1_accuracy").mean()), "pair": pair}

    reference = run_in_folder(out_dir / "reference", centralized)
    return scaling["target_fraction"] * reference["top1_accuracy"]


def run_trial(out_dir: Path, cfg: dict, plan: dict, setup: MnistSetup, device, target: float | None) -> list[dict]:
    def work(folder: Path) -> dict:
        rows = []
        for pc in cfg["problem_configs"].values():
            alg = pc["optimizer_config"]["alg_name"]
            pair = {"problem_name": pc["problem_name"], "alg_name": alg}
            history = train_pair(setup.make_problem(pc), OPTIMIZERS[alg], pc["optimizer_config"], setup.graph,
                                 device, folder, pair)
            rows.append(pair_row(plan, setup.graph, pair, history, target))
            print(f"  {pair['problem_name']}: {pair['status']}, {pair['rounds_completed']} rounds in "
                  f"{pair['seconds']:.1f} s, final top-1 {rows[-1]['final_top1_mean']:.3f}", flush=True)
        return {"rows": rows}

    return run_in_folder(out_dir / f"trial_{plan['trial']:02d}", work)["rows"]


def largest_trial_check(cfg: dict, data, plan: list[dict]) -> None:
    """Every node of the largest team must hold a full training batch (checked before anything runs)."""
    exp = cfg["experiment"]
    largest = max(p["num_nodes"] for p in plan)
    split = split_indices(data.train_labels, largest, exp["data_split_type"], seed=exp["seed"],
                          alpha=exp["dirichlet_alpha"])
    smallest = min(len(ix) for ix in split)
    for key, pc in cfg["problem_configs"].items():
        if pc["train_batch_size"] > smallest:
            raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger than "
                              f"the {smallest} training samples of a node at N = {largest}; lower it or max_N")


def is_sweep_folder(folder: str | Path) -> bool:
    path = Path(folder) / "manifest.json"
    return path.is_file() and json.loads(path.read_text()).get("kind") == "scaling"


def handles(args) -> bool:
    """Whether the command line asks for a scaling sweep (a scaling config or a sweep folder to resume)."""
    if args.resume is not None:
        return is_sweep_folder(args.resume)
    try:
        from experiments.config import is_scaling_config
        return is_scaling_config(load_yaml(args.config))
    except ConfigError:
        return False


def main(args) -> int:
    from experiments.runner import DEFAULT_OUTPUT_DIR, git_commit, new_output_dir, pick_device

    resume = args.resume is not None
    try:
        if resume:
            if args.overrides or args.config:
                raise ConfigError("--resume: the folder's config.yaml is used; give no config file or --set")
            out_dir = Path(args.resume).resolve()
            raw = load_yaml(out_dir / "config.yaml")
        else:
            raw = apply_overrides(load_yaml(args.config), args.overrides)
        cfg = validate_scaling_config(raw)
        exp = cfg["experiment"]
        device = pick_device(args.device, exp["use_cuda"])
        plan = trial_plan(exp["scaling"])
        data = load_experiment_mnist(exp)
        largest_trial_check(cfg, data, plan)
        if not resume:
            if args.output_dir:
                out_dir = Path(args.output_dir).resolve()
                if out_dir.exists() and any(out_dir.iterdir()):
                    raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder "
                                      f"(or --resume it)")
            else:
                out_dir = new_output_dir(resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR), exp["name"])
    except (ConfigError, GraphError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _stop)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_atomic(out_dir / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    manifest = {"kind": "scaling", "name": exp["name"], "status": "running", "const": exp["scaling"]["const"],
                "started": dt.datetime.now().isoformat(timespec="seconds"), "resumed": resume,
                "seed": exp["seed"], "device": str(device), "git_commit": git_commit(), "torch": torch.__version__,
                "data": data.describe(), "trials": plan}
    write_json(out_dir / "manifest.json", manifest)

    base_model = frozen_base_model(out_dir, exp)
    rows: list[dict] = []
    status = "completed"
    print(f"scaling study {exp['name']}: {len(plan)} trial(s) x {len(cfg['problem_configs'])} pair(s), "
          f"N = {', '.join(str(p['num_nodes']) for p in plan)}; results: {out_dir}")
    try:
        target = None
        for plan_item in plan:
            graph = trial_graph(out_dir, plan_item, exp)
            setup = MnistSetup(trial_config(cfg, plan_item), device, graph=graph, data=data)
            setup.base_model = base_model
            if plan_item["trial"] == 0:
                target = target_accuracy(out_dir, cfg, setup, device)
            print(f"trial {plan_item['trial']}: N = {plan_item['num_nodes']}, Fiedler value "
                  f"{graph.graph['fiedler']:.3f} (target {plan_item['target_fiedler']:.3f})")
            rows += run_trial(out_dir, cfg, plan_item, setup, device, target)
            write_csv(out_dir / "scaling.csv", rows)
        if any(r["status"] != "completed" for r in rows):
            status = "failed"
    except KeyboardInterrupt:
        status = "interrupted"
    except (GraphError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = "failed"
    manifest.update(status=status, finished=dt.datetime.now().isoformat(timespec="seconds"))
    try:
        from visualization.plotting import save_scaling_figures
        manifest["figures"] = [str(p.relative_to(out_dir)) for p in save_scaling_figures(out_dir)]
    except Exception as exc:  # figures must never cost the results
        manifest["figures_error"] = f"{type(exc).__name__}: {exc}"
        print(f"warning: figures could not be drawn: {exc}", file=sys.stderr)
    write_json(out_dir / "manifest.json", manifest)
    print_rows(rows)
    print(f"\nresults: {out_dir}")
    if status == "interrupted":
        print(f"interrupted: finished trials are kept; continue with --resume {out_dir}", file=sys.stderr)
        return 130
    return 0 if status == "completed" else 1


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'trial':>5} {'N':>5} {'fiedler':>8} {'pair':<14} {'status':<10} {'top-1':>6} {'min':>6} "
          f"{'to target':>9} {'s/round':>8}")
    for r in rows:
        print(f"{r['trial']:>5} {r['num_nodes']:>5} {r['fiedler']:>8.3f} {r['problem_name']:<14.14} "
              f"{r['status']:<10} {r['final_top1_mean']:>6.3f} {r['final_top1_min']:>6.3f} "
              f"{r['rounds_to_target']:>9} {r['seconds_per_round']:>8.3f}")
