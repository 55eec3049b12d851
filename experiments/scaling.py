"""The scaling study: how does a method degrade as the team grows or the network thins out?

Any problem kind whose graph is fixed for a run can be swept (``mnist``, ``density``, ``logreg``); every
pair trains through the same pair driver as an ordinary run (:mod:`experiments.pair`), so
``experiment.links``, ``experiment.graph_schedule`` and checkpoints mean the same in a sweep.

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
    trial_XX/             each pair's results as in an ordinary run, done.json (the trial's rows) and
                          pairs.json (each pair's status); written as trial_XX.partial/ (with the pairs'
                          checkpoints) and renamed when the trial is complete
    scaling.csv           one row per (trial, pair)
    figures/              accuracy, rounds to target and seconds per round vs N (or Fiedler value)

``--resume OUTPUT_DIR`` keeps every complete trial; in a partial one it keeps the finished pairs and
continues the others from their checkpoints, with the same graphs, base model and splits.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import shutil
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import torch
import yaml

from experiments.config import load_yaml, validate_scaling_config
from experiments.kinds import KINDS
from experiments.kinds.base import resolve_path
from experiments.pair import FINISHED, PairRun, PairSpec, load_history, pair_specs
from experiments.run_record import (
    DEFAULT_OUTPUT_DIR,
    FolderLock,
    RunRecord,
    choose_threads,
    git_commit,
    new_output_dir,
    pick_device,
    remove_partial_writes,
)
from foundation import results_io
from foundation.graph_files import graph_from_json, graph_to_json
from foundation.log import LOG
from foundation.schema import ConfigError
from optimizers.comm.graphs import GraphError, fiedler_value, make_graph
from problems.metrics import CONSENSUS_ERROR, TOP1_ACCURACY, VALIDATION_LOSS
from problems.splits import DataError

CSV_FIELDS = ("trial", "num_nodes", "target_fiedler", "fiedler", "radius", "num_edges", "problem_name",
              "alg_name", "status", "rounds", "seconds", "seconds_per_round", "final_top1_mean",
              "final_top1_min", "final_validation_loss_mean", "final_consensus_error", "target_accuracy",
              "rounds_to_target", "bytes_sent_per_node")


def trial_plan(scaling: dict) -> list[dict]:
    """(trial, N, target Fiedler value) of every trial."""
    count = scaling["num_trials"]
    sizes: list[int] | np.ndarray
    targets: list[float] | np.ndarray
    if scaling["const"] == "fiedler":
        sizes = np.round(np.linspace(scaling["min_N"], scaling["max_N"], count)).astype(int)
        targets = [scaling["target_fied"]] * count
    else:
        sizes = [scaling["num_nodes"]] * count
        targets = np.linspace(scaling["min_fied"], scaling["max_fied"], count)
    return [{"trial": i, "num_nodes": int(n), "target_fiedler": float(f)}
            for i, (n, f) in enumerate(zip(sizes, targets))]


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
    for round_index, acc in zip(history.get("round", []), history.get(TOP1_ACCURACY, [])):
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
    for key, metric, reduce in (("final_top1_mean", TOP1_ACCURACY, torch.mean),
                                ("final_top1_min", TOP1_ACCURACY, torch.min),
                                ("final_validation_loss_mean", VALIDATION_LOSS, torch.mean),
                                ("final_consensus_error", CONSENSUS_ERROR, torch.mean)):
        values = final_stats(history, metric)
        row[key] = float(reduce(values)) if values is not None else math.nan
    return row


def trial_graph(out_dir: Path, plan: dict, exp: dict) -> nx.Graph:
    """The trial's graph: read back when the folder has it (resume), else built and written."""
    path = out_dir / "graphs" / f"trial_{plan['trial']:02d}.json"
    if path.exists():
        return graph_from_json(json.loads(path.read_text()))
    graph = make_graph("fiedler", plan["num_nodes"], seed=exp["seed"], target_fiedler=plan["target_fiedler"],
                       gen_attempts=exp["graph"]["gen_attempts"])
    graph.graph["fiedler"] = float(fiedler_value(graph))
    path.parent.mkdir(exist_ok=True)
    results_io.write_json(path, graph_to_json(graph))
    return graph


