"""The experiment runner: one YAML file -> every (problem, optimizer) pair under identical conditions.

Exit status: 0 when every pair completed, 1 when a pair failed or diverged, 2 for a bad config or
command line (nothing written), 130 when interrupted (what exists is written first).
"""

from __future__ import annotations

import argparse
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

from experiments import results_io
from experiments.config import ConfigError, apply_overrides, check_output_folder, load_yaml, validate_config
from experiments.run_record import Interrupts, RunRecord, now_iso, run_is_live
from experiments.setups import REPO_ROOT, SETUPS, resolve_path
from optimizers import BASELINES, OPTIMIZERS
from optimizers import state
from optimizers.base import DivergedError
from optimizers.distributed import PeerLostError
from optimizers.graphs import GraphError, graph_to_json
from optimizers.links import configure_network
from optimizers.network import InProcessNetwork
from problems.mnist_data import DataError

DEFAULT_OUTPUT_DIR = REPO_ROOT / "experiments" / "outputs"
SUMMARY_METRICS = ("validation_loss", "validation_loss_wall", "validation_loss_free", "top1_accuracy",
                   "consensus_error", "train_loss_moving_average", "current_epoch", "forward_pass_count",
                   "bytes_sent", "map_balanced_accuracy", "map_wall_iou")
# Per-evaluation values with one number per node go into the tidy CSV.
SCALAR_METRICS = ("forward_pass_count", "validation_loss", "validation_loss_wall", "validation_loss_free",
                  "top1_accuracy", "consensus_error", "current_epoch", "train_loss_moving_average", "bytes_sent",
                  "map_balanced_accuracy", "map_wall_iou")
