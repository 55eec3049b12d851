"""What every problem kind shares: the :class:`ProblemKind` entry, the common config schemas and the
:class:`ExperimentSetup` base class (graph, frozen base model, data; problems and baselines from them).

A kind module defines its schemas, its cross-checks, its setup (a subclass of :class:`ExperimentSetup`
that names its ``problem_class``) and one :class:`ProblemKind` that ties them together; the registry
in :mod:`experiments.kinds` lists the kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import networkx as nx
import numpy as np
import torch

from foundation.schema import (
    AT_LEAST_ONE,
    OPTIONAL,
    POSITIVE,
    REQUIRED,
    SEED_RANGE,
    UNIT_INTERVAL,
    Bool,
    Choice,
    ConfigError,
    Custom,
    Float,
    Int,
    ListOf,
    Name,
    Range,
    Str,
    excerpt,
)
from optimizers import OPTIMIZER_CONFIG
from optimizers.comm.aggregation import AGGREGATION_SCHEMA
from optimizers.comm.faults import FAULTS
from optimizers.comm.graphs import GRAPH_TYPES, GRAPHS, graph_from_config
from optimizers.comm.link_models import LINKS
from problems.base import RobotBlock, StackProblem
from problems.metrics import CONSENSUS_ERROR
from problems.node_stack import default_plan_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"float32": torch.float32, "float64": torch.float64}

def validate_use_cuda(key: str, value: Any):
    """``auto`` (CUDA when present), ``true`` (CUDA required) or ``false``."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: {excerpt(value)} is not allowed; allowed: auto, true, false")


def validate_mlflow(key: str, value: Any):
    """``false``, ``true`` (a local store in the output folder) or a tracking URI (``scheme://...``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and "://" in value and "\0" not in value and len(value) <= 1000:
        return value
    raise ConfigError(f"{key}: expected true, false or a tracking URI such as http://host:5000 or "
                      f"sqlite:///path/mlflow.db, got {excerpt(value)}")


def validate_threads(key: str, value: Any):
    """``auto`` or a number of threads from 1 to 1024."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ConfigError(f"{key}: expected auto or a whole number of threads from 1 to 1024, got {excerpt(value)}")
    return value


GRAPH_SCHEMA = {
    "num_nodes": (Int, REQUIRED, AT_LEAST_ONE),
    "type": (Choice(GRAPH_TYPES), REQUIRED),
    "p": (Float, OPTIONAL, UNIT_INTERVAL),
    "gen_attempts": (Int, 100, AT_LEAST_ONE),
    "radius": (Float, OPTIONAL, POSITIVE),
    "target_fiedler": (Float, OPTIONAL, POSITIVE),
}

INDIVIDUAL_SCHEMA = {
    "train_solo": (Bool, False),
    "optimizer": (Choice(("adam", "adamw", "sgd")), "adam"),
    "lr": (Float, 0.005, POSITIVE),
    "lr_finish": (Float, OPTIONAL, POSITIVE),  # with lr_decay_type: the rate the schedule ends at
    "lr_decay_type": (Choice(("constant", "linear", "log")), "constant"),
    "lr_decay_rounds": (Int, OPTIONAL, AT_LEAST_ONE),  # the schedule's length when not the run's
    "epochs": (Int, 1, AT_LEAST_ONE),
    # given: this many rounds instead of `epochs` passes (e.g. the first pair's outer_iterations)
    "rounds": (Int, OPTIONAL, AT_LEAST_ONE),
    # optimizer steps per round, each on a fresh batch (e.g. DiNNO's primal_iterations: as many gradient steps
    # as a robot of that pair takes)
    "steps_per_round": (Int, 1, AT_LEAST_ONE),
    "train_batch_size": (Int, 64, AT_LEAST_ONE),
    "val_batch_size": (Int, 128, AT_LEAST_ONE),
    "verbose": (Bool, True),
}