def trial_config(cfg: dict, plan: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["experiment"]["graph"].update(num_nodes=plan["num_nodes"], target_fiedler=plan["target_fiedler"])
    return cfg


def shared_base_model(out_dir: Path, setup) -> torch.nn.Module:
    """The one frozen base model of the sweep: the first setup's, kept in base_model.pt (read back on resume)."""
    path = out_dir / "base_model.pt"
    model = setup.base_model
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        results_io.torch_save(model.state_dict(), path)
    return model


class TrialFolder:
    """``final``.partial while a trial runs (with its pairs' checkpoints and pairs.json), renamed to
    ``final`` with done.json when every pair is finished: a folder without the suffix is complete."""

    def __init__(self, final: Path):
        self.final = final
        self.partial = final.with_name(final.name + ".partial")

    def done(self) -> dict | None:
        path = self.final / "done.json"
        return json.loads(path.read_text()) if path.exists() else None

    def open(self, pairs: list[dict]) -> RunRecord:
        """The record of the trial's pairs (what an earlier, interrupted attempt left is kept)."""
        self.partial.mkdir(parents=True, exist_ok=True)
        path = self.partial / "pairs.json"
        kept = {}
        if path.exists():
            kept = {p["problem_name"]: p for p in json.loads(path.read_text()).get("pairs", [])}
        record = RunRecord(path, {"pairs": [kept.get(p["problem_name"], p) for p in pairs]})
        record.save()
        return record

    def close(self, result: dict) -> dict:
        results_io.write_json(self.partial / "done.json", result)
        if self.final.exists():
            shutil.rmtree(self.final)
        self.partial.replace(self.final)
        return result


def train_trial_pairs(folder: TrialFolder, setup, specs, device, interrupts, quiet: bool = True,
                      world=None) -> list[tuple]:
    """Train every pair of ``specs`` in the trial's partial folder, continuing an interrupted attempt:
    finished pairs are kept, the others continue from their checkpoints. Returns (pair, history) each.
    Under torch.distributed (``world``) every rank trains its block; rank 0 keeps the folder."""
    pairs = [{"problem_name": s.name, "alg_name": s.alg_name, "status": "not started"} for s in specs]
    writer = world is None or world.writer
    record = folder.open(pairs) if writer else RunRecord(None, {"pairs": pairs})
    if world is not None:  # the other ranks skip what rank 0's record says is finished
        statuses = world.share({p["problem_name"]: p["status"] for p in record.manifest["pairs"]})
        for name, status in statuses.items():
            record.pair(name)["status"] = status
    out = []
    for spec in specs:
        pair = record.pair(spec.name)
        if writer and pair["status"] in FINISHED and isinstance(pair.get("files"), dict) \
                and results_io.check_files(folder.partial, pair["files"]) is not None:
            pair["status"] = "not started"  # its files were lost after it finished: train it again
        if world is not None:
            pair["status"] = world.share(pair["status"] if writer else None)
        if pair["status"] not in FINISHED:
            record.update_pair(spec.name, status="running")
            run = PairRun(spec, setup, device, folder.partial if writer else None, record, interrupts, world)
            try:
                run.train(quiet=quiet, resume=True)
            except KeyboardInterrupt:
                record.update_pair(spec.name, status="interrupted")
                run.finish()
                raise
            except Exception as exc:  # a crash of one pair never loses the others
                record.update_pair(spec.name, status="failed", error=f"{type(exc).__name__}: {exc}")
                LOG.warning(f"pair {spec.name} failed: {type(exc).__name__}: {exc}")
            run.finish()
        out.append((record.pair(spec.name), load_history(folder.partial, spec.name) if writer else {}))
    return out


def target_accuracy(out_dir: Path, cfg: dict, setup, device, interrupts, world=None) -> float | None:
    """Fixed ``scaling.target_accuracy``, else ``target_fraction`` of a centralized run's final top-1
    accuracy (kinds without an accuracy: no target). Under torch.distributed rank 0 runs the reference."""
    scaling = cfg["experiment"]["scaling"]
    if scaling["target_accuracy"] is not None:
        return scaling["target_accuracy"]
    if TOP1_ACCURACY not in setup.problem_class.available_metrics():
        return None
    if world is not None:
        return world.share(target_accuracy(out_dir, cfg, setup, device, interrupts) if world.writer else None)
    folder = TrialFolder(out_dir / "reference")
    reference = folder.done()
    if reference is None:
        (pair, history), = train_trial_pairs(folder, setup, [PairSpec("centralized", "local", None)], device,
                                             interrupts)
        top1 = final_stats(history, TOP1_ACCURACY)
        assert top1 is not None  # the centralized reference evaluates top-1 accuracy
        reference = folder.close({TOP1_ACCURACY: float(top1.mean()), "pair": pair})
    return scaling["target_fraction"] * reference[TOP1_ACCURACY]


def run_trial(out_dir: Path, cfg: dict, plan: dict, setup, device, target: float | None, interrupts,
              world=None) -> list[dict]:
    folder = TrialFolder(out_dir / f"trial_{plan['trial']:02d}")
    writer = world is None or world.writer
    done = folder.done() if writer else None
    if world is not None:
        done = world.share(done)
    if done is not None:
        return done["rows"]
    specs = [s for s in pair_specs(cfg) if not s.is_baseline]
    trained = train_trial_pairs(folder, setup, specs, device, interrupts, world=world)
    if not writer:
        return []
    rows = []
    for pair, history in trained:
        rows.append(pair_row(plan, setup.graph, pair, history, target))
        LOG.info(f"  {pair['problem_name']}: {pair['status']}, {pair.get('rounds_completed', 0)} rounds in "
              f"{pair.get('seconds', 0.0):.1f} s, final top-1 {rows[-1]['final_top1_mean']:.3f}")
    return folder.close({"rows": rows})["rows"]


def is_sweep_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a sweep (a damaged manifest is not: --resume then says what is wrong with it)."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == "scaling"


def prepare(args, raw: dict | None = None, cfg: dict | None = None, make_folder: bool = True):
    """The sweep's validated config (as given and filled in), its kind, device, trial plan, shared data
    and output folder (a new one only when ``make_folder``: under torchrun rank 0 names it); everything
    is checked, on the largest team, before anything is written. ``raw`` / ``cfg``: the config the command
    line gave, read and validated once by the runner (a resumed sweep reads its folder's)."""
    resume = args.resume is not None
    out_dir: Path | None
    if resume:
        if args.overrides or args.config:
            raise ConfigError("--resume: the folder's config.yaml is used; give no config file or --set")
        out_dir = Path(args.resume).resolve()
        raw = load_yaml(out_dir / "config.yaml")
        cfg = validate_scaling_config(raw)
    assert cfg is not None  # the runner validated the config (or the resumed folder's, just above)
    exp = cfg["experiment"]
    kind = KINDS[exp["problem"]]
    device = pick_device(args.device, exp["use_cuda"])
    plan = trial_plan(exp["scaling"])
    data = kind.setup.load_data(cfg)
    largest = max(p["num_nodes"] for p in plan)
    largest_setup = kind.setup(trial_config(cfg, {"num_nodes": largest, "target_fiedler": exp["graph"]["target_fiedler"]}),
                               device, graph=nx.complete_graph(largest), data=data)
    choose_threads(exp["threads"], largest_setup.base_model)
    if not resume:
        if args.output_dir:
            out_dir = Path(args.output_dir).resolve()
            if make_folder and out_dir.exists() and any(out_dir.iterdir()):
                raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder "
                                  f"(or --resume it)")
        elif make_folder:
            out_dir = new_output_dir(resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR), exp["name"])
        else:
            out_dir = None
    return raw, cfg, kind, device, plan, data, out_dir


