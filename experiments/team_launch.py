"""``team.py``: a team of robot processes on this machine, and one output folder from their folders; ``robot.py``:
one robot of it.

``team.py CONFIG --output-dir DIR`` starts ``robot.py CONFIG --robot i --output-dir DIR`` for every robot (their
logs in ``DIR/logs/``), restarts a robot killed by a signal (``--max-restarts``; it resumes from its checkpoint and
rejoins), waits for them all, runs the centralized baseline when the config asks for it, and gathers the robots'
folders (``DIR/robots/<i>/``) into DIR: config.yaml, manifest.json, per pair ``_results.pt``, ``_metrics.csv`` and
``_final_params.pt`` with every robot's rows, summary.csv and the figures. ``--resume DIR`` starts the robots
again (each continues from its checkpoint); ``--gather DIR`` only gathers (robots started by hand, e.g. on several
computers, their folders copied into DIR/robots/).

The team key: ``experiment.team.key_file``, else $NNDT_TEAM_KEY, else a fresh key written to ``DIR/team.key``
(readable by its owner only) and handed to the robots.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from experiments.config import (
    add_whole_run_options,
    apply_overrides,
    check_output_folder,
    config_hash,
    load_yaml,
    validate_config,
    whole_run_overrides,
)
from experiments.pair import history_rows, load_history, pair_specs, summarize
from experiments.run_record import RunRecord, git_commit, now_iso, read_manifest, run_is_live
from experiments.team_run import ROBOTS_FOLDER, TeamStop, robot_folder, team_unsupported
from foundation import results_io
from foundation.log import LOG
from foundation.log import configure as configure_logging
from foundation.schema import ConfigError
from optimizers.comm import team_messages as tm
from optimizers.comm.distributed import PeerLostError
from problems.base import consensus_distances
from problems.metrics import per_robot

ROBOT_SCRIPT = Path(__file__).resolve().parent / "robot.py"
RUN_SCRIPT = Path(__file__).resolve().parent / "run.py"
KEY_FILE = "team.key"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="team.py", description="Run a team of robot processes on this machine "
                                     "and gather their folders into one output folder.")
    parser.add_argument("config", nargs="?", help="experiment YAML file (not with --resume / --gather)")
    parser.add_argument("--output-dir", help="the team's output folder (new or empty)")
    parser.add_argument("--resume", metavar="DIR", help="start the robots of a stopped team again")
    parser.add_argument("--gather", metavar="DIR", help="only gather the robots' folders in DIR/robots/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value parsed as YAML; repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides experiment.use_cuda")
    parser.add_argument("--pairs", metavar="NAMES", help="run only these pairs, comma-separated problem_names")
    parser.add_argument("--max-restarts", type=int, default=1, metavar="N",
                        help="restart a robot killed by a signal up to N times (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no notes (warnings and results only)")
    add_whole_run_options(parser)
    args = parser.parse_args(argv)
    args.overrides = whole_run_overrides(args.rounds, args.eval_every) + args.overrides
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2
    configure_logging(quiet=args.quiet)
    try:
        plan = plan_team(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg, out_dir, selection = plan
    if args.gather:
        return 0 if gather_team(out_dir, cfg, selection=selection) == "completed" else 1
    return run_team(args, cfg, out_dir, selection)


def plan_team(args) -> tuple[dict, Path, list[str] | None]:
    """The validated config, the team's folder and the pairs to run (None: all), checked before anything is written
    (raises ConfigError)."""
    from experiments.runner import parse_selection

    given = [flag for flag, value in (("CONFIG", args.config), ("--resume", args.resume), ("--gather", args.gather))
             if value]
    if len(given) != 1:
        raise ConfigError("give one of CONFIG (with --output-dir), --resume DIR or --gather DIR")
    if args.max_restarts < 0:
        raise ConfigError(f"--max-restarts: {args.max_restarts} is negative")
    if args.config:
        if not args.output_dir:
            raise ConfigError("--output-dir: required with CONFIG (the team's folder)")
        check_output_folder("--output-dir", args.output_dir)
        out_dir = Path(args.output_dir).resolve()
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder")
        cfg = validate_config(apply_overrides(load_yaml(args.config), args.overrides))
    else:
        if args.output_dir or args.overrides:
            raise ConfigError("--output-dir, --set, --rounds, --eval-every: not with --resume or --gather (the team's "
                              "config.yaml is used)")
        out_dir = Path(args.resume or args.gather).resolve()
        config = out_dir / "config.yaml"
        if not config.is_file() or not (out_dir / ROBOTS_FOLDER).is_dir():
            raise ConfigError(f"{out_dir}: not a team's output folder (needs config.yaml and {ROBOTS_FOLDER}/)")
        manifest = out_dir / "manifest.json"
        if args.resume and manifest.is_file() and run_is_live(read_manifest(manifest, f"--resume {out_dir}")):
            raise ConfigError(f"--resume {out_dir}: the team is still running; stop it first")
        cfg = validate_config(load_yaml(config))
    reason = team_unsupported(cfg["experiment"], cfg)
    if reason is not None:
        raise ConfigError(reason)
    if not args.gather:
        team_key(cfg, out_dir, create=False)
    selection = args.pairs
    if selection is None and not args.config and (out_dir / "manifest.json").is_file():
        stored = read_manifest(out_dir / "manifest.json", str(out_dir / "manifest.json")).get("pairs_selected")
        selection = ",".join(stored) if isinstance(stored, list) and all(isinstance(n, str) for n in stored) else None
    return cfg, out_dir, parse_selection(selection, cfg)


def team_key(cfg: dict, out_dir: Path, create: bool) -> dict[str, str]:
    """The environment that gives the robots the team key ({} when the config's key file or $NNDT_TEAM_KEY does)."""
    team = cfg["experiment"]["team"]
    if team.get("key_file") or os.environ.get(tm.KEY_ENVIRONMENT):
        try:
            tm.read_team_key(team.get("key_file"))
        except tm.TeamKeyError as exc:
            raise ConfigError(str(exc)) from None
        return {}
    path = out_dir / KEY_FILE
    if path.is_file():
        return {tm.KEY_ENVIRONMENT: path.read_text().strip()}
    if not create:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(tm.new_team_key())
    return {tm.KEY_ENVIRONMENT: path.read_text().strip()}


class Robots:
    """The robot processes of this machine, restarted when a signal killed them."""

    def __init__(self, cfg_path: Path, out_dir: Path, robots: int, env: dict, device: str | None,
                 max_restarts: int, selection: list[str] | None = None):
        self.cfg_path, self.out_dir, self.env, self.device = cfg_path, out_dir, env, device
        self.selection = selection
        self.max_restarts = max_restarts
        self.processes: dict[int, subprocess.Popen] = {}
        self.restarts = {i: 0 for i in range(robots)}
        self.exits: dict[int, int] = {}
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        for i in range(robots):
            self.start(i)

    def start(self, i: int) -> None:
        command = [sys.executable, str(ROBOT_SCRIPT), str(self.cfg_path), "--robot", str(i), "--output-dir",
                   str(self.out_dir), "--quiet"] + (["--device", self.device] if self.device else []) + (
                   ["--pairs", ",".join(self.selection)] if self.selection else [])
        log = open(self.out_dir / "logs" / f"robot_{i}.log", "ab")
        self.processes[i] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
        log.close()

    def poll(self) -> bool:
        """True while a robot runs; restarts the ones a signal killed (as many times as allowed)."""
        for i, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            del self.processes[i]
            if code < 0 and self.restarts[i] < self.max_restarts:
                self.restarts[i] += 1
                LOG.warning(f"robot {i} was killed by signal {-code}; restarting it ({self.restarts[i]} of "
                            f"{self.max_restarts}): it resumes from its checkpoint")
                self.start(i)
                continue
            self.exits[i] = code
            if code != 0:
                LOG.warning(f"robot {i} ended with status {code} (its log: {self.out_dir / 'logs' / f'robot_{i}.log'})")
        return bool(self.processes)

    def stop(self, timeout_s: float = 60.0) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for i, process in list(self.processes.items()):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.exits[i] = process.returncode
        self.processes.clear()


def selected_specs(cfg: dict, selection: list[str] | None):
    return [spec for spec in pair_specs(cfg) if selection is None or spec.name in selection]


def run_team(args, cfg: dict, out_dir: Path, selection: list[str] | None) -> int:
    exp = cfg["experiment"]
    robots = exp["graph"]["num_nodes"]
    env = team_key(cfg, out_dir, create=True)
    cfg_path = out_dir / "config.yaml"
    if args.config:
        results_io.write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    manifest = team_manifest(cfg, out_dir, status="running", selection=selection)
    record = RunRecord(out_dir / "manifest.json", manifest)
    record.save()
    record.start_heartbeat()
    stopped: list[int] = []

    def on_signal(signum, frame):
        stopped.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    LOG.info(f"team {exp['name']}: {robots} robot processes over Zenoh ({exp['team']['hosts'][0]}:"
             f"{exp['team']['base_port']}+i), logs in {out_dir / 'logs'}")
    try:
        team = Robots(cfg_path, out_dir, robots, env, args.device, args.max_restarts, selection)
        while team.poll():
            if stopped:
                team.stop()
                break
            time.sleep(0.2)
        record.update(team={**manifest["team"], "exits": {str(i): c for i, c in sorted(team.exits.items())},
                            "restarts": {str(i): n for i, n in team.restarts.items() if n},
                            "seconds": round(time.perf_counter() - started, 3)})
        wants_centralized = any(s.name == "centralized" for s in selected_specs(cfg, selection))
        if wants_centralized and not stopped:
            run_centralized(cfg_path, out_dir, args.device)
    finally:
        record.stop_heartbeat()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = gather_team(out_dir, cfg, record.manifest.get("team"), interrupted=bool(stopped), selection=selection)
    if stopped:
        print(f"interrupted: the robots' results so far are gathered; continue with --resume {out_dir}",
              file=sys.stderr)
        return 130
    return 0 if status == "completed" else 1


def run_centralized(cfg_path: Path, out_dir: Path, device: str | None) -> None:
    """The centralized baseline (one model on the pooled data) in this machine's process, in DIR/centralized."""
    folder = out_dir / "centralized"
    command = [sys.executable, str(RUN_SCRIPT)] + (
        ["--resume", str(folder)] if (folder / "manifest.json").is_file() else
        [str(cfg_path), "--pairs", "centralized", "--output-dir", str(folder)]) + ["--quiet"] + (
        ["--device", device] if device else [])
    with open(out_dir / "logs" / "centralized.log", "ab") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        LOG.warning(f"warning: the centralized baseline ended with status {done.returncode}; see "
                    f"{out_dir / 'logs' / 'centralized.log'}")


def team_manifest(cfg: dict, out_dir: Path, status: str, team: dict | None = None,
                  selection: list[str] | None = None) -> dict:
    exp = cfg["experiment"]
    chosen = {} if selection is None else {"pairs_selected": selection}
    return {**chosen, "name": exp["name"], "status": status, "config_file": str(out_dir / "config.yaml"),
            "config_sha256": config_hash(cfg), "config": cfg, "started": now_iso(), "seed": exp["seed"],
            "dtype": exp["dtype"], "problem": exp["problem"], "git_commit": git_commit(),
            "team": team or {"robots": exp["graph"]["num_nodes"], "transport": "zenoh",
                             "router": exp["team"].get("router"), "deadline_ms": exp["team"]["deadline_ms"],
                             "max_staleness": exp["team"]["max_staleness"]},
            "pairs": [{"problem_name": s.name, "alg_name": s.alg_name, "status": "not started"}
                      for s in selected_specs(cfg, selection)]}


def robot_manifests(out_dir: Path, robots: int) -> list[dict | None]:
    manifests: list[dict | None] = []
    for i in range(robots):
        path = robot_folder(out_dir, i) / "manifest.json"
        try:
            manifests.append(read_manifest(path, str(path)) if path.is_file() else None)
        except ConfigError as exc:
            LOG.warning(f"warning: robot {i}: {exc}; its results are left out")
            manifests.append(None)
    return manifests


def team_status(statuses: list[str]) -> str:
    if all(s == "completed" for s in statuses):
        return "completed"
    for status in ("diverged", "interrupted", "running", "failed"):
        if status in statuses:
            return "interrupted" if status == "running" else status
    return "failed" if any(s != "not started" for s in statuses) else "not started"


def join_histories(histories: list[dict]) -> dict:
    """One history from every robot's (rows of per-robot metrics in robot order; NaN for a robot without that
    evaluation), at the rounds every robot that has a history evaluated."""
    present = [h for h in histories if h.get("round")]
    if not present:
        return {}
    rounds = [r for r in present[0]["round"] if all(r in h["round"] for h in present)]
    per = set(per_robot()) | {"wire_bytes_sent"}  # the bytes each robot handed its transport
    team: dict[str, list] = {"round": list(rounds)}
    for key in present[0]:
        if key == "round":
            continue
        columns = []
        for r in rounds:
            if key not in per:
                columns.append(present[0][key][present[0]["round"].index(r)])
                continue
            rows = []
            like = next(h[key][h["round"].index(r)] for h in present if key in h)
            for h in histories:
                if h.get("round") and key in h and r in h["round"]:
                    rows.append(torch.as_tensor(h[key][h["round"].index(r)]))
                else:
                    rows.append(torch.full_like(torch.as_tensor(like, dtype=torch.float64), float("nan")).to(
                        torch.as_tensor(like).dtype if torch.as_tensor(like).is_floating_point() else torch.float64))
            columns.append(torch.cat([row.reshape(1, *row.shape[1:]) if row.dim() else row.reshape(1)
                                      for row in rows]))
        team[key] = columns
    return team


def gather_pair(out_dir: Path, name: str, alg_name: str, manifests: list[dict | None]) -> tuple[dict, dict]:
    """The team's entry and history of one pair from the robots' folders (its files written into DIR)."""
    robots = len(manifests)
    entries = [next((p for p in (m or {}).get("pairs", []) if p["problem_name"] == name), None) for m in manifests]
    statuses = [e["status"] if e else "not started" for e in entries]
    histories = [load_history(robot_folder(out_dir, i), name) if entries[i] else {} for i in range(robots)]
    history = join_histories(histories)
    entry: dict = {"problem_name": name, "alg_name": alg_name, "status": team_status(statuses),
                   "robot_statuses": statuses}
    done = [e for e in entries if e]
    if done:
        entry.update(seconds=max(e.get("seconds", 0.0) for e in done),
                     rounds_completed=min(e.get("rounds_completed", 0) for e in done) if len(done) == robots else 0,
                     outer_iterations=done[0].get("outer_iterations"),
                     bytes_sent_total=sum(e.get("bytes_sent_total", 0.0) for e in done))
        facts = [e.get("team") or {} for e in entries if e]
        counted = sorted({k for f in facts for k in f if k not in ("incarnation",)})
        entry["team"] = {k: round(sum(f.get(k, 0) for f in facts), 3) for k in counted}
        entry["team"]["per_robot"] = [e.get("team") if e else None for e in entries]
    files = {}
    if history:
        results_io.torch_save(history, out_dir / f"{name}_results.pt")
        files[f"{name}_results.pt"] = out_dir / f"{name}_results.pt"
        rows = history_rows(history)
        if rows:
            results_io.write_csv(out_dir / f"{name}_metrics.csv", rows)
            files[f"{name}_metrics.csv"] = out_dir / f"{name}_metrics.csv"
    finals = [robot_folder(out_dir, i) / f"{name}_final_params.pt" for i in range(robots)]
    if all(path.is_file() for path in finals):
        theta = torch.cat([torch.load(path, weights_only=True).reshape(1, -1) for path in finals])
        results_io.torch_save(theta, out_dir / f"{name}_final_params.pt")
        files[f"{name}_final_params.pt"] = out_dir / f"{name}_final_params.pt"
        entry["final_team_consensus_error"] = float(consensus_distances(theta.to(torch.float64))[0].mean())
    if entry["status"] in ("completed", "diverged"):
        entry["files"] = {n: results_io.file_facts(p) for n, p in files.items()}
    return entry, history


def gather_team(out_dir: Path, cfg: dict, team: dict | None = None, interrupted: bool = False,
                selection: list[str] | None = None) -> str:
    """DIR's config.yaml (kept), manifest.json, per-pair files, summary.csv and figures from DIR/robots/*;
    prints the table; returns the team's status."""
    from experiments.runner import print_table

    robots = cfg["experiment"]["graph"]["num_nodes"]
    manifests = robot_manifests(out_dir, robots)
    previous = out_dir / "manifest.json"
    old = read_manifest(previous, str(previous)) if previous.is_file() else {}
    manifest = team_manifest(cfg, out_dir, "running", team or old.get("team"), selection)
    if old.get("started"):
        manifest["started"] = old["started"]
    first = next((m for m in manifests if m), {})
    for key in ("data", "graph", "versions", "device", "threads"):
        if key in first:
            manifest[key] = first[key]
    pairs, rows = [], []
    for spec in selected_specs(cfg, selection):
        if spec.name == "centralized":
            folder = out_dir / "centralized"
            path = folder / "manifest.json"
            try:
                central = read_manifest(path, str(path)) if path.is_file() else None
            except ConfigError as exc:
                LOG.warning(f"warning: the centralized baseline: {exc}; its results are left out")
                central = None
            entry = next((p for p in (central or {}).get("pairs", []) if p["problem_name"] == "centralized"),
                         {"problem_name": "centralized", "alg_name": spec.alg_name, "status": "not started"})
            history = load_history(folder, "centralized")
            for suffix in ("_results.pt", "_metrics.csv", "_final_params.pt"):
                source = folder / f"centralized{suffix}"
                if source.is_file():
                    results_io.write_bytes(out_dir / source.name, source.read_bytes())
        else:
            entry, history = gather_pair(out_dir, spec.name, spec.alg_name, manifests)
        pairs.append(entry)
        rows.append(summarize(entry, history))
    manifest["pairs"] = pairs
    statuses = [p["status"] for p in pairs]
    status = "interrupted" if interrupted else ("completed" if all(s == "completed" for s in statuses) else "failed")
    manifest.update(status=status, finished=now_iso())
    results_io.write_csv(out_dir / "summary.csv", rows)
    print()
    print_table(rows)
    try:
        from visualization.plotting import save_standard_figures
        manifest["figures"] = [str(p.relative_to(out_dir)) for p in save_standard_figures(out_dir)]
    except Exception as exc:  # figures never cost the results
        manifest["figures_error"] = f"{type(exc).__name__}: {exc}"
        LOG.warning(f"warning: figures could not be drawn: {exc}")
    results_io.write_json(out_dir / "manifest.json", manifest)
    print(f"\nresults: {out_dir}\nfigures: {out_dir / 'figures'}")
    return status


# ---------------------------------------------------------------------------------------------- robot.py
def parse_robot_args(argv):
    parser = argparse.ArgumentParser(prog="robot.py", description="Run one robot of a team of processes: its own "
                                     "rounds, its messages over Zenoh, its own folder DIR/robots/I (resumed when "
                                     "it exists).")
    parser.add_argument("config", help="the team's experiment YAML file (every robot the same)")
    parser.add_argument("--robot", required=True, type=int, metavar="I", help="this robot's index, 0 to N-1")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="the team's output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (every robot of the team the same)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides experiment.use_cuda")
    parser.add_argument("--pairs", metavar="NAMES", help="run only these pairs, comma-separated problem_names")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    add_whole_run_options(parser)
    args = parser.parse_args(argv)
    args.overrides = whole_run_overrides(args.rounds, args.eval_every) + args.overrides
    return args