TEAM_SCHEMA = {
    "deadline_ms": (Float, 1000.0, POSITIVE),
    "max_staleness": (Int, 20, Range(0, 1_000_000)),
    "start_timeout_s": (Float, 60.0, POSITIVE),
    "silent_after_s": (Float, 5.0, POSITIVE),
    "congestion": (Choice(("drop", "block")), "drop"),
    "hosts": (ListOf(Str), ["127.0.0.1"]),
    "listen_host": (Str, OPTIONAL),
    "base_port": (Int, 17400, Range(1024, 65535)),
    "router": (Str, OPTIONAL),
    "key_file": (Str, OPTIONAL),
    "key_prefix": (Name, "nndt"),
}

COMMON_EXPERIMENT: dict[str, tuple] = {
    "name": (Name, REQUIRED),
    "problem": (Str, OPTIONAL),  # a registered kind (checked against the registry before the schema)
    "data_dir": (Str, OPTIONAL),
    "output_metadir": (Str, OPTIONAL),
    "writeout": (Bool, True),
    "use_cuda": (Custom(validate_use_cuda, "`auto` \\| bool"), "auto"),
    # threads of the run's tensor work: auto chooses from the model's size (small models run fastest on one)
    "threads": (Custom(validate_threads, "`auto` \\| integer"), "auto"),
    "seed": (Int, 0, SEED_RANGE),
    "dtype": (Choice(("float32", "float64")), "float32"),
    "centralized": (Bool, False),
    "execution": (Choice(("auto", "grouped", "vmap", "loop")), "auto"),
    # training steps as one torch.compile'd graph: auto = where it measures faster and the run pays for the compile
    "compile": (Choice(("auto", "on", "off")), "auto"),
    "node_chunk_size": (Int, OPTIONAL, AT_LEAST_ONE),
    "checkpoint_every": (Int, OPTIONAL, AT_LEAST_ONE),
    "individual_training": (INDIVIDUAL_SCHEMA, {}),
    "tensorboard": (Bool, False),  # TensorBoard event files per pair (experiments/tensorboard_log.py)
    # MLflow tracking per pair: true (a store in the output folder) or a tracking URI (experiments/mlflow_log.py)
    "mlflow": (Custom(validate_mlflow, "bool \\| tracking URI"), False),
    # lossy and time-varying communication (optimizers/comm/links.py)
    "links": (LINKS, {}),
    "graph_schedule": ({"graphs": (ListOf(GRAPH_SCHEMA), OPTIONAL),
                        "random_edges_per_round": (Int, OPTIONAL, AT_LEAST_ONE),
                        "seed": (Int, 0, SEED_RANGE)}, {}),
    # faulty and hostile robots (optimizers/comm/faults.py) and how receivers combine rows (optimizers/comm/aggregation.py)
    "faults": (FAULTS, []),
    "aggregation": (AGGREGATION_SCHEMA, {}),
    # robots that wake at random and messages that arrive late (optimizers/comm/asynchrony.py)
    "asynchrony": ({"activation": (Float, 1.0, Range(0.0, 1.0, low_open=True)),
                    "max_delay": (Int, 0, Range(0, 1000)),
                    "seed": (Int, 0, SEED_RANGE)}, {}),
    # under torchrun (experiments/distributed_run.py)
    "backend": (Choice(("auto", "gloo", "nccl")), "auto"),
    "dist_timeout_s": (Float, 60.0, POSITIVE),
    # robots as their own processes on a real network (experiments/robot.py, experiments/team.py)
    "team": (TEAM_SCHEMA, {}),
}

METRICS_CONFIG = {
    "evaluate_frequency": (Int, 20, AT_LEAST_ONE),
    "tloss_decay": (Float, 0.2, UNIT_INTERVAL),
    "mesh_only_at_end": (Bool, False),
    "eval_nodes": (Int, OPTIONAL, AT_LEAST_ONE),
}


