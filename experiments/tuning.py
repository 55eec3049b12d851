"""Hyperparameter studies (``experiments/tune.py``): one Optuna study per pair of a config, every trial
trained by the same pair driver as ``run.py`` (:mod:`experiments.pair`), so every key means the same in both.

    python experiments/tune.py CONFIG.yaml [--trials N] [--storage URL] [--workers K] [--set KEY=VALUE ...]
                                           [--output-dir DIR] [--tensorboard]
    python experiments/tune.py --resume DIR [--trials N] [--workers K]

The config is an ordinary experiment config with a top-level ``tune`` block::

    tune:
      trials: 20                 # per pair (--trials overrides)
      rounds: 300                # every trial trains each pair this many rounds (its schedules span them)
      stop_after: 100            # optional: only the first 100 of them, the trial judged there
      seeds: [0, 1]              # a trial's objective is the mean over these experiment seeds
      objective: {metric: top1_accuracy, summary: last_quarter_mean, direction: maximize}
      pruner: {startup_trials: 5, warmup_rounds: 50}   # median pruning on the first seed's curve
      sampler_seed: 0
      space:
        problem1:                                      # a key of problem_configs
          optimizer_config.rho_init: {log_uniform: [0.01, 10.0]}
          optimizer_config.primal_iterations: {int: [1, 5]}
        problem2:
          optimizer_config.alpha0: {log_uniform: [0.001, 1.0]}

Only the pairs named under ``space`` are tuned. Objective summaries: ``last_quarter_mean`` (node mean of
the metric averaged over the evaluations in the last quarter of the rounds), ``final_mean``,
``final_worst`` (the worst robot at the last evaluation). A trial whose pair diverges or fails is recorded
as failed; a trial clearly worse than the median at the same round is pruned.

Output folder: ``study.db`` (SQLite, unless ``--storage`` names another database), ``trials.csv`` (every
trial: pair, number, state, objective, seconds, then its ``params_*`` and ``objective_seed_*`` columns), ``best.yaml``
(the config without the tune block, every tuned pair's best values filled in: runnable by run.py as it
is), ``figures/tune_<pair>.png`` (objective against trial and against each parameter), ``manifest.json``
and, with ``--tensorboard``, one event file per trial and seed under ``tensorboard/<pair>/``.
``--resume DIR --trials N`` continues every study up to N finished trials per pair; a trial that a kill
left running is recorded as failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from experiments.config import (
    add_whole_run_options,
    apply_overrides,
    check_output_folder,
    load_yaml,
    validate_config,
    whole_run_overrides,
)
from experiments.kinds import KINDS
from experiments.kinds.base import resolve_path
from experiments.pair import PairRun, PairSpec
from experiments.run_record import (
    DEFAULT_OUTPUT_DIR,
    Interrupts,
    RunRecord,
    choose_threads,
    git_commit,
    new_output_dir,
    now_iso,
    pick_device,
    run_interruptible,
    run_is_live,
)
from experiments.tensorboard_log import check_available
from foundation import results_io
from foundation.log import LOG
from foundation.log import configure as configure_logging
from foundation.schema import (
    AT_LEAST_ONE,
    SEED_RANGE,
    Choice,
    ConfigError,
    Custom,
    Int,
    ListOf,
    Str,
    clip,
    excerpt,
    validate_mapping,
)
from optimizers.comm.graphs import GraphError
from problems.metrics import METRICS, TOP1_ACCURACY
from problems.splits import DataError

SUMMARIES = ("last_quarter_mean", "final_mean", "final_worst")
RANGE_KINDS = ("log_uniform", "uniform", "int", "choice")


def _check_range(key: str, value: Any) -> dict:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in RANGE_KINDS:
        raise ConfigError(f"{key}: expected one of {{log_uniform: [low, high]}}, {{uniform: [low, high]}}, "
                          f"{{int: [low, high]}}, {{choice: [a, b, ...]}}; got {excerpt(value)}")
    kind, bounds = next(iter(value.items()))
    if not isinstance(bounds, list) or not bounds:
        raise ConfigError(f"{key}.{kind}: expected a list, got {excerpt(bounds)}")
    if kind == "choice":
        return {"choice": bounds}
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"{key}.{kind}: expected [low, high] numbers, got {excerpt(bounds)}")
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise ConfigError(f"{key}.int: expected whole numbers, got {excerpt(bounds)}")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{key}.{kind}: low must be below high, got {excerpt(bounds)}")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{key}.log_uniform: the range must be positive, got {excerpt(bounds)}")
    return {kind: [low, high]}


def _check_space(key: str, value: Any) -> dict:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key}: expected a mapping of problem_configs keys to their search spaces")
    out = {}
    for problem, params in value.items():
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{key}.{problem}: expected a mapping of dotted keys to ranges")
        out[problem] = {str(k): _check_range(f"{key}.{problem}.{k}", v) for k, v in params.items()}
    return out


TUNE_SCHEMA = {
    "trials": (Int, 20, AT_LEAST_ONE),
    "rounds": (Int, None, AT_LEAST_ONE),  # None: each pair's own outer_iterations
    # None: train all the rounds; given: the first stop_after rounds of that schedule, and judge the trial there
    "stop_after": (Int, None, AT_LEAST_ONE),
    "seeds": (ListOf(Int), [0]),
    "objective": ({"metric": (Str, TOP1_ACCURACY), "summary": (Choice(SUMMARIES), "last_quarter_mean"),
                   "direction": (Choice(("maximize", "minimize")), None)}, {}),
    "pruner": ({"startup_trials": (Int, 5, AT_LEAST_ONE), "warmup_rounds": (Int, 0)}, {}),
    "sampler_seed": (Int, 0, SEED_RANGE),
    "space": (Custom(_check_space), None),
}


def validate_tuning(raw: Any) -> tuple[dict, dict]:
    """(validated tune block, validated experiment config without it): every problem ConfigError."""
    if not isinstance(raw, dict) or not isinstance(raw.get("tune"), dict):
        raise ConfigError("tune: a tuning config needs a top-level tune block with a search space "
                          "(see experiments/tune.py)")
    raw = copy.deepcopy(raw)
    tune = validate_mapping("tune", TUNE_SCHEMA, raw.pop("tune"))
    cfg = validate_config(raw)
    if tune["space"] is None:
        raise ConfigError("tune.space: required (problem_configs keys and the ranges to search)")
    for i, seed in enumerate(tune["seeds"]):
        if not SEED_RANGE.contains(seed):
            raise ConfigError(f"tune.seeds[{i}]: must be {SEED_RANGE.describe()}, got {seed}")
    if not tune["seeds"]:
        raise ConfigError("tune.seeds: expected at least one seed")
    metric = tune["objective"]["metric"]
    kind = KINDS[cfg["experiment"]["problem"]]
    problem_class = kind.setup.problem_class
    everything = problem_class.recorded_metrics(kind.metrics)
    if metric not in METRICS or not METRICS[metric].scalar or metric not in everything:
        allowed = [m for m in everything if m in METRICS and METRICS[m].scalar]
        raise ConfigError(f"tune.objective.metric: {excerpt(metric)} is not a scalar metric of "
                          f"{kind.name}; allowed: {', '.join(allowed)}")
    if tune["objective"]["direction"] is None:
        better = METRICS[metric].better
        if better is None:
            raise ConfigError(f"tune.objective.direction: required for {metric} (maximize or minimize)")
        tune["objective"]["direction"] = "maximize" if better == "higher" else "minimize"
    stop = tune["stop_after"]
    for problem, params in tune["space"].items():
        pc_rounds = cfg["problem_configs"].get(problem, {}).get("optimizer_config", {}).get("outer_iterations")
        rounds = tune["rounds"] if tune["rounds"] is not None else pc_rounds
        if stop is not None and rounds is not None and stop > rounds:
            raise ConfigError(f"tune.stop_after: {stop} is beyond the {rounds} rounds of {problem}'s trials")
        frequency = cfg["problem_configs"].get(problem, {}).get("metrics_config", {}).get("evaluate_frequency")
        if stop is not None and frequency and stop % frequency:
            raise ConfigError(f"tune.stop_after: {stop} must be a multiple of problem_configs.{problem}."
                              f"metrics_config.evaluate_frequency ({frequency}), so that a trial is judged on an "
                              f"evaluation at its last round")
        if problem not in cfg["problem_configs"]:
            raise ConfigError(f"tune.space.{problem}: not a key of problem_configs; allowed: "
                              f"{', '.join(cfg['problem_configs'])}")
        pc = cfg["problem_configs"][problem]
        if metric not in problem_class.recorded_metrics(pc["metrics"]):
            raise ConfigError(f"problem_configs.{problem}.metrics: must record {metric}, the tuning objective")
        for dotted, bounds in params.items():
            trial_config(cfg, problem, {dotted: _example(bounds)}, tune["seeds"][0], tune["rounds"])
    return tune, cfg


def _example(bounds: dict):
    kind, values = next(iter(bounds.items()))
    return values[0]


def _set(node: dict, dotted: str, value, where: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{where}.{dotted}: {part} is not a mapping of the problem config")
        node = node[part]
    node[last] = value


def trial_config(cfg: dict, problem: str, params: dict, seed: int, rounds: int | None) -> dict:
    """The config of one trial of ``problem``: that pair alone (no baselines), the experiment seed,
    the trial's rounds and the sampled values; validated like any config."""
    raw = copy.deepcopy(cfg)
    raw["problem_configs"] = {problem: raw["problem_configs"][problem]}
    exp = raw["experiment"]
    exp.update(seed=seed, centralized=False, writeout=False)
    exp["individual_training"]["train_solo"] = False
    pc = raw["problem_configs"][problem]
    if rounds is not None:
        pc["optimizer_config"]["outer_iterations"] = rounds
    for dotted, value in params.items():
        _set(pc, dotted, value, f"tune.space.{problem}")
    return validate_config(raw)