def robot_main(argv=None) -> int:
    """``robot.py``: checks what it can before anything is written (the config, the index, the key), then runs
    ``run.py``'s runner as this robot. Exit status as run.py's; 2 also for a robot the team refuses."""
    from experiments import runner

    try:
        args = parse_robot_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2
    try:
        cfg = validate_config(apply_overrides(load_yaml(args.config), args.overrides))
        exp = cfg["experiment"]
        n = exp["graph"]["num_nodes"]
        if not 0 <= args.robot < n:
            raise ConfigError(f"--robot {args.robot}: the team has robots 0 to {n - 1}")
        reason = team_unsupported(exp, cfg)
        if reason is not None:
            raise ConfigError(reason)
        tm.read_team_key(exp["team"].get("key_file"))
    except (ConfigError, tm.TeamKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = robot_folder(Path(args.output_dir), args.robot)
    common = (["--device", args.device] if args.device else []) + (["--quiet"] if args.quiet else []) + (
        ["--pairs", args.pairs] if args.pairs else [])
    if (folder / "manifest.json").is_file():  # restarted: continue from this robot's checkpoints
        run_argv = ["--resume", str(folder), *common]
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        run_argv = [args.config, "--output-dir", str(folder), *common]
        for override in args.overrides:
            run_argv += ["--set", override]
    try:
        return runner.main(run_argv, restore_signals=False, robot=args.robot)
    except TeamStop as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PeerLostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
