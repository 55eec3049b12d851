"""The one driver of a (problem, optimizer) pair, used by the runner, the scaling sweep and any other
driver: it builds the pair from the experiment's setup, applies ``experiment.links`` and the graph
schedules, trains with checkpoints, handles divergence (a final evaluation at the diverged round, the
last finite parameters kept), and writes the pair's result files, each atomically.

A pair is named by a :class:`PairSpec`: one of ``problem_configs`` or a baseline (``individual``,
``centralized``). Under torch.distributed (``world``) a pair and the individual baseline run sharded
over the processes; the centralized baseline runs in one process.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from experiments.config import config_hash
from foundation import results_io, state
from foundation.log import LOG
from foundation.schema import ConfigError
from optimizers import BASELINES, OPTIMIZERS
from optimizers.base import DistributedOptimizer, DivergedError
from optimizers.comm.faults import faulty_robots
from optimizers.comm.links import Chain, check_team_options, configure_asynchrony, configure_faults, configure_network
from optimizers.comm.network import InProcessNetwork, block_network_state, team_network_state
from problems.metrics import METRICS, VALIDATION_LOSS, csv_columns, progress_metrics, summary_metrics

FINISHED = ("completed", "diverged")
CHECKPOINT_FORMAT = 2  # {format, identity, sha256, payload (the checkpoint's torch.save bytes as uint8)}


class CheckpointError(ConfigError):
    """A checkpoint that is damaged or belongs to another run: refused with one line."""


def save_checkpoint_file(path: Path, payload: dict, identity: dict) -> None:
    """``payload`` with the identity of the run it belongs to and the SHA-256 of its bytes, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    results_io.torch_save({"format": CHECKPOINT_FORMAT, "identity": identity,
                           "sha256": hashlib.sha256(data).hexdigest(),
                           "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, path)


def load_checkpoint_file(path: Path, expected: dict | None = None) -> dict:
    """The payload of a checkpoint written by :func:`save_checkpoint_file`, after checking its checksum and,
    given ``expected`` (config_sha256, seed, pair), that it belongs to this run; CheckpointError otherwise."""
    remedy = f"delete {path} to train the pair from its start"
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}); {remedy}") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not one this version writes (no identity or checksum); "
                              f"{remedy}")
    data = saved["payload"].numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != saved.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is damaged (its checksum does not match); {remedy}")
    if expected is not None:
        identity = saved.get("identity") or {}
        for key in sorted(expected, key=lambda k: ("pair", "seed", "config_sha256").index(k)
                          if k in ("pair", "seed", "config_sha256") else 3):
            value = expected[key]
            if identity.get(key) != value:
                raise CheckpointError(f"checkpoint {path} belongs to another run ({key} {identity.get(key)!r}, "
                                      f"this run's {value!r}); {remedy}")
    return torch.load(io.BytesIO(data), weights_only=True)


@dataclass(frozen=True)
class PairSpec:
    name: str
    alg_name: str
    problem_cfg: dict | None  # None: a baseline

    @property
    def is_baseline(self) -> bool:
        return self.problem_cfg is None


def pair_specs(cfg: dict) -> list[PairSpec]:
    """Every pair of a config, in run order: its problems, then the baselines it asks for."""
    exp = cfg["experiment"]
    specs = [PairSpec(pc["problem_name"], pc["optimizer_config"]["alg_name"], pc)
             for pc in cfg["problem_configs"].values()]
    if exp["individual_training"]["train_solo"]:
        specs.append(PairSpec("individual", "local", None))
    if exp["centralized"]:
        specs.append(PairSpec("centralized", "local", None))
    return specs


def history_rows(history: dict) -> list[dict]:
    """Tidy rows: one per (round, node) with one column per scalar metric."""
    rows = []
    metrics = [m for m in csv_columns() if m in history]
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