def problem_schema(metrics: tuple[str, ...], default_metrics: list[str], train_batch_size: int,
                   val_batch_size: int, metrics_config: dict = METRICS_CONFIG, **extra) -> dict:
    """Schema of one entry of ``problem_configs``; ``extra`` adds domain keys before optimizer_config."""
    return {
        "problem_name": (Name, REQUIRED),
        "train_batch_size": (Int, train_batch_size, AT_LEAST_ONE),
        "val_batch_size": (Int, val_batch_size, AT_LEAST_ONE),
        "verbose_evals": (Bool, False),
        "metrics": (ListOf(Choice(metrics)), default_metrics),
        "metrics_config": (metrics_config, {}),
        "save_models": (Bool, False),
        **extra,
        "optimizer_config": (OPTIMIZER_CONFIG, REQUIRED),
    }


def check_graph_parameters(graph: dict, where: str = "experiment.graph") -> None:
    """The parameter the graph type needs is given."""
    spec = GRAPHS[graph["type"]]
    if spec.parameter is not None and graph.get(spec.parameter) is None:
        raise ConfigError(f"{where}.{spec.parameter}: required for graph type {graph['type']} ({spec.meaning})")


def check_batches_fit(cfg: dict, limit: int, what: str) -> None:
    """Every pair's training batch is at most ``limit`` (``what``: the data that sets it, with the number)."""
    for key, pc in cfg["problem_configs"].items():
        if pc["train_batch_size"] > limit:
            raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger "
                              f"than {what}")