def run_trials(out_dir: Path, cfg: dict, kind, device, plan: list[dict], data, manifest: dict, interrupts,
               rows: list[dict], world=None) -> None:
    """Every trial in turn (complete ones read back), its rows appended to ``rows``; scaling.csv is
    rewritten after each. Under torch.distributed each trial runs sharded over the ranks; rank 0 writes."""
    exp = cfg["experiment"]
    writer = world is None or world.writer
    base_model = target = None
    for plan_item in plan:
        graph = trial_graph(out_dir, plan_item, exp) if writer else None
        if world is not None:  # every rank on rank 0's graph (read back from the folder when resuming)
            graph = graph_from_json(world.share(graph_to_json(graph) if writer else None))
        setup = kind.setup(trial_config(cfg, plan_item), device, graph=graph, data=data, base_model=base_model)
        if base_model is None:
            base_model = setup.base_model = shared_base_model(out_dir, setup) if writer else setup.base_model
            if writer:
                manifest["data"] = setup.describe()
                results_io.write_json(out_dir / "manifest.json", manifest)
        if world is not None:
            world.host(setup)  # this rank's block of this trial's robots; the base model checked identical
        if plan_item["trial"] == 0:
            target = target_accuracy(out_dir, cfg, setup, device, interrupts, world)
        if writer:
            assert graph is not None  # the writer made or read it
            LOG.info(f"trial {plan_item['trial']}: N = {plan_item['num_nodes']}, Fiedler value "
                  f"{graph.graph['fiedler']:.3f} (target {plan_item['target_fiedler']:.3f})")
        rows += run_trial(out_dir, cfg, plan_item, setup, device, target, interrupts, world)
        if writer:
            results_io.write_csv(out_dir / "scaling.csv", rows, fieldnames=list(CSV_FIELDS))