def summarize(history: dict, metric: str, summary: str, direction: str) -> float:
    values = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in history.get(metric, [])]
    if not values:
        return math.nan
    if summary == "final_worst":
        last = values[-1][~values[-1].isnan()]
        return float(last.min() if direction == "maximize" else last.max())
    means = [float(v.nanmean()) for v in values]
    if summary == "final_mean":
        return means[-1]
    rounds = history["round"][:len(means)]
    start = rounds[-1] * 0.75
    tail = [m for r, m in zip(rounds, means) if r >= start]
    return sum(tail) / len(tail)


class _StopTrial(Exception):
    """A trial has trained its first ``tune.stop_after`` rounds."""


class Tuner:
    """The studies of one tuning folder."""

    def __init__(self, out_dir: Path, raw: dict, storage_url: str | None, device, tensorboard: bool,
                 quiet: bool = True):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.out_dir, self.raw, self.device, self.quiet = out_dir, raw, device, quiet
        self.tune, self.cfg = validate_tuning(raw)
        self.tensorboard = tensorboard
        self.storage_url = storage_url or f"sqlite:///{out_dir / 'study.db'}"
        try:
            self.storage = optuna.storages.RDBStorage(self.storage_url,
                                                      engine_kwargs={"connect_args": {"timeout": 120}}
                                                      if self.storage_url.startswith("sqlite") else {})
            self.storage.get_all_studies()  # a damaged database fails here, not in the middle of a trial
        except Exception as exc:  # sqlalchemy's and optuna's errors, whatever the database says
            where = out_dir / "study.db" if storage_url is None else storage_url
            first = (str(exc).splitlines() or [""])[0]
            raise ConfigError(f"{where}: cannot be read as an Optuna study database ({type(exc).__name__}: "
                              f"{clip(first, 100)}); it is damaged: move it away (its trials are lost) and start a "
                              f"new study with tune.py CONFIG --output-dir NEW_FOLDER") from None
        self.setups: dict[int, Any] = {}

    def study(self, problem: str):
        name = self.cfg["problem_configs"][problem]["problem_name"]
        pruner = self.optuna.pruners.MedianPruner(n_startup_trials=self.tune["pruner"]["startup_trials"],
                                                  n_warmup_steps=self.tune["pruner"]["warmup_rounds"])
        study = self.optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                         direction=self.tune["objective"]["direction"], pruner=pruner)
        # The sampler's seed follows the trials the study holds already: a resumed study draws new points
        # instead of repeating its first ones (the same seed would), and a fresh study stays reproducible.
        # Helper processes of --workers draw their own samples (the same seed would repeat the main one's).
        seed = None if os.environ.get("NNDT_TUNE_WORKER") else \
            (self.tune["sampler_seed"] + 7919 * len(study.get_trials(deepcopy=False))) % 2**32
        study.sampler = self.optuna.samplers.TPESampler(seed=seed)
        return study

    def finished(self, study) -> int:
        states = self.optuna.trial.TrialState
        return sum(t.state in (states.COMPLETE, states.PRUNED, states.FAIL) for t in study.get_trials(deepcopy=False))

    def fail_abandoned(self) -> None:
        """Trials a killed process left running are recorded as failed (nothing else is running them)."""
        states = self.optuna.trial.TrialState
        for problem in self.tune["space"]:
            study = self.study(problem)
            for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
                self.storage.set_trial_state_values(trial._trial_id, states.FAIL)

    def setup_for(self, seed: int, cfg: dict):
        if seed not in self.setups:
            setup = self.setups[seed] = KINDS[cfg["experiment"]["problem"]].setup(cfg, self.device)
            setup.threads = choose_threads(cfg["experiment"]["threads"], setup.base_model)
        return self.setups[seed]

    def sample(self, trial, problem: str) -> dict:
        params = {}
        for dotted, bounds in self.tune["space"][problem].items():
            kind, values = next(iter(bounds.items()))
            if kind == "log_uniform":
                params[dotted] = trial.suggest_float(dotted, values[0], values[1], log=True)
            elif kind == "uniform":
                params[dotted] = trial.suggest_float(dotted, values[0], values[1])
            elif kind == "int":
                params[dotted] = trial.suggest_int(dotted, values[0], values[1])
            else:
                params[dotted] = trial.suggest_categorical(dotted, values)
        return params

    def objective(self, trial, problem: str) -> float:
        start = time.perf_counter()
        try:
            return self._objective(trial, problem)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)

    def _objective(self, trial, problem: str) -> float:
        objective = self.tune["objective"]
        params = self.sample(trial, problem)
        values = []
        for index, seed in enumerate(self.tune["seeds"]):
            cfg = trial_config(self.cfg, problem, params, seed, self.tune["rounds"])
            setup = self.setup_for(seed, cfg)
            pc = cfg["problem_configs"][problem]
            spec = PairSpec(pc["problem_name"], pc["optimizer_config"]["alg_name"], pc)
            record = RunRecord(None, {"pairs": [{"problem_name": spec.name, "alg_name": spec.alg_name,
                                                 "status": "running"}]})
            board = (self.out_dir / "tensorboard" / spec.name / f"trial_{trial.number:04d}_seed_{seed}"
                     if self.tensorboard else None)
            run = PairRun(spec, setup, self.device, None, record, checkpoints=False, log=lambda message: None,
                          tensorboard_dir=board)

            stop_after = self.tune["stop_after"]

            def report(k, metrics, first=index == 0):
                if first and k > 0 and objective["metric"] in metrics:
                    value = float(torch.as_tensor(metrics[objective["metric"]], dtype=torch.float64).nanmean())
                    if math.isfinite(value):
                        trial.report(value, k)
                        if trial.should_prune():
                            raise self.optuna.TrialPruned(f"round {k}: {value:.4g}")
                if stop_after is not None and k >= stop_after:
                    raise _StopTrial

            try:
                run.train(quiet=self.quiet, on_evaluation=report)
                run.finish()
            except _StopTrial:  # the first stop_after rounds of the schedule ran: judged there
                record.update_pair(spec.name, status="completed")
            status = record.pair(spec.name)["status"]
            if status != "completed":
                trial.set_user_attr("failure", f"seed {seed}: {status} {record.pair(spec.name).get('error', '')}")
                return math.nan
            values.append(summarize(run.problem.history, objective["metric"], objective["summary"],
                                    objective["direction"]))
            trial.set_user_attr(f"seed_{seed}", values[-1])
        return sum(values) / len(values)

    def optimize(self, trials: int, after_trial=None) -> None:
        for problem in self.tune["space"]:
            study = self.study(problem)
            remaining = trials - self.finished(study)
            if remaining <= 0:
                continue
            states = self.optuna.trial.TrialState
            callbacks: list[Callable] = [self.optuna.study.MaxTrialsCallback(
                trials, states=(states.COMPLETE, states.PRUNED, states.FAIL))]
            if after_trial is not None:
                callbacks.append(lambda study, trial: after_trial())
            # a trial that crashes is recorded as failed; the study goes on
            study.optimize(lambda trial: self.objective(trial, problem), n_trials=remaining, callbacks=callbacks,
                           catch=(Exception,))

    # ------------------------------------------------------------------------- outputs
    def rows(self) -> list[dict]:
        rows = []
        for problem in self.tune["space"]:
            study = self.study(problem)
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                complete = t.state == self.optuna.trial.TrialState.COMPLETE
                row = {"pair": study.study_name, "trial": t.number, "state": t.state.name.lower(),
                       "objective": t.value if complete and t.value is not None else math.nan,
                       "seconds": round(t.user_attrs.get("seconds", math.nan), 3),
                       "last_reported_round": max(t.intermediate_values, default=math.nan)}
                row.update({f"params_{k}": v for k, v in t.params.items()})  # Optuna's trials_dataframe names
                row.update({f"objective_seed_{s}": t.user_attrs.get(f"seed_{s}", math.nan) for s in self.tune["seeds"]})
                if "failure" in t.user_attrs:
                    row["failure"] = t.user_attrs["failure"]
                rows.append(row)
        return rows

    def best_config(self) -> tuple[dict, dict]:
        """(best.yaml's content, each pair's best trial) from the studies so far."""
        raw = copy.deepcopy(self.raw)
        raw.pop("tune", None)
        best = {}
        for problem in self.tune["space"]:
            study = self.study(problem)
            done = [t for t in study.get_trials(deepcopy=False)
                    if t.state == self.optuna.trial.TrialState.COMPLETE and t.value is not None]
            if not done:
                continue
            trial = max(done, key=lambda t: t.value) if self.tune["objective"]["direction"] == "maximize" \
                else min(done, key=lambda t: t.value)
            best[problem] = {"trial": trial.number, "objective": trial.value, "params": dict(trial.params)}
            for dotted, value in trial.params.items():
                node = raw["problem_configs"][problem]
                *parents, last = dotted.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = value
        return raw, best

    def write_outputs(self) -> dict:
        rows = self.rows()
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))  # the trial's facts, its parameters, per seed
            fields = ([k for k in keys if not k.startswith(("params_", "objective_seed_"))]
                      + [k for k in keys if k.startswith("params_")] + [k for k in keys if k.startswith("objective_seed_")])
            results_io.write_csv(self.out_dir / "trials.csv", rows, fieldnames=fields)
        raw, best = self.best_config()
        header = "# the tuning config's best values (experiments/tune.py); run it with experiments/run.py\n"
        results_io.write_text(self.out_dir / "best.yaml", header + yaml.safe_dump(raw, sort_keys=False))
        try:
            from visualization.plotting import save_tuning_figures
            save_tuning_figures(self.out_dir, rows, self.tune)
        except Exception as exc:  # figures must never cost the results
            LOG.warning(f"warning: figures could not be drawn: {exc}")
        return best


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="tune.py",
        description="Hyperparameter studies: one Optuna study per pair named in the config's tune block, every "
                    "trial trained by the same pair driver as run.py; writes trials.csv, best.yaml (runnable by "
                    "run.py) and figures into the output folder.")
    parser.add_argument("config", nargs="?", help="tuning config (an experiment config with a tune block)")
    parser.add_argument("--resume", metavar="DIR", help="continue the studies of a tuning folder")
    parser.add_argument("--trials", type=int, help="finished trials per pair to reach (default: tune.trials)")
    parser.add_argument("--storage", help="an Optuna database URL (default: sqlite in the output folder)")
    parser.add_argument("--workers", type=int, default=1, help="local processes working on the studies")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. tune.trials=4 or experiment.seed=1 (value parsed as YAML; "
                             "repeatable)")
    parser.add_argument("--output-dir", help="write into this folder (default: <output_metadir>/<timestamp>_<name>/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides experiment.use_cuda")
    parser.add_argument("--tensorboard", action="store_true", help="one event file per trial and seed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a helper process of --workers
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes (warnings and results only)")
    parser.add_argument("--check", action="store_true",
                        help="validate the tuning config (and --set) and print the studies; train nothing, write nothing")
    add_whole_run_options(parser)
    args = parser.parse_args(argv)
    args.overrides = whole_run_overrides(args.rounds, args.eval_every) + args.overrides
    return args


def prepare(args) -> tuple[Path, dict, dict]:
    """The output folder, the raw config and the tuning manifest; refuses bad input before writing."""
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials: must be at least 1, got {args.trials}")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    if (args.resume is None) == (args.config is None):
        raise ConfigError("give either a tuning CONFIG file or --resume DIR (not both, not neither)")
    if args.resume is not None:
        out_dir = Path(args.resume).resolve()
        manifest_path = out_dir / "manifest.json"
        if not manifest_path.is_file() or not (out_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume}: not a tuning folder (needs manifest.json and config.yaml)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("kind") != "tuning":
            raise ConfigError(f"--resume {args.resume}: not a tuning folder (its manifest is not a tuning one)")
        if args.overrides:
            raise ConfigError("--resume: the folder's config.yaml is used; give no --set, --rounds or --eval-every")
        if not args.worker and run_is_live(manifest):
            raise ConfigError(f"--resume {args.resume}: the tuning is still live (pid {manifest.get('pid')}); "
                              f"stop it first")
        raw = load_yaml(out_dir / "config.yaml")
        validate_tuning(raw)
        assert raw is not None  # validate_tuning refuses anything but a mapping
        return out_dir, raw, manifest
    raw = apply_overrides(load_yaml(args.config), args.overrides)
    tune, cfg = validate_tuning(raw)
    if args.output_dir:
        check_output_folder("--output-dir", args.output_dir)
        out_dir = Path(args.output_dir).resolve()
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder (or --resume it)")
    else:
        base = resolve_path(cfg["experiment"]["output_metadir"], DEFAULT_OUTPUT_DIR)
        check_output_folder("experiment.output_metadir", base)
        out_dir = new_output_dir(base, cfg["experiment"]["name"] + "_tune")
    manifest = {"kind": "tuning", "name": cfg["experiment"]["name"], "status": "running", "started": now_iso(),
                "config_file": str(Path(args.config).resolve()), "overrides": args.overrides,
                "storage": args.storage, "git_commit": git_commit(), "torch": torch.__version__,
                "pairs": [{"problem_name": cfg["problem_configs"][p]["problem_name"], "alg_name":
                           cfg["problem_configs"][p]["optimizer_config"]["alg_name"], "status": "not started"}
                          for p in tune["space"]]}
    return out_dir, raw, manifest


def start_workers(args, out_dir: Path, trials: int, storage: str | None) -> list[subprocess.Popen]:
    script = Path(__file__).resolve().parent / "tune.py"
    cmd = [sys.executable, str(script), "--resume", str(out_dir), "--trials", str(trials), "--worker", "--quiet"]
    if storage:
        cmd += ["--storage", storage]
    if args.device:
        cmd += ["--device", args.device]
    env = dict(os.environ, NNDT_TUNE_WORKER="1")
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for _ in range(args.workers - 1)]


