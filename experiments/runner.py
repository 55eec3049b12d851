"""The experiment runner: one YAML file -> every (problem, optimizer) pair under identical conditions.

Exit status: 0 when every pair completed, 1 when a pair failed or diverged, 2 for a bad config or
command line (nothing written), 130 when interrupted (what exists is written first).
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from experiments import distributed_run, scaling
from experiments.config import (
    add_whole_run_options,
    apply_overrides,
    check_output_folder,
    config_differences,
    config_hash,
    is_scaling_config,
    load_yaml,
    validate_config,
    validate_scaling_config,
    whole_run_overrides,
)
from experiments.kinds import KINDS
from experiments.kinds.base import resolve_path
from experiments.pair import (
    FINISHED,
    CheckpointError,
    PairRun,
    PairSpec,
    load_checkpoint_file,
    load_history,
    pair_specs,
    summarize,
)
from experiments.run_record import (
    DEFAULT_OUTPUT_DIR,
    FolderLock,
    Interrupts,
    RunRecord,
    check_pair_entries,
    choose_threads,
    git_commit,
    new_output_dir,
    now_iso,
    pick_device,
    read_manifest,
    remove_partial_writes,
    run_interruptible,
    run_is_live,
)
from experiments.tensorboard_log import check_available
from foundation import results_io
from foundation.graph_files import graph_to_json
from foundation.log import LOG
from foundation.log import configure as configure_logging
from foundation.results_io import check_files
from foundation.schema import ConfigError
from optimizers.comm.distributed import PeerLostError
from optimizers.comm.graphs import GraphError
from optimizers.comm.links import check_team_options
from problems.metrics import table_columns
from problems.splits import DataError

PAIR_STATUSES = ("not started", "running", "completed", "diverged", "failed", "interrupted")


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
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes (warnings and results only)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard event files per pair (as experiment.tensorboard: true)")
    parser.add_argument("--pairs", metavar="NAMES",
                        help="run only these pairs, comma-separated problem_names (individual, centralized for the "
                             "baselines); a resumed folder keeps its selection unless --pairs is given again")
    parser.add_argument("--check", action="store_true",
                        help="validate the config (and --set), check the files it reads and print what would run; "
                             "train nothing, write nothing")
    add_whole_run_options(parser)
    args = parser.parse_args(argv)
    args.overrides = whole_run_overrides(args.rounds, args.eval_every) + args.overrides
    return args


def describe_request(request) -> str:
    """What a checked command line would run, in a few lines."""
    cfg = request.cfg
    if cfg is None:
        return "a scaling sweep folder to resume: its config.yaml is used"
    exp = cfg["experiment"]
    lines = [f"config OK: {exp['name']} ({exp['problem']}), seed {exp['seed']}"]
    if request.sweep:
        lines.append(f"  scaling sweep: {exp['scaling']}")
    for spec in select_pairs(pair_specs(cfg), request.selection):
        rounds = spec.problem_cfg["optimizer_config"]["outer_iterations"] if spec.problem_cfg else "baseline"
        lines.append(f"  pair {spec.name} ({spec.alg_name}): {rounds} rounds" if spec.problem_cfg else
                     f"  baseline {spec.name}")
    if request.out_dir is not None:
        lines.append(f"  resumes {request.out_dir}")
    return "\n".join(lines)


def check_report(args, request, say: bool = True) -> int:
    """``--check``: what would run, and everything it would read or make checked first: the data (or plan) files,
    the graph, the device, the output folder. Exit 0, or 2 with one line."""
    try:
        lines = [describe_request(request)]
        if not request.sweep and request.cfg is not None:
            lines += setup_report(args, request)
    except (ConfigError, GraphError, DataError) as exc:
        if say:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if say:
        print("\n".join(lines))
    return 0


def setup_report(args, request) -> list[str]:
    """The resolved data source, the robots' data sizes, the graph, the device, the threads and the output folder
    of a checked config (raises ConfigError, GraphError or DataError as the run would)."""
    import networkx as nx

    from optimizers.comm.graphs import fiedler_value

    cfg = request.cfg
    exp = cfg["experiment"]
    device = pick_device(args.device, exp["use_cuda"], say=False)
    setup = KINDS[exp["problem"]].setup(cfg, device)
    check_team_options(exp, setup.graph, [pc["optimizer_config"]["alg_name"] for pc in cfg["problem_configs"].values()])
    info = setup.describe()
    graph = setup.graph
    assert graph is not None
    connected = graph.number_of_nodes() == 1 or nx.is_connected(graph)
    sizes = setup.robot_data_sizes()
    shown = ", ".join(map(str, sizes)) if len(sizes) <= 12 else f"{min(sizes)} to {max(sizes)} (mean {sum(sizes) / len(sizes):.0f})"
    threads = choose_threads(exp["threads"], setup.base_model)
    if request.out_dir is not None:
        folder = f"{request.out_dir} (resumed)"
    elif args.output_dir:
        check_output_folder("--output-dir", args.output_dir)
        folder = str(Path(args.output_dir).resolve())
    elif exp["writeout"]:
        base = resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR)
        check_output_folder("experiment.output_metadir", base)
        folder = f"{base}/<timestamp>_{exp['name']}/"
    else:
        folder = "none (experiment.writeout is false)"
    return [f"  data: {info.get('source', exp['problem'])}",
            f"  robots' data: {shown} samples each",
            f"  graph: {graph.graph.get('type', exp.get('graph', {}).get('type', '?'))}, {graph.number_of_nodes()} robots, "
            f"{graph.number_of_edges()} edges, {'connected' if connected else 'NOT connected'}, Fiedler value "
            f"{fiedler_value(graph):.4g}" if connected else
            f"  graph: {graph.number_of_nodes()} robots, {graph.number_of_edges()} edges, NOT connected",
            f"  device: {device}, threads: {threads['count']} ({threads['chosen_by']})",
            f"  output folder: {folder}"]


def print_table(rows: list[dict]) -> None:
    honest = [(f"honest_{key}", f"honest {header}", fmt) for key, header, fmt in table_columns()]
    cols = [("problem_name", "pair", "{}"), ("alg_name", "alg", "{}"), ("status", "status", "{}"),
            ("rounds", "rounds", "{}"), ("seconds", "seconds", "{:.1f}"), *table_columns(), *honest]
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
    """Config and manifest of an output folder to resume. Refuses, with one line: a live run, a damaged
    manifest, a config.yaml that is no longer the run's (only outer_iterations may change, by --set or by
    editing it) and a checkpoint that is damaged or another run's. Finished pairs whose files are missing
    or not the ones the run wrote go back to "not started" (with a note)."""
    out_dir = Path(folder).resolve()
    what = f"--resume {folder}"
    manifest_path, config_path = out_dir / "manifest.json", out_dir / "config.yaml"
    if not manifest_path.is_file() or not config_path.is_file():
        raise ConfigError(f"{what}: not an output folder of run.py (needs manifest.json and config.yaml)")
    manifest = read_manifest(manifest_path, what)
    check_pair_entries(manifest, what, PAIR_STATUSES)
    if isinstance(manifest.get("team"), dict) and any(p["status"] not in FINISHED for p in manifest["pairs"]):
        raise ConfigError(f"{what}: a team of robot processes wrote this folder; continue it with "
                          f"experiments/team.py --resume {folder}")
    if run_is_live(manifest):
        raise ConfigError(f"{what}: the run is still live (pid {manifest.get('pid')} on "
                          f"{manifest.get('host')}, heartbeat {manifest.get('heartbeat')}); stop it first")
    stored = validate_config(load_yaml(config_path))
    if "config" in manifest and config_hash(stored) != manifest.get("config_sha256"):
        changed = config_differences(manifest["config"], stored) or ["(unknown keys)"]
        raise ConfigError(f"{what}: config.yaml is not the run's config any more ({', '.join(changed[:5])} changed); "
                          f"only outer_iterations may change when resuming")
    cfg = validate_config(apply_overrides(load_yaml(config_path), overrides))
    difference = config_differences(stored, cfg)
    if difference:
        raise ConfigError(f"{what}: --set may only change outer_iterations when resuming; "
                          f"{difference[0]} differs from the run's config")
    expected = {"config_sha256": config_hash(cfg), "seed": cfg["experiment"]["seed"]}
    refuse_extending_finished_pairs(what, manifest, cfg)
    for pair in manifest["pairs"]:
        name = pair["problem_name"]
        if pair["status"] in FINISHED:
            problem = check_files(out_dir, pair["files"]) if isinstance(pair.get("files"), dict) else (
                None if (out_dir / f"{name}_results.pt").is_file() else f"{name}_results.pt is missing")
            if problem is not None:
                LOG.warning(f"note: pair {name}: {problem}; it trains again")
                pair.update(status="not started")
                pair.pop("files", None)
        checkpoint = out_dir / f"{name}_checkpoint.pt"
        if pair["status"] not in FINISHED and checkpoint.is_file():
            try:
                load_checkpoint_file(checkpoint, {**expected, "pair": name})
            except CheckpointError as exc:
                raise ConfigError(f"{what}: {exc}") from None
    return cfg, manifest, out_dir


def refuse_extending_finished_pairs(what: str, manifest: dict, cfg: dict) -> None:
    """A finished pair keeps no state to continue from: more rounds for it (by --set or an edited config.yaml) are
    refused with one line, never ignored. Unfinished pairs continue to their new length."""
    rounds = {spec.name: spec.problem_cfg["optimizer_config"]["outer_iterations"]
              for spec in pair_specs(cfg) if spec.problem_cfg is not None}
    for pair in manifest["pairs"]:
        name = pair["problem_name"]
        done = pair.get("outer_iterations")
        if pair["status"] in FINISHED and name in rounds and isinstance(done, int) and rounds[name] > done:
            raise ConfigError(f"{what}: pair {name} {pair['status']} after its {done} rounds and keeps no state to "
                              f"train on from; {rounds[name]} rounds need a new run (more rounds are for the pairs still "
                              f"to finish)")


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


def new_manifest(args, cfg: dict, device, setup, specs: list[PairSpec]) -> dict:
    exp = cfg["experiment"]
    manifest = {
        "name": exp["name"], "status": "running", "config_file": str(Path(args.config).resolve()),
        "config_sha256": config_hash(cfg), "config": cfg,
        "overrides": args.overrides, "started": now_iso(),
        "seed": exp["seed"], "device": str(device), "dtype": exp["dtype"], "problem": exp["problem"],
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "platform": platform.platform()},
        "execution_plan_cache": str(setup.plan_cache.path),
        "threads": getattr(setup, "threads", None),
        "data": setup.describe(),
        "graph": {"type": setup.graph.graph.get("type"), "num_nodes": setup.graph.number_of_nodes(),
                  "num_edges": setup.graph.number_of_edges()},
        "pairs": [{"problem_name": s.name, "alg_name": s.alg_name, "status": "not started"} for s in specs],
    }
    if args.pairs is not None:
        manifest["pairs_selected"] = parse_selection(args.pairs, cfg)
    try:
        import torchvision
        manifest["versions"]["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return manifest


def main(argv=None, restore_signals: bool = True, robot: int | None = None) -> int:
    """Run (or resume) an experiment; returns the exit status. Ctrl-C / SIGTERM are handled from here
    on; ``restore_signals=False`` leaves them held back after the return (the process is exiting).
    ``robot``: run as that robot of a team of processes (``experiments/robot.py``)."""
    return run_interruptible(lambda interrupts: _main(argv, interrupts, robot), "the run", restore_signals)


USAGE = "usage: run.py CONFIG.yaml [--set KEY=VALUE ...] [--output-dir DIR] [--device cpu|cuda] | run.py --resume DIR"



class Stop(Exception):
    """Ends ``run.py`` early with ``status`` (its one error line is printed already)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def _main(argv, interrupts: Interrupts, robot: int | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2
    args.robot = robot
    configure_logging(quiet=args.quiet)
    try:
        ranks = distributed_run.torchrun_env()  # None: the one-process run
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say = ranks is None or ranks.rank == 0  # every rank read the same command line: one line is enough
    if (args.resume is None) == (args.config is None):
        if say:
            problem = "no CONFIG file given" if args.config is None else "give either a CONFIG file or --resume"
            print(f"error: {problem} ({USAGE})", file=sys.stderr)
        return refused(say)
    try:
        request = read_request(args, ranks)  # the one read of the command line's config and folder
    except (ConfigError, GraphError, DataError) as exc:
        if say:
            print(f"error: {exc}", file=sys.stderr)
        return refused(say)
    if args.check:
        return check_report(args, request, say)
    if request.sweep:  # scaling studies: their own sweep over graphs (experiments/scaling.py)
        return scaling.main(args, interrupts, ranks, request.raw, request.cfg)
    restart = request.restart
    try:
        cfg, old_manifest, out_dir, device, world = load_run(args, ranks, say, request)
    except Stop as stop:
        return refused(say) if stop.status == 2 else stop.status
    try:
        return _run(args, request, interrupts, cfg, old_manifest, out_dir, device, world, restart)
    finally:
        if world is not None and hasattr(world, "close"):  # a robot's Zenoh session
            world.close()


def _run(args, request, interrupts: Interrupts, cfg, old_manifest, out_dir, device, world, restart) -> int:
    try:
        setup, out_dir = build_setup(args, cfg, device, world, out_dir)
    except Stop as stop:
        return stop.status
    specs = select_pairs(pair_specs(cfg), request.selection)
    if world is not None and (not world.writer or args.robot is not None):
        specs = [s for s in specs if s.name != "centralized"]  # rank 0 (or the team launcher) runs it, after the pairs
    lock = None
    if out_dir is not None and (world is None or world.writer):
        lock = FolderLock(out_dir)  # one writer per folder, held until this process ends
        try:
            lock.acquire(f"--resume {args.resume}" if args.resume else "output folder")
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return refused(True)
        if old_manifest is not None:
            for path in remove_partial_writes(out_dir):
                LOG.info(f"note: removed {path.name}, a file a killed write left half-written")
    record = None
    try:
        record = open_record(args, cfg, setup, device, specs, out_dir, old_manifest, world, interrupts, restart)
        return run_pairs(args, cfg, setup, device, specs, out_dir, record, interrupts, old_manifest is not None,
                         world)
    except OSError as exc:  # the folder stopped being writable (full disk, read-only mount, ...)
        print(f"error: cannot write into {out_dir}: {exc.strerror or exc}; the run stops", file=sys.stderr)
        if record is not None:
            record.stop_heartbeat()
            record.last_word(status="failed", error=f"cannot write into the output folder: {exc}",
                             finished=now_iso())  # else the stale heartbeat says it: --resume works later
        return 1
    finally:
        if record is not None:
            record.stop_heartbeat()
        if lock is not None:
            lock.release()


def refused(say: bool) -> int:
    """Exit status 2 for a command line or config refused before the processes joined. Under torchrun
    every rank refuses the same way and rank 0 prints the one line; the others wait until the launcher
    stops them after rank 0 has ended, so that nothing stops rank 0 before its line is out."""
    if not say:
        distributed_run.wait_for_launcher()
    return 2


def wants_tensorboard(args, exp: dict) -> bool:
    return bool(getattr(args, "tensorboard", False) or exp["tensorboard"])


@dataclass
class Request:
    """What the command line asks for, read once: a run (or the resume of one) or a scaling sweep (or its
    resume), with its config as read (``raw``, overrides applied) and validated (``cfg``; for a resumed run,
    with its folder's manifest). ``restart``: what a torchrun-restarted worker records of its restart."""

    sweep: bool
    raw: dict | None
    cfg: dict | None
    out_dir: Path | None = None
    old_manifest: dict | None = None
    restart: dict | None = None
    selection: list[str] | None = None  # the pairs to run (None: every pair of the config)


def read_request(args, ranks) -> Request:
    """Load, override and validate the config once, and say what it is (raises ConfigError)."""
    raw = apply_overrides(load_yaml(args.config), args.overrides) if args.config is not None else None
    restart = continue_after_restart(args, ranks, raw)
    if args.resume is not None:
        if scaling.is_sweep_folder(args.resume):
            return Request(sweep=True, raw=None, cfg=None, restart=restart)
        if args.output_dir:
            raise ConfigError("--output-dir: not with --resume (the run continues in its own folder)")
        cfg, manifest, out_dir = load_resume(args.resume, args.overrides)
        stored = manifest.get("pairs_selected")
        if args.pairs is None and stored is not None and not (
                isinstance(stored, list) and stored and all(isinstance(name, str) for name in stored)):
            raise ConfigError(f"--resume {args.resume}: manifest.json: pairs_selected must be a list of pair names")
        selection = parse_selection(args.pairs if args.pairs is not None else
                                    None if stored is None else ",".join(stored), cfg)
        return Request(sweep=False, raw=None, cfg=cfg, out_dir=out_dir, old_manifest=manifest, restart=restart,
                       selection=selection)
    if is_scaling_config(raw):
        if args.pairs is not None:
            raise ConfigError("--pairs: not for a scaling sweep (its pairs run on every graph of the sweep)")
        return Request(sweep=True, raw=raw, cfg=validate_scaling_config(raw))
    cfg = validate_config(raw)
    return Request(sweep=False, raw=raw, cfg=cfg, selection=parse_selection(args.pairs, cfg))


def parse_selection(text: str | None, cfg: dict) -> list[str] | None:
    """The pair names of ``--pairs`` (None without it); raises ConfigError naming an unknown or repeated one."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    known = [spec.name for spec in pair_specs(cfg)]
    for name in names:
        if name not in known:
            raise ConfigError(f"--pairs: {name!r} is not a pair of this config; its pairs: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--pairs: a pair is named twice in {text!r}")
    return names


def select_pairs(specs: list[PairSpec], selection: list[str] | None) -> list[PairSpec]:
    """The pairs to run, in the config's order."""
    return specs if selection is None else [spec for spec in specs if spec.name in selection]


def load_run(args, ranks, say: bool, request: Request):
    """The validated config (of the folder to resume, or the file with --set), its old manifest when
    resuming, the output folder, the device and, under torchrun, this rank's world."""
    cfg, old_manifest, out_dir = request.cfg, request.old_manifest, request.out_dir
    world: Any = None  # a torchrun rank's World, a robot's TeamWorld, or None for the one-process run
    assert cfg is not None  # a run's request holds its validated config (only a sweep's may lack one)
    try:
        exp = cfg["experiment"]
        if wants_tensorboard(args, exp):
            check_available("--tensorboard" if args.tensorboard else "experiment.tensorboard")
        if exp["mlflow"]:
            from experiments.mlflow_log import check_available as mlflow_available
            mlflow_available("experiment.mlflow")
            if exp["mlflow"] is True and not (args.output_dir or args.resume or exp["writeout"]):
                raise ConfigError("experiment.mlflow: true keeps the store in the output folder, and this run "
                                  "writes none (experiment.writeout: false); give a tracking URI such as "
                                  "sqlite:///runs.db, or --output-dir")
        device = pick_device(args.device, exp["use_cuda"], say=say)
        if args.robot is not None:  # one robot of a team of processes
            from experiments import team_run
            incarnation = 0 if old_manifest is None else len(old_manifest.get("resumed", [])) + 1
            world = team_run.join(cfg, device, args.robot, incarnation)
        elif ranks is not None:
            world = distributed_run.join(exp, device)
            device = world.device
    except (ConfigError, GraphError, DataError) as exc:
        if say:
            print(f"error: {exc}", file=sys.stderr)
        raise Stop(2) from None
    return cfg, old_manifest, out_dir, device, world


def build_setup(args, cfg, device, world, out_dir):
    """The experiment's setup (graph, base model, data) and the checked output folder; under torchrun
    every rank agrees on any error first."""
    error = setup = None
    try:
        if args.resume is None and (world is None or world.writer):
            out_dir = prepare_output_dir(args, cfg["experiment"])
        setup = KINDS[cfg["experiment"]["problem"]].setup(cfg, device)
        check_team_options(cfg["experiment"], setup.graph,
                           [pc["optimizer_config"]["alg_name"] for pc in cfg["problem_configs"].values()])
        setup.threads = choose_threads(cfg["experiment"]["threads"], setup.base_model)
        if world is not None:
            world.host(setup)
    except (ConfigError, GraphError, DataError) as exc:
        error = str(exc)
    if world is not None:
        if world.agree_on_error(error) is not None:
            raise Stop(refused(world.writer))
        args.quiet = args.quiet or not world.writer  # rank 0 alone prints and writes
    elif error is not None:
        print(f"error: {error}", file=sys.stderr)
        raise Stop(2)
    return setup, out_dir


def continue_after_restart(args, ranks, raw: dict | None) -> dict | None:
    """A worker that torchrun restarted (--max-restarts) after a rank was lost continues the run's folder
    from its last complete checkpoints, as with --resume. Returns what the manifest records of it."""
    if ranks is None or ranks.restart == 0 or args.config is None:
        return None
    try:
        metadir = ((raw or {}).get("experiment") or {}).get("output_metadir")
        folder = distributed_run.restarted_run(args, ranks, resolve_path(metadir, DEFAULT_OUTPUT_DIR))
    except (ConfigError, OSError, ValueError, AttributeError):
        return None
    if folder is None:
        return None  # nothing was written before the loss: the run starts again
    args.resume, args.config, args.output_dir = str(folder), None, None
    return {"at": now_iso(), "restart": ranks.restart}


def note_run_folder(args, exp: dict, world, out_dir: Path) -> None:
    """Rank 0 of a new torchrun job notes its output folder, so that restarted workers find it."""
    if world is None or not world.writer or getattr(world, "env", None) is None or world.env.restart or args.output_dir:
        return
    note = distributed_run.run_folder_note(resolve_path(exp["output_metadir"], DEFAULT_OUTPUT_DIR), world.env.run_id)
    note.parent.mkdir(parents=True, exist_ok=True)
    results_io.write_json(note, {"output_dir": str(out_dir), "started": now_iso()})


def open_record(args, cfg, setup, device, specs, out_dir, old_manifest, world, interrupts,
                restart: dict | None = None) -> RunRecord:
    """The run's manifest (continued when resuming), with config.yaml and graph.json for a new run."""
    if old_manifest is not None:
        manifest = old_manifest
        if restart is not None:  # which rank was lost (as the survivors reported it) and from which round
            lost = sorted({p["error"] for p in manifest["pairs"] if "lost" in str(p.get("error", ""))})
            restart.update(lost=lost or ["unknown: rank 0 stopped before it could say"],
                           from_rounds={p["problem_name"]: p.get("checkpoint_round", 0) for p in manifest["pairs"]
                                        if p["status"] not in FINISHED})
            manifest.setdefault("restarts", []).append(restart)
        manifest.setdefault("resumed", []).append({"at": now_iso(), "overrides": args.overrides})
        if args.pairs is not None:
            manifest["pairs_selected"] = parse_selection(args.pairs, cfg)
        manifest.update(config_sha256=config_hash(cfg), config=cfg)
        manifest["status"] = "running"
        manifest.pop("finished", None)
        known = {p["problem_name"] for p in manifest["pairs"]}
        manifest["pairs"] += [{"problem_name": s.name, "alg_name": s.alg_name, "status": "not started"}
                              for s in specs if s.name not in known]
    else:
        manifest = new_manifest(args, cfg, device, setup, specs)
        if world is not None:
            manifest["distributed"] = world.describe()
    with interrupts.deferred():
        if out_dir is not None and old_manifest is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            results_io.write_text(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
            results_io.write_json(out_dir / "graph.json", graph_to_json(setup.graph))
            note_run_folder(args, cfg["experiment"], world, out_dir)
        writes = out_dir is not None and (world is None or world.writer)  # rank 0 alone writes the manifest
        record = RunRecord(out_dir / "manifest.json" if writes else None, manifest)
        record.save()
        record.reserve()
    if writes:
        record.start_heartbeat()
    return record


def run_pairs(args, cfg, setup, device, specs, out_dir, record: RunRecord, interrupts: Interrupts,
              resume: bool, world=None) -> int:
    exp = cfg["experiment"]
    summary_rows = []
    interrupted = False
    lost_peer = None
    if world is not None and not world.writer:
        return run_rank_pairs(args, setup, device, specs, record, interrupts, world, resume)
    where = "" if world is None else f", {world.world_size} processes ({world.backend})"
    LOG.info(f"experiment {exp['name']}: {len(specs)} pair(s), {setup.graph.number_of_nodes()} nodes, "
          f"device {device}{where}, data: {record.manifest['data'].get('source', '')}")
    try:
        for spec in specs:
            pair = record.pair(spec.name)
            if resume and pair["status"] in FINISHED:
                summary_rows.append(summarize(pair, load_history(out_dir, spec.name)))
                continue
            summary_rows.append(run_one(args, setup, device, spec, out_dir, record, interrupts, resume, world))
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
        summary_rows += [summarize(record.pair(s.name), {}) for s in specs if s.name not in done]
    interrupts.stop()  # from here on, signals only wait: everything that exists gets written
    if interrupted:
        record.update(interrupted_by=interrupts.signal_name())
    status = finish_run(setup, out_dir, record, summary_rows, interrupted, draw_figures=args.robot is None)
    if lost_peer is not None:
        raise lost_peer
    if interrupted:
        print(f"interrupted ({interrupts.signal_name()}): results so far are written; continue with --resume "
              f"{out_dir if out_dir is not None else 'OUTPUT_DIR'}", file=sys.stderr)
        return 130
    return 0 if status == "completed" else 1


def finish_run(setup, out_dir, record: RunRecord, summary_rows: list[dict], interrupted: bool,
               draw_figures: bool = True) -> str:
    """The run's status, the printed table, summary.csv and the figures (a robot of a team draws none: the team's
    folder has them); returns the status."""
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
    if out_dir is not None and draw_figures:
        try:
            from visualization.plotting import save_standard_figures
            figures = save_standard_figures(out_dir)
            figures += setup.save_figures(out_dir)
            record.update(figures=[str(p.relative_to(out_dir)) for p in figures])
        except Exception as exc:  # figures must never cost the results
            record.update(figures_error=f"{type(exc).__name__}: {exc}")
            LOG.warning(f"warning: figures could not be drawn: {exc}")
    if out_dir is not None:
        print(f"\nresults: {out_dir}")
        if draw_figures:
            print(f"figures: {out_dir / 'figures'}")
    record.update(status=status, finished=now_iso())
    record.release_reserve()
    return status


def run_rank_pairs(args, setup, device, specs, record: RunRecord, interrupts: Interrupts, world,
                   resume: bool = False) -> int:
    """A rank other than 0: its share of every pair, nothing written or printed (rank 0 reports)."""
    try:
        for spec in specs:
            if resume and record.pair(spec.name)["status"] in FINISHED:
                continue
            run_one(args, setup, device, spec, None, record, interrupts, resume, world)
    except KeyboardInterrupt:
        lost_peer = world.lost_peer(interrupts)
        if lost_peer is not None:
            raise lost_peer from None
        return 130
    finally:
        interrupts.stop()
    return 0 if all(p["status"] == "completed" for p in record.manifest["pairs"]
                    if p["problem_name"] != "centralized") else 1


def writing_failed(exc: BaseException, out_dir: Path | None) -> bool:
    """An OSError of a write into the output folder (read-only, full disk, ...)."""
    if not isinstance(exc, OSError) or out_dir is None or not exc.filename:
        return False
    return Path(exc.filename).resolve().is_relative_to(Path(out_dir).resolve())


def run_one(args, setup, device, spec: PairSpec, out_dir, record: RunRecord, interrupts: Interrupts,
            resume: bool, world=None) -> dict:
    """Build and train one pair; write its results whatever happens. Returns its summary row."""
    name = spec.name
    with record.lock:
        for stale in ("error", "traceback", "diverged_round", "last_finite_round"):
            record.pair(name).pop(stale, None)
    record.update_pair(name, status="running")
    run = None
    try:
        board = out_dir / "tensorboard" / name if out_dir is not None and wants_tensorboard(args, setup.exp) else None
        writes = args.output_dir is not None or args.resume is not None or setup.exp["writeout"]
        tracking = setup.exp["mlflow"]
        uri = None
        if tracking:  # (true needs the output folder: refused without one)
            from experiments.mlflow_log import tracking_uri
            uri = tracking_uri(tracking, out_dir) if out_dir is not None else str(tracking)
        run = PairRun(spec, setup, device, out_dir, record, interrupts, world, checkpoints=writes,
                      tensorboard_dir=board, mlflow_uri=uri)
        run.train(args.quiet, resume)
    except KeyboardInterrupt:
        interrupts.stop()
        record.update_pair(name, status="interrupted")
        if run is not None:
            run.finish()
        raise
    except PeerLostError as exc:
        record.update_pair(name, status="failed", error=str(exc))
        raise
    except Exception as exc:  # a crash of one pair never loses the others
        if writing_failed(exc, out_dir):  # but a folder that takes no writes ends the run
            record.update_pair(name, status="failed", error=f"cannot write into the output folder: {exc}")
            raise
        record.update_pair(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
        LOG.warning(f"pair {name} failed: {type(exc).__name__}: {exc}")
    if run is not None:
        run.finish()
    history = run.problem.history if run is not None else {}
    return summarize(record.pair(name), history)