def summarize(pair: dict, history: dict) -> dict:
    """A pair's row of ``summary.csv``: status, rounds, seconds and the final mean / min / max of every
    summary metric (robots that were not evaluated, NaN, left out)."""
    row = {"problem_name": pair["problem_name"], "alg_name": pair["alg_name"], "status": pair["status"],
           "rounds": pair.get("rounds_completed", 0), "seconds": round(pair.get("seconds", 0.0), 3)}
    faulty = pair.get("faulty_robots") or []
    for m in summary_metrics():
        if history.get(m):
            final = torch.as_tensor(history[m][-1], dtype=torch.float64).reshape(-1)
            _final_stats(row, m, final)
            if faulty and METRICS[m].per_robot and METRICS[m].better and len(final) > max(faulty):
                honest = torch.ones(len(final), dtype=torch.bool)
                honest[faulty] = False  # a faulty robot's own numbers are left out of the team's
                _final_stats(row, f"honest_{m}", final[honest])
    return row


def _final_stats(row: dict, prefix: str, final: torch.Tensor) -> None:
    """Mean, min and max of the robots' final values (robots that were not evaluated, NaN, left out)."""
    final = final[~final.isnan()] if not final.isnan().all() else final
    row[f"{prefix}_mean"] = float(final.mean())
    row[f"{prefix}_min"] = float(final.min())
    row[f"{prefix}_max"] = float(final.max())


def load_history(out_dir: Path, name: str) -> dict:
    path = out_dir / f"{name}_results.pt"
    return torch.load(path, weights_only=True) if path.is_file() else {}


def format_ranges(metrics: dict) -> str:
    parts = []
    for m in progress_metrics():
        if m in metrics:
            v = metrics[m].to(torch.float64)
            parts.append(f"{m} {float(v.min()):.4g}..{float(v.max()):.4g}")
    return ", ".join(parts)


GLOBAL_PROBLEM_STATE = ("history", "stack_plans", "stack_compiled")  # kept by rank 0 / the same everywhere, not per robot


def block_checkpoint(saved: dict, start: int, stop: int, total: int) -> dict:
    """The state of robots start..stop-1 (of ``total``) from a checkpoint of any split into blocks."""
    if "parts" not in saved:  # a checkpoint of one process, before checkpoints held blocks
        saved = {"round": saved["round"], "parts": [{"robots": [0, stop - start, stop - start], "state": saved}]}
    parts = sorted(((p["robots"][0], p["robots"][1], p["state"]) for p in saved["parts"]), key=lambda p: p[0])
    first = parts[0][2]
    # the parts hold robots low..high-1 (all of them, or one robot's own checkpoint in a team of processes)
    low, high = parts[0][0], parts[-1][1]
    if not low <= start < stop <= high:
        raise CheckpointError(f"the checkpoint holds robots {low} to {high - 1}, not {start} to {stop - 1}")

    def rows(key, drop=()):
        team = state.join_blocks([(s, e, {k: v for k, v in st[key].items() if k not in drop}) for s, e, st in parts])
        return state.take_block(team, start - low, stop - low, high - low)

    problem = rows("problem", GLOBAL_PROBLEM_STATE)
    problem.update({k: first["problem"][k] for k in GLOBAL_PROBLEM_STATE if k in first["problem"]})
    network = block_network_state(team_network_state([(s, e, st["network"]) for s, e, st in parts]), start - low,
                                  stop - low)
    return {"round": saved["round"], "optimizer": rows("optimizer"), "problem": problem, "network": network}


def _note(message: str) -> None:
    LOG.warning(message)