def main(argv=None) -> int:
    return run_interruptible(lambda interrupts: _main(argv, interrupts), "the tuning")


def _main(argv, interrupts: Interrupts) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2
    configure_logging(quiet=args.quiet)
    if args.check:
        try:
            if args.config is None:
                raise ConfigError("--check: give a tuning CONFIG file")
            tune, cfg = validate_tuning(apply_overrides(load_yaml(args.config), args.overrides))
        except (ConfigError, GraphError, DataError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        rounds = tune["rounds"] or "each pair's own"
        print(f"config OK: {cfg['experiment']['name']}: {', '.join(tune['space'])} tuned, {tune['trials']} trials each "
              f"of {rounds} rounds, objective {tune['objective']['summary']} of {tune['objective']['metric']}")
        return 0
    started = start(args)
    if isinstance(started, int):
        return started
    tuner, tune, out_dir, manifest, storage, trials = started
    return run_studies(args, tuner, tune, out_dir, manifest, storage, trials, interrupts)


def start(args):
    """The tuner of a new or resumed folder, or an exit status (a refused command line, a helper process
    of --workers that has done its share)."""
    try:
        out_dir, raw, manifest = prepare(args)
        tune, cfg = validate_tuning(raw)
        if args.tensorboard:
            check_available("--tensorboard")
        device = pick_device(args.device, cfg["experiment"]["use_cuda"])
        storage = args.storage or manifest.get("storage")
        trials = args.trials or tune["trials"]
        if args.worker:
            Tuner(out_dir, raw, storage, device, args.tensorboard or manifest.get("tensorboard", False)).optimize(trials)
            return 0
        out_dir.mkdir(parents=True, exist_ok=True)
        tuner = Tuner(out_dir, raw, storage, device, args.tensorboard or manifest.get("tensorboard", False),
                      quiet=args.quiet)
    except (ConfigError, GraphError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: tuning needs the optuna package (pip install optuna==5.1.0): {exc}", file=sys.stderr)
        return 2
    return tuner, tune, out_dir, manifest, storage, trials


def run_studies(args, tuner: Tuner, tune: dict, out_dir: Path, manifest: dict, storage, trials: int,
                interrupts: Interrupts) -> int:
    """Every study to ``trials`` finished trials (with helper processes), then the outputs."""
    resume = args.resume is not None
    if not resume:
        results_io.write_text(out_dir / "config.yaml", yaml.safe_dump(tuner.raw, sort_keys=False))
        manifest["tensorboard"] = bool(args.tensorboard)
    else:
        manifest.setdefault("resumed", []).append({"at": now_iso(), "trials": trials})
        tuner.fail_abandoned()
    manifest.update(status="running", trials_per_pair=trials, workers=args.workers)
    manifest.pop("finished", None)
    record = RunRecord(out_dir / "manifest.json", manifest)
    record.save()
    record.start_heartbeat()
    workers = start_workers(args, out_dir, trials, storage) if args.workers > 1 else []
    status = "completed"
    LOG.info(f"tuning {manifest['name']}: {len(tune['space'])} pair(s), {trials} trials each, "
          f"{len(tune['seeds'])} seed(s) per trial, objective {tune['objective']['summary']} of "
          f"{tune['objective']['metric']} ({tune['objective']['direction']}); results: {out_dir}")
    try:
        tuner.optimize(trials, after_trial=lambda: _write(tuner, interrupts))
        for worker in workers:
            worker.wait()
    except KeyboardInterrupt:
        status = "interrupted"
        for worker in workers:
            worker.terminate()
    finally:
        interrupts.stop()
        record.stop_heartbeat()
    best = tuner.write_outputs()
    record.update(status=status, finished=now_iso(), best=best)
    for problem, b in best.items():
        print(f"  {problem}: best objective {b['objective']:.4g} (trial {b['trial']}): {b['params']}")
    print(f"\nresults: {out_dir}")
    if status == "interrupted":
        print(f"interrupted: the studies are kept; continue with --resume {out_dir}", file=sys.stderr)
        return 130
    return 0


def _write(tuner: Tuner, interrupts: Interrupts) -> None:
    with interrupts.deferred():
        tuner.write_outputs()