# Timing is kept in <pair>_results.pt and the manifest only, so that identical runs give identical CSVs.
PAIR_STATUSES = ("not started", "running", "completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="run.py", description="Run every (problem, optimizer) pair of an experiment config.")
    parser.add_argument("config", nargs="?", help="experiment YAML file (not with --resume)")
    parser.add_argument("--resume", metavar="OUTPUT_DIR",
                        help="continue a crashed or interrupted run in its output folder: finished pairs (or "
                             "sweep trials) are kept, unfinished ones continue from their last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. problem_configs.problem1.optimizer_config."
                             "outer_iterations=5 (value parsed as YAML; repeatable)")
    parser.add_argument("--output-dir", help="write into this folder (default: "
                                             "<output_metadir>/<timestamp>_<name>/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides experiment.use_cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def pick_device(requested: str | None, use_cuda: bool, say: bool = True) -> torch.device:
    if requested == "cuda" or (requested is None and use_cuda):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if requested == "cuda":
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
        if say:
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


def write_pair_results(out_dir: Path, name: str, history: dict, theta: torch.Tensor | None,
                       last_finite: tuple[int, torch.Tensor] | None = None) -> None:
    """The pair's results, each file written atomically."""
    results_io.torch_save(history, out_dir / f"{name}_results.pt")
    rows = history_rows(history)
    if rows:
        results_io.write_csv(out_dir / f"{name}_metrics.csv", rows)
    if theta is not None:
        results_io.torch_save(theta.detach().cpu(), out_dir / f"{name}_final_params.pt")
    if last_finite is not None:
        results_io.torch_save({"round": last_finite[0], "theta": last_finite[1].detach().cpu()},
                              out_dir / f"{name}_last_finite_params.pt")


def summarize(pair: dict, history: dict) -> dict:
    row = {"problem_name": pair["problem_name"], "alg_name": pair["alg_name"], "status": pair["status"],
           "rounds": pair.get("rounds_completed", 0), "seconds": round(pair.get("seconds", 0.0), 3)}
    for m in SUMMARY_METRICS:
        if history.get(m):
            final = torch.as_tensor(history[m][-1], dtype=torch.float64).reshape(-1)
            final = final[~final.isnan()] if not final.isnan().all() else final  # unevaluated robots: NaN
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


def load_history(out_dir: Path, name: str) -> dict:
    path = out_dir / f"{name}_results.pt"
    return torch.load(path, weights_only=True) if path.is_file() else {}


class PairRun:
    """Train one (problem, optimizer) pair, checkpointing as it goes; resumes from a checkpoint."""

    def __init__(self, name: str, alg_name: str, problem, optimizer_cls, opt_cfg: dict, graph, device,
                 out_dir: Path | None, record: RunRecord, interrupts: Interrupts, checkpoint_every: int | None,
                 exp: dict | None = None, world=None):
        """``world`` (``experiments.distributed_run.World``): the problem is this rank's block of robots
        and the network exchanges rows with the other ranks."""
        self.name, self.alg_name, self.problem = name, alg_name, problem
        if world is not None and problem.robots is not None:
            self.network = world.network(graph, problem.dtype)
            world.attach(problem, self.network)
        else:
            self.network = InProcessNetwork(graph, device=device, dtype=problem.dtype)
        self.graph_schedule = configure_network(self.network, exp or {}, graph)  # links / graph_schedule
        self.optimizer = optimizer_cls(problem, self.network, opt_cfg)
        self.out_dir, self.record, self.interrupts = out_dir, record, interrupts
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = (out_dir / f"{name}_checkpoint.pt"
                                if out_dir is not None and world is None else None)
        self.rounds_done = 0

    def save_checkpoint(self, k: int) -> None:
        with self.interrupts.deferred():
            checkpoint = self.optimizer.checkpoint(k)
            if self.graph_schedule is not None:
                checkpoint["graph_schedule"] = state.capture(self.graph_schedule, ("generator",))
            results_io.torch_save(checkpoint, self.checkpoint_path)
            self.record.update_pair(self.name, checkpoint_round=k)

    def train(self, quiet: bool, verbose: bool, resume: bool) -> None:
        """Train to the end; sets the pair's status in the record (diverged is not an exception)."""
        optimizer, problem, name = self.optimizer, self.problem, self.name
        first = 1
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            checkpoint = torch.load(self.checkpoint_path, weights_only=True)
            first = optimizer.resume(checkpoint) + 1
            if self.graph_schedule is not None:
                state.restore(self.graph_schedule, checkpoint["graph_schedule"])
            self.rounds_done = first - 1
        bar = tqdm(total=optimizer.outer_iterations, initial=first - 1, desc=f"{name} ({self.alg_name})",
                   disable=quiet, dynamic_ncols=True, leave=True, file=sys.stdout, mininterval=1.0)

        def progress(k, metrics):
            self.rounds_done = k
            bar.update(1)
            if metrics is not None:
                if "validation_loss" in metrics:
                    bar.set_postfix(val_loss=f"{float(metrics['validation_loss'].mean()):.4f}")
                if verbose:
                    bar.write(f"  [{name}] round {k}: {format_ranges(metrics)}")

        before_round = None  # problems whose data or graph change every round define it
        if hasattr(problem, "before_round"):
            before_round = partial(problem.before_round, network=self.network)
        if self.graph_schedule is not None:
            before_round = self.graph_schedule if before_round is None else _chain(self.graph_schedule, before_round)
        start = time.perf_counter()
        try:
            if first == 1:
                optimizer.begin()
            optimizer.run_rounds(first, progress=progress, profile_dir=self.out_dir, before_round=before_round,
                                 on_checkpoint=self.save_checkpoint if self.checkpoint_path else None,
                                 checkpoint_every=self.checkpoint_every)
            self.record.update_pair(name, status="completed")
        except DivergedError as exc:
            bar.write(f"  [{name}] diverged: {exc}")
            problem.evaluate(exc.round_index, extras=optimizer._extras())
            self.record.update_pair(name, status="diverged", diverged_round=exc.round_index, error=str(exc))
        finally:
            bar.close()
            self.record.update_pair(name, **self.facts(time.perf_counter() - start))

    def facts(self, seconds: float) -> dict:
        stack = self.problem.stack
        previous = self.record.pair(self.name).get("seconds", 0.0) if self.rounds_done else 0.0
        return {"seconds": previous + seconds, "rounds_completed": self.rounds_done,
                "outer_iterations": self.optimizer.outer_iterations,
                "bytes_sent_total": self.bytes_sent_total(),
                "node_stack": {"x".join(map(str, shape)): {"execution": form, "nodes_per_chunk": size,
                                                          "decided_by": stack.plan_sources.get(shape, "config")}
                               for shape, (form, size) in stack.plans.items()}}

    def bytes_sent_total(self) -> float:
        """Bytes every robot sent so far (across processes: from the last gathered evaluation)."""
        sent = self.problem.history.get("bytes_sent")
        if isinstance(self.network, InProcessNetwork) or not sent:
            return float(self.network.bytes_sent.sum())
        return float(sent[-1].sum())

    def write_results(self) -> None:
        if self.out_dir is None or not self.problem.history:
            return
        with self.interrupts.deferred():
            status = self.record.pair(self.name)["status"]
            last_finite = getattr(self.optimizer, "last_finite", None) if status == "diverged" else None
            write_pair_results(self.out_dir, self.name, self.problem.history, self.problem.theta, last_finite)
            if last_finite is not None:
                self.record.update_pair(self.name, last_finite_round=last_finite[0])
            if status in FINISHED and self.checkpoint_path is not None:
                self.checkpoint_path.unlink(missing_ok=True)


def _chain(first, second):
    return lambda k: (first(k), second(k))


def print_table(rows: list[dict]) -> None:
    cols = [("problem_name", "pair", "{}"), ("alg_name", "alg", "{}"), ("status", "status", "{}"),
            ("rounds", "rounds", "{}"), ("seconds", "seconds", "{:.1f}"),
            ("validation_loss_mean", "val loss (mean)", "{:.4f}"),
            ("top1_accuracy_mean", "top-1 mean", "{:.4f}"), ("top1_accuracy_min", "top-1 min", "{:.4f}"),
            ("consensus_error_mean", "consensus err", "{:.3g}"),
            ("map_balanced_accuracy_mean", "map bal. acc.", "{:.3f}"), ("map_wall_iou_mean", "wall IoU", "{:.3f}")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if c[0] in r else "-" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for i, row in enumerate(cells):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def load_resume(folder: str, overrides: list[str]) -> tuple[dict, dict, Path]:
    """Config and manifest of an output folder to resume; refuses live runs and changed configs."""
    out_dir = Path(folder).resolve()
    manifest_path, config_path = out_dir / "manifest.json", out_dir / "config.yaml"
    if not manifest_path.is_file() or not config_path.is_file():
        raise ConfigError(f"--resume {folder}: not an output folder of run.py (needs manifest.json and config.yaml)")
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("pairs"), list):
            raise ValueError("no pairs")
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"--resume {folder}: manifest.json is not a run manifest") from None
    if run_is_live(manifest):
        raise ConfigError(f"--resume {folder}: the run is still live (pid {manifest.get('pid')} on "
                          f"{manifest.get('host')}, heartbeat {manifest.get('heartbeat')}); stop it first")
    stored = validate_config(load_yaml(config_path))
    cfg = validate_config(apply_overrides(load_yaml(config_path), overrides))
    difference = config_difference(stored, cfg)
    if difference:
        raise ConfigError(f"--resume {folder}: --set may only change outer_iterations when resuming; "
                          f"{difference} differs from the run's config")
    return cfg, manifest, out_dir


def config_difference(old, new, prefix: str = "") -> str | None:
    """The first dotted key whose value differs, ignoring the number of rounds."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key == "outer_iterations":
                continue
            found = config_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
        return None
    return None if old == new else prefix


def prepare_output_dir(args, exp: dict) -> Path | None:
    if args.output_dir:
        check_output_folder("--output-dir", args.output_dir)
        out_dir = Path(args.output_dir).resolve()
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder")
        return out_dir
    if not exp["writeout"]:
        return None
    base = resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR)
    check_output_folder("experiment.output_metadir", base)
    return new_output_dir(base, exp["name"])


def new_manifest(args, exp: dict, device, setup, jobs) -> dict:
    manifest = {
        "name": exp["name"], "status": "running", "config_file": str(Path(args.config).resolve()),
        "overrides": args.overrides, "started": now_iso(),
        "seed": exp["seed"], "device": str(device), "dtype": exp["dtype"], "problem": exp["problem"],
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "platform": platform.platform()},
        "execution_plan_cache": str(setup.plan_cache.path),
        "data": setup.describe(),
        "graph": {"type": setup.graph.graph.get("type"), "num_nodes": setup.graph.number_of_nodes(),
                  "num_edges": setup.graph.number_of_edges()},
        "pairs": [{"problem_name": name, "alg_name": alg, "status": "not started"} for name, alg, _ in jobs],
    }
    try:
        import torchvision
        manifest["versions"]["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return manifest


def experiment_jobs(cfg: dict) -> list[tuple[str, str, dict | None]]:
    exp = cfg["experiment"]
    jobs = [(pc["problem_name"], pc["optimizer_config"]["alg_name"], pc) for pc in cfg["problem_configs"].values()]
    if exp["individual_training"]["train_solo"]:
        jobs.append(("individual", "local", None))
    if exp["centralized"]:
        jobs.append(("centralized", "local", None))
    return jobs


def main(argv=None, restore_signals: bool = True) -> int:
    """Run (or resume) an experiment; returns the exit status. Ctrl-C / SIGTERM are handled from here
    on; ``restore_signals=False`` leaves them held back after the return (the process is exiting)."""
    interrupts = Interrupts()
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    try:
        return _main(argv, interrupts)
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    finally:
        interrupts.stop()
        if restore_signals:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)


def _main(argv, interrupts: Interrupts) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2

    from experiments import distributed_run, scaling
    try:
        ranks = distributed_run.torchrun_env()  # None: the one-process run
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if scaling.handles(args):  # scaling studies: their own sweep over graphs (experiments/scaling.py)
        if ranks is not None:
            if ranks.rank == 0:
                print("error: scaling sweeps run in one process, not under torchrun", file=sys.stderr)
            return 2
        return scaling.main(args)

    resume = args.resume is not None
    world = None
    out_dir = None
    try:
        if resume == (args.config is not None):
            raise ConfigError("give either a CONFIG file or --resume OUTPUT_DIR (not both, not neither)")
        if resume:
            if args.output_dir:
                raise ConfigError("--output-dir: not with --resume (the run continues in its own folder)")
            cfg, old_manifest, out_dir = load_resume(args.resume, args.overrides)
        else:
            cfg = validate_config(apply_overrides(load_yaml(args.config), args.overrides))
        exp = cfg["experiment"]
        device = pick_device(args.device, exp["use_cuda"], say=ranks is None or ranks.rank == 0)
        if ranks is not None:
            distributed_run.check_distributable(cfg, resume)
            world = distributed_run.join(exp, device)
            device = world.device
    except (ConfigError, GraphError, DataError) as exc:
        if ranks is None or ranks.rank == 0:  # every rank read the same config: one line is enough
            print(f"error: {exc}", file=sys.stderr)
        return 2
    error = None
    try:
        if not resume and (world is None or world.writer):
            out_dir = prepare_output_dir(args, exp)
        setup = SETUPS[exp["problem"]](cfg, device)
        if world is not None:
            world.host(setup)
    except (ConfigError, GraphError, DataError) as exc:
        error = str(exc)
    if world is not None:
        if world.agree_on_error(error) is not None:
            return 2
        args.quiet = args.quiet or not world.writer  # rank 0 alone prints and writes
    elif error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2

    jobs = experiment_jobs(cfg)
    if world is not None and not world.writer:
        jobs = [job for job in jobs if job[0] != "centralized"]  # rank 0 runs it, after the pairs
    if resume:
        manifest = old_manifest
        manifest.setdefault("resumed", []).append({"at": now_iso(), "overrides": args.overrides})
        manifest["status"] = "running"
        manifest.pop("finished", None)
        known = {p["problem_name"] for p in manifest["pairs"]}
        manifest["pairs"] += [{"problem_name": n, "alg_name": a, "status": "not started"}
                              for n, a, _ in jobs if n not in known]
    else:
        manifest = new_manifest(args, exp, device, setup, jobs)
        if world is not None:
            manifest["distributed"] = world.describe()
    with interrupts.deferred():
        if out_dir is not None and not resume:
            out_dir.mkdir(parents=True, exist_ok=True)
            results_io.write_text(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
            results_io.write_json(out_dir / "graph.json", graph_to_json(setup.graph))
        record = RunRecord(out_dir / "manifest.json" if out_dir is not None else None, manifest)
        record.save()
    if out_dir is not None:
        record.start_heartbeat()
    try:
        return run_jobs(args, cfg, setup, device, jobs, out_dir, record, interrupts, resume, world)
    finally:
        record.stop_heartbeat()


def run_jobs(args, cfg, setup, device, jobs, out_dir, record: RunRecord, interrupts: Interrupts,
             resume: bool, world=None) -> int:
    exp = cfg["experiment"]
    summary_rows = []
    interrupted = False
    lost_peer = None
    if world is not None and not world.writer:
        return run_rank_jobs(args, exp, setup, device, jobs, record, interrupts, world)
    where = "" if world is None else f", {world.world_size} processes ({world.backend})"
    print(f"experiment {exp['name']}: {len(jobs)} pair(s), {setup.graph.number_of_nodes()} nodes, "
          f"device {device}{where}, data: {record.manifest['data'].get('source', '')}")
    try:
        for name, alg_name, pc in jobs:
            pair = record.pair(name)
            if resume and pair["status"] in FINISHED:
                summary_rows.append(summarize(pair, load_history(out_dir, name)))
                continue
            summary_rows.append(run_one(args, exp, setup, device, name, alg_name, pc, out_dir, record,
                                        interrupts, resume, world))
    except KeyboardInterrupt:
        interrupted = True
        lost_peer = world.lost_peer(interrupts) if world is not None else None
        if lost_peer is not None:  # torchrun stopped this rank because another one was lost
            interrupted = False
            for pair in record.manifest["pairs"]:
                if pair["status"] == "interrupted":
                    record.update_pair(pair["problem_name"], status="failed", error=str(lost_peer))
    except PeerLostError as exc:  # the other pairs cannot run: write what exists, then end with one line
        lost_peer = exc
    if lost_peer is not None:
        done = {row["problem_name"] for row in summary_rows}
        summary_rows += [summarize(record.pair(name), {}) for name, _, _ in jobs if name not in done]
    interrupts.stop()  # from here on, signals only wait: everything that exists gets written

    statuses = [p["status"] for p in record.manifest["pairs"]]
    if interrupted:
        status = "interrupted"
    elif all(s == "completed" for s in statuses):
        status = "completed"
    else:
        status = "failed"
    print()
    print_table(summary_rows)
    if out_dir is not None:
        results_io.write_csv(out_dir / "summary.csv", summary_rows)
        try:
            from visualization.plotting import save_standard_figures
            figures = save_standard_figures(out_dir)
            figures += setup.save_figures(out_dir)
            record.update(figures=[str(p.relative_to(out_dir)) for p in figures])
        except Exception as exc:  # figures must never cost the results
            record.update(figures_error=f"{type(exc).__name__}: {exc}")
            print(f"warning: figures could not be drawn: {exc}", file=sys.stderr)
        print(f"\nresults: {out_dir}")
        print(f"figures: {out_dir / 'figures'}")
    record.update(status=status, finished=now_iso())
    if lost_peer is not None:
        raise lost_peer
    if interrupted:
        print("interrupted: results so far are written; continue with --resume "
              f"{out_dir if out_dir is not None else 'OUTPUT_DIR'}", file=sys.stderr)
        return 130
    return 0 if status == "completed" else 1


def run_rank_jobs(args, exp, setup, device, jobs, record: RunRecord, interrupts: Interrupts, world) -> int:
    """A rank other than 0: its share of every pair, nothing written or printed (rank 0 reports)."""
    try:
        for name, alg_name, pc in jobs:
            run_one(args, exp, setup, device, name, alg_name, pc, None, record, interrupts, False, world)
    except KeyboardInterrupt:
        lost_peer = world.lost_peer(interrupts)
        if lost_peer is not None:
            raise lost_peer from None
        return 130
    finally:
        interrupts.stop()
    return 0 if all(p["status"] == "completed" for p in record.manifest["pairs"]
                    if p["problem_name"] != "centralized") else 1


def run_one(args, exp, setup, device, name, alg_name, pc, out_dir, record: RunRecord, interrupts: Interrupts,
            resume: bool, world=None) -> dict:
    """Build and train one pair; write its results whatever happens. Returns its summary row."""
    with record.lock:
        for stale in ("error", "traceback", "diverged_round", "last_finite_round"):
            record.pair(name).pop(stale, None)
    record.update_pair(name, status="running")
    run = None
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
        run = PairRun(name, alg_name, problem, cls, opt_cfg, setup.graph, device, out_dir, record, interrupts,
                      exp["checkpoint_every"], exp=exp if pc is not None else None, world=world)
        run.train(args.quiet, verbose, resume)
    except KeyboardInterrupt:
        interrupts.stop()
        record.update_pair(name, status="interrupted")
        if run is not None:
            run.write_results()
        raise
    except PeerLostError as exc:
        record.update_pair(name, status="failed", error=str(exc))
        raise
    except Exception as exc:  # a crash of one pair never loses the others
        record.update_pair(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
        print(f"pair {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if run is not None:
        run.write_results()
    history = run.problem.history if run is not None else {}
    return summarize(record.pair(name), history)