class PairRun:
    """One pair of an experiment: built from the ``setup``, trained to the end (or from a checkpoint),
    its status and facts kept in ``record`` (a :class:`experiments.run_record.RunRecord`)."""

    def __init__(self, spec: PairSpec, setup, device, out_dir: Path | None, record, interrupts=None,
                 world=None, checkpoints: bool = True, log: Callable[[str], None] = _note,
                 tensorboard_dir: Path | None = None, mlflow_uri: str | None = None):
        self.spec, self.name, self.alg_name = spec, spec.name, spec.alg_name
        self.out_dir, self.record, self.interrupts = out_dir, record, interrupts
        exp = setup.exp
        sharded = world is not None and spec.name != "centralized"
        if sharded:
            self.network = world.network(setup.graph, setup.dtype, pair=spec.name)
            ranks = world.rank_metrics(self.network)
            log = log if world.writer else (lambda message: None)  # rank 0 reports
        else:
            self.network = InProcessNetwork(setup.graph, device=device, dtype=setup.dtype)
            ranks = None
        optimizer_cls: type[DistributedOptimizer]
        if spec.is_baseline:
            self.problem, opt_cfg = setup.make_baseline(spec.name, ranks=ranks)
            optimizer_cls = BASELINES["local"]
            self.verbose = exp["individual_training"]["verbose"]
            schedule = None
        else:
            assert spec.problem_cfg is not None  # not a baseline
            self.problem = setup.make_problem(spec.problem_cfg, ranks=ranks)
            opt_cfg = {k: v for k, v in spec.problem_cfg["optimizer_config"].items() if k != "alg_name"}
            optimizer_cls = OPTIMIZERS[spec.alg_name]
            self.verbose = spec.problem_cfg["verbose_evals"]
            links = configure_network(self.network, exp, setup.graph)  # links, graph_schedule
            check_team_options(exp, setup.graph, [spec.alg_name])
            faults = configure_faults(self.network, exp)  # what faulty robots send, how receivers combine
            asynchrony = configure_asynchrony(self.network, exp)  # on top of the links
            if asynchrony is not None and world is not None:
                raise ConfigError("experiment.asynchrony: runs in one process only, not under torchrun")
            schedule = Chain(links, setup.graph_schedule(self.problem, self.network, spec.problem_cfg, log), asynchrony,
                             faults)
            if faults is not None:
                record.update_pair(spec.name, faulty_robots=faulty_robots(exp["faults"]))
        self.schedule = schedule if schedule is not None and schedule.hooks else None
        self.optimizer = optimizer_cls(self.problem, self.network, opt_cfg)
        if not spec.is_baseline:
            self.optimizer.asynchrony = asynchrony
        self.checkpoint_every = exp["checkpoint_every"]
        # the robots this process trains, of the team's: checkpoints hold every block's part
        self.world = world if sharded else None
        if self.world is not None:
            block = world.blocks[world.rank]
            self.block = (block.start, block.stop, setup.graph.number_of_nodes())
        else:
            self.block = (0, self.problem.num_nodes, self.problem.num_nodes)
        self.checkpointing = checkpoints and (out_dir is not None or self.world is not None)
        self.checkpoint_path = out_dir / f"{self.name}_checkpoint.pt" if out_dir is not None else None
        self.identity = {"config_sha256": config_hash(setup.cfg), "seed": setup.seed, "pair": self.name}
        self.rounds_done = 0
        self.outcome: str | None = None  # completed / diverged once training ended; recorded by finish()
        self.final: dict = {}  # the team's final (and last finite) parameters, once every rank finished
        writes = world is None or world.writer
        self.tensorboard_dir = tensorboard_dir if writes else None
        self.mlflow_uri = mlflow_uri if writes else None
        self.setup_cfg = setup.cfg

    def _deferred(self):
        from contextlib import nullcontext
        return self.interrupts.deferred() if self.interrupts is not None else nullcontext()

    def save_checkpoint(self, k: int) -> None:
        """Every block's state after round ``k`` in one file (under torch.distributed, gathered on rank 0,
        which writes it: the file is complete or absent, never a mix of rounds)."""
        with self._deferred():
            start = time.perf_counter()
            part = {"robots": list(self.block), "state": self.optimizer.checkpoint(k)}
            parts = [part] if self.world is None else self.world.gather_parts(part)
            if parts is None or self.checkpoint_path is None:
                return
            saved = {"round": k, "parts": parts,
                     "graph_schedule": self.schedule.state_dict() if self.schedule is not None else None}
            save_checkpoint_file(self.checkpoint_path, saved, {**self.identity, "round": k})
            self.record.update_pair(self.name, checkpoint_round=k, checkpoint_bytes=self.checkpoint_path.stat().st_size,
                                    checkpoint_seconds=round(time.perf_counter() - start, 4))

    def resume_point(self) -> int:
        """The first round to run: after the pair's checkpoint when there is one, else 1. The checkpoint
        may come from another number of processes: each block takes its robots' rows of it."""
        saved = None
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            saved = load_checkpoint_file(self.checkpoint_path, self.identity)
        if self.world is not None:
            saved = self.world.share(saved)
        if saved is None:
            return 1
        first = self.optimizer.resume(block_checkpoint(saved, *self.block)) + 1
        if self.schedule is not None:
            self.schedule.load_state_dict(saved["graph_schedule"])
        self.rounds_done = first - 1
        return first

    def train(self, quiet: bool = True, resume: bool = False, on_evaluation=None) -> None:
        """Train to the end; sets the pair's status in the record (diverged is not an exception).
        ``on_evaluation(k, metrics)`` is called after every evaluation (e.g. a tuner's pruning)."""
        optimizer, name = self.optimizer, self.name
        first = self.resume_point() if resume else 1
        bar = tqdm(total=optimizer.outer_iterations, initial=first - 1, desc=f"{name} ({self.alg_name})",
                   disable=quiet, dynamic_ncols=True, leave=True, file=sys.stderr, mininterval=1.0)

        board = tracker = None
        if self.tensorboard_dir is not None:
            from experiments.tensorboard_log import EvaluationLog
            board = EvaluationLog(self.tensorboard_dir)
        if self.mlflow_uri is not None:
            from experiments.mlflow_log import PairTracker
            tracker = PairTracker(self.mlflow_uri, self.setup_cfg["experiment"]["name"], name, self.alg_name,
                                  self.setup_cfg, self.out_dir)

        def evaluated(k, metrics):
            if metrics is None:
                return
            if VALIDATION_LOSS in metrics:
                bar.set_postfix(val_loss=f"{float(metrics['validation_loss'].mean()):.4f}")
            if self.verbose:
                line = f"  [{name}] round {k}: {format_ranges(metrics)}"
                if bar.disable:
                    LOG.info(line)
                else:
                    bar.write(line, file=sys.stderr)
            if board is not None:
                board.log(k, metrics)
            if tracker is not None:
                tracker.log(k, metrics)
            if on_evaluation is not None:
                on_evaluation(k, metrics)

        def progress(k, metrics):
            self.rounds_done = k
            bar.update(1)
            evaluated(k, metrics)

        start = time.perf_counter()
        try:
            if first == 1:
                evaluated(0, optimizer.begin())
            optimizer.run_rounds(first, progress=progress, profile_dir=self.out_dir, before_round=self.schedule,
                                 on_checkpoint=self.save_checkpoint if self.checkpointing else None,
                                 checkpoint_every=self.checkpoint_every)
            self.final = {"theta": self.team_rows(self.problem.theta)}
            self.outcome = "completed"  # recorded by finish(), once the pair's files are written
        except DivergedError as exc:
            bar.write(f"  [{name}] diverged: {exc}")
            optimizer.evaluate(exc.round_index)
            self.record.update_pair(name, diverged_round=exc.round_index, error=str(exc))
            assert optimizer.last_finite is not None  # begin() set it, a checkpoint restores it
            round_index, theta = optimizer.last_finite
            self.final = {"theta": self.team_rows(self.problem.theta),
                          "last_finite": (round_index, self.team_rows(theta))}
            self.outcome = "diverged"
        finally:
            bar.close()
            self.network.close()  # a robot of a team of processes tells its neighbours it is done
            if board is not None:
                board.close()
            if tracker is not None:
                tracker.close(self.outcome)
            self.record.update_pair(name, **self.facts(time.perf_counter() - start))

    def team_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Every robot's rows of a per-robot tensor (gathered on rank 0 across processes; None elsewhere)."""
        if self.world is None:
            return rows.detach().cpu()
        team = self.world.gather_rows(rows.detach(), self.network)
        return None if team is None else team.cpu()

    def facts(self, seconds: float) -> dict:
        stack = self.problem.stack
        previous = self.record.pair(self.name).get("seconds", 0.0) if self.rounds_done else 0.0
        resets = self.optimizer.__dict__.get("robot_resets")  # this process's robots (all of them in one process)
        restarted = {} if resets is None else {"robot_resets": int(resets.sum())}
        team_facts = getattr(self.network, "team_facts", None)  # a robot of a team of processes
        if team_facts is not None:
            restarted["team"] = team_facts()
        return {**restarted, "seconds": previous + seconds, "rounds_completed": self.rounds_done,
                "outer_iterations": self.optimizer.outer_iterations,
                "bytes_sent_total": self.bytes_sent_total(),
                "node_stack": {"x".join(map(str, shape)): {"execution": form, "nodes_per_chunk": size,
                                                          "decided_by": stack.plan_sources.get(shape, "config"),
                                                          "compiled": stack.compiled.get(shape, False),
                                                          "compile_decided_by": stack.compile_sources.get(
                                                              shape, "resumed" if shape in stack.compiled else
                                                              ("config" if stack.compile == "off" else "not reached")),
                                                          **stack.compile_facts.get(shape, {})}
                               for shape, (form, size) in stack.plans.items()}}

    def bytes_sent_total(self) -> float:
        """Bytes every robot sent, as of the last evaluation (every robot's, across processes)."""
        sent = self.problem.history.get("bytes_sent")
        return float(torch.as_tensor(sent[-1], dtype=torch.float64).sum()) if sent else 0.0

    def finish(self) -> None:
        """Write the pair's files (what exists, whatever ended it), then, for a pair that trained to its end,
        record its status (completed / diverged) with every file's size and checksum: a pair is complete
        only once its files are. A finished pair's checkpoint is deleted last."""
        files = self.write_results()
        if self.outcome is None:
            return
        self.record.update_pair(self.name, status=self.outcome, **({"files": files} if files else {}))
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)

    def write_results(self) -> dict[str, dict]:
        """``<name>_results.pt``, ``_metrics.csv``, ``_final_params.pt`` (and ``_last_finite_params.pt`` when
        it diverged), each atomically; returns {file name: {bytes, sha256}} of what it wrote."""
        if self.out_dir is None or not self.problem.history:
            return {}
        written = []
        with self._deferred():
            out, name, history = self.out_dir, self.name, self.problem.history
            results_io.torch_save(history, out / f"{name}_results.pt")
            written.append(out / f"{name}_results.pt")
            rows = history_rows(history)
            if rows:
                results_io.write_csv(out / f"{name}_metrics.csv", rows)
                written.append(out / f"{name}_metrics.csv")
            # every robot's parameters; across processes only after a finish every rank reached together
            final = self.final if self.world is not None else {
                "theta": self.problem.theta.detach().cpu(),
                "last_finite": None if self.optimizer.last_finite is None else
                (self.optimizer.last_finite[0], self.optimizer.last_finite[1].detach().cpu())}
            if final.get("theta") is not None:
                results_io.torch_save(final["theta"], out / f"{name}_final_params.pt")
                written.append(out / f"{name}_final_params.pt")
            last_finite = final.get("last_finite") if self.outcome == "diverged" else None
            if last_finite is not None:
                results_io.torch_save({"round": last_finite[0], "theta": last_finite[1]},
                                      out / f"{name}_last_finite_params.pt")
                written.append(out / f"{name}_last_finite_params.pt")
                self.record.update_pair(name, last_finite_round=last_finite[0])
        return {path.name: results_io.file_facts(path) for path in written}