def available_memory() -> int | None:
    """Bytes the system can still give (MemAvailable of /proc/meminfo; None where it cannot be told)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


GRAPH_BYTES_PER_EDGE = 400  # networkx's two adjacency entries of an undirected edge, with their attribute dicts


def expected_edges(graph: dict) -> float:
    """About how many edges a graph block builds (before it is built)."""
    n = graph["num_nodes"]
    kind = graph["type"]
    if kind == "complete":
        return n * (n - 1) / 2
    if kind == "random":
        return (graph.get("p") or 0.0) * n * (n - 1) / 2
    if kind in ("disk", "fiedler") and graph.get("radius"):
        return min(n * (n - 1) / 2, n * (n - 1) / 2 * 3.1416 * graph["radius"] ** 2)
    return 3.0 * n  # cycle, wheel, delaunay (planar), fiedler searches: a few edges per robot


def check_memory(what: str, needed: float, key: str) -> None:
    """Refuse, with the figure, what cannot fit into the memory the system has left."""
    free = available_memory()
    if free is not None and needed > free:
        raise ConfigError(f"{key}: {what} needs about {needed / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free; "
                          f"use fewer robots or a sparser graph")


def build_graph(exp: dict) -> nx.Graph:
    graph = exp["graph"]
    check_memory(f"a {graph['type']} graph of {graph['num_nodes']:,} robots ({expected_edges(graph):,.0f} edges)",
                 expected_edges(graph) * GRAPH_BYTES_PER_EDGE + 16.0 * graph["num_nodes"] ** 2 * (graph["num_nodes"] <= 4096),
                 "experiment.graph.num_nodes")
    return graph_from_config(graph, seed=exp["seed"])


def resolve_path(value: str | None, default: Path) -> Path:
    """Config paths: absolute as given, relative to the working directory (as the original code)."""
    if value is None:
        return default
    return Path(value).expanduser().resolve()


def first_problem(cfg: dict) -> dict:
    return next(iter(cfg["problem_configs"].values()))


# a per-robot sequence that :meth:`ExperimentSetup.local` slices
_PerRobot = TypeVar("_PerRobot", list, torch.Tensor, np.ndarray)


class ExperimentSetup:
    """What stays fixed across the pairs of one experiment: the communication graph, the frozen base
    model (every node of every pair starts from it) and each robot's data. Subclasses build those in
    ``__init__`` and make problems of their ``problem_class`` in :meth:`build_problem`.

    ``graph``, ``data`` (what :meth:`load_data` returned) and ``base_model`` may be given, so that a
    scaling sweep builds each trial on its own graph with the data and the base model of the sweep.
    """

    problem_class: type[StackProblem] = None  # type: ignore[assignment]  # every subclass sets it
    # metrics that need other robots (consensus) or a communication graph: not for a single model
    team_metrics: tuple[str, ...] = (CONSENSUS_ERROR, "current_graph")

    def __init__(self, cfg: dict, device: torch.device, graph: nx.Graph | None = None, data: Any = None,
                 base_model: torch.nn.Module | None = None):
        self.cfg = cfg
        self.exp = cfg["experiment"]
        self.device = device
        self.dtype = DTYPES[self.exp["dtype"]]
        self.seed = self.exp["seed"]
        self.plan_cache = default_plan_cache()
        self.block: RobotBlock | None = None  # under torch.distributed: the robots this process hosts
        self.graph: nx.Graph | None = graph
        self.base_model = base_model
        self.threads: dict | None = None  # the thread count the run chose (experiments.run_record.choose_threads)
        self.num_nodes: int | None = None if graph is None else graph.number_of_nodes()

    @classmethod
    def load_data(cls, cfg: dict) -> Any:
        """Data a sweep can load once and give every trial's setup (None: each setup loads its own)."""
        return None

    # copies of the robots' parameters a run holds at once: the stack, its gradients, an optimizer's moments and
    # duals or trackers, the network's held rows and workspace buffers
    STACK_COPIES = 10

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as the experiment's base model: built after seeding, never trained itself. A team whose
        parameters cannot fit into the memory left is refused here, before any is allocated."""
        for p in model.parameters():
            p.requires_grad_(False)
        if self.num_nodes:
            parameters = sum(p.numel() for p in model.parameters())
            item = torch.finfo(self.dtype).bits // 8
            check_memory(f"{self.num_nodes:,} robots of {parameters:,} parameters",
                         float(self.num_nodes) * parameters * item * self.STACK_COPIES, "experiment.graph.num_nodes")
        return model

    def local(self, per_robot: _PerRobot) -> _PerRobot:
        """This process's entries of a per-robot list (all of them in one process)."""
        return per_robot if self.block is None else per_robot[self.block.start:self.block.stop]

    # ------------------------------------------------------------------ problems
    def problem_kwargs(self, problem_cfg: dict, rounds: int) -> dict[str, Any]:
        """Constructor keywords of a problem for ``problem_cfg`` trained for ``rounds`` rounds."""
        mc = problem_cfg["metrics_config"]
        return dict(metrics=problem_cfg["metrics"], train_batch_size=problem_cfg["train_batch_size"],
                    val_batch_size=problem_cfg["val_batch_size"],
                    evaluate_frequency=mc["evaluate_frequency"], tloss_decay=mc["tloss_decay"],
                    device=self.device, dtype=self.dtype, seed=self.seed + 1,
                    verbose_evals=problem_cfg["verbose_evals"], execution=self.exp["execution"],
                    chunk_size=self.exp["node_chunk_size"], plan_cache=self.plan_cache, compile=self.exp["compile"],
                    eval_nodes=mc["eval_nodes"], robots=self.block)

    def build_problem(self, name: str, kwargs: dict, pooled: bool):
        """A problem named ``name``: this process's robots, or one model on every robot's data (``pooled``)."""
        raise NotImplementedError

    def make_problem(self, problem_cfg: dict, ranks=None):
        """The problem of one pair (``ranks`` combines metrics across processes under torch.distributed)."""
        kwargs = self.problem_kwargs(problem_cfg, problem_cfg["optimizer_config"]["outer_iterations"])
        return self.build_problem(problem_cfg["problem_name"], {**kwargs, "ranks": ranks}, pooled=False)

    # ----------------------------------------------------------------- baselines
    def centralized_batch(self, batch: int) -> int:
        """The pooled model's batch when each robot's batch is ``batch``."""
        assert self.num_nodes is not None  # every setup knows it after __init__
        return batch * self.num_nodes

    def individual_schedule(self, individual: dict) -> tuple[int, int]:
        """(batch, rounds) of the individual baseline: ``epochs`` passes over a robot's data."""
        sizes = self.robot_data_sizes()
        batch = min(individual["train_batch_size"], min(sizes))
        rounds = max(1, math.ceil(individual["epochs"] * (sum(sizes) / len(sizes)) / batch))
        return batch, rounds

    def robot_data_sizes(self) -> list[int]:
        """Training samples per robot: its rows of the training set (``node_indices``, kinds with a fixed data
        set); kinds that gather their data otherwise say it themselves."""
        indices = getattr(self, "node_indices", None)
        if indices is None:
            raise NotImplementedError(f"{type(self).__name__} has no node_indices: it must say its robots' data sizes")
        return [len(ix) for ix in indices]

    def seeded_base_model(self, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The run's base model: the one given, else ``build()`` under the run's seed, frozen."""
        if self.base_model is None:
            torch.manual_seed(self.seed)
            self.base_model = self.frozen(build())
        return self.base_model

    def make_baseline(self, which: str, ranks=None):
        """(problem, optimizer config) of the ``individual`` (every robot alone, with
        ``individual_training``: ``rounds`` rounds, else ``epochs`` passes, of ``steps_per_round`` steps) or ``centralized`` (one model on the pooled data, batch N x B, as many
        rounds as the first pair) baseline."""
        first = first_problem(self.cfg)
        ind = self.exp["individual_training"]
        opt_cfg = {"optimizer": ind["optimizer"], "lr": ind["lr"], "lr_finish": ind["lr_finish"],
                   "lr_decay_type": ind["lr_decay_type"], "lr_decay_rounds": ind["lr_decay_rounds"], "profile": False}
        if which == "centralized":
            rounds = first["optimizer_config"]["outer_iterations"]
            kwargs = self.problem_kwargs(first, rounds)
            kwargs["train_batch_size"] = self.centralized_batch(first["train_batch_size"])
            kwargs["metrics"] = [m for m in kwargs["metrics"] if m not in self.team_metrics]
            kwargs["robots"] = None  # one model (on rank 0 under torch.distributed)
            opt_cfg["outer_iterations"] = rounds
            return self.build_problem("centralized", kwargs, pooled=True), opt_cfg
        batch, rounds = self.individual_schedule(ind)
        if ind["rounds"] is not None:
            rounds = ind["rounds"]
        opt_cfg["steps_per_round"] = ind["steps_per_round"]
        kwargs = self.problem_kwargs(first, rounds)
        kwargs.update(train_batch_size=batch, val_batch_size=ind["val_batch_size"], ranks=ranks)
        kwargs["metrics"] = [m for m in kwargs["metrics"] if m != "current_graph"]
        opt_cfg["outer_iterations"] = rounds
        return self.build_problem("individual", kwargs, pooled=False), opt_cfg

    # --------------------------------------------------------------- per round
    def graph_schedule(self, problem, network, problem_cfg: dict, log: Callable[[str], None]):
        """A per-round hook that changes the network's graph for this kind (None: the graph stays)."""
        return None

    # ------------------------------------------------------------------- reports
    def describe(self) -> dict:
        return {}

    def save_figures(self, out_dir: Path) -> list[Path]:
        """Domain-specific figures written after the standard ones."""
        return []


@dataclass(frozen=True)
class ProblemKind:
    """One problem kind: everything the config validation, the runner and the sweeps need of it."""

    name: str
    setup: type[ExperimentSetup]
    experiment_schema: dict
    problem_schema: dict
    cross_check: Callable[[dict], None]
    # whether an ``experiment`` block without ``problem`` is of this kind (None: only when named)
    recognizes: Callable[[dict], bool] | None = None
    # scaling sweeps build one graph per trial: kinds whose graph follows the robots cannot be swept
    sweepable: bool = True

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.setup.problem_class.available_metrics()