def main(args, interrupts, ranks=None, raw: dict | None = None, cfg: dict | None = None) -> int:
    """Run or resume a sweep; under torchrun (``ranks``) every trial runs sharded and rank 0 writes."""
    say = ranks is None or ranks.rank == 0
    world = None
    try:
        raw, cfg, kind, device, plan, data, out_dir = prepare(args, raw, cfg, make_folder=say)
        if ranks is not None:
            from experiments import distributed_run
            world = distributed_run.join(cfg["experiment"], device)
            device = world.device
            out_dir = Path(world.share(str(out_dir) if world.writer else None))
    except (ConfigError, GraphError, DataError) as exc:
        if say:
            print(f"error: {exc}", file=sys.stderr)
        else:
            from experiments import distributed_run
            distributed_run.wait_for_launcher()  # rank 0 says it; nothing must stop it first
        return 2
    exp = cfg["experiment"]
    resume = args.resume is not None
    writer = world is None or world.writer
    lock = None
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out_dir)  # one writer per folder, held until this process ends
        try:
            lock.acquire(f"--resume {args.resume}" if resume else "output folder")
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if resume:
            remove_partial_writes(out_dir)
            for partial in out_dir.glob("*.partial"):
                remove_partial_writes(partial)
        if not resume:
            results_io.write_text(out_dir / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
    manifest = {"kind": "scaling", "name": exp["name"], "status": "running", "const": exp["scaling"]["const"],
                "problem": kind.name, "started": dt.datetime.now().isoformat(timespec="seconds"),
                "resumed": resume, "seed": exp["seed"], "device": str(device), "git_commit": git_commit(),
                "torch": torch.__version__, "trials": plan}
    if world is not None:
        manifest["distributed"] = {"backend": world.backend, "world_size": world.world_size}
    if writer:
        LOG.info(f"scaling study {exp['name']}: {len(plan)} trial(s) x {len(cfg['problem_configs'])} pair(s), "
              f"N = {', '.join(str(p['num_nodes']) for p in plan)}; results: {out_dir}")
    rows: list[dict] = []
    try:
        run_trials(out_dir, cfg, kind, device, plan, data, manifest, interrupts, rows, world)
        status = "failed" if any(r["status"] != "completed" for r in rows) else "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except (GraphError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = "failed"
    interrupts.stop()
    if not writer:
        return 130 if status == "interrupted" else 0
    return finish_sweep(out_dir, manifest, rows, status)


def finish_sweep(out_dir: Path, manifest: dict, rows: list[dict], status: str) -> int:
    """The manifest's final status, the figures and the printed table; returns the exit status."""
    manifest.update(status=status, finished=dt.datetime.now().isoformat(timespec="seconds"))
    try:
        from visualization.plotting import save_scaling_figures
        manifest["figures"] = [str(p.relative_to(out_dir)) for p in save_scaling_figures(out_dir)]
    except Exception as exc:  # figures must never cost the results
        manifest["figures_error"] = f"{type(exc).__name__}: {exc}"
        LOG.warning(f"warning: figures could not be drawn: {exc}")
    results_io.write_json(out_dir / "manifest.json", manifest)
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
