"""What stays fixed across the (problem, optimizer) pairs of one experiment.

A setup builds, once per experiment, the communication graph, the frozen base model and the
per-node data, then makes a fresh problem for each pair from them. Every pair therefore starts from
the same weights, the same splits and the same graph.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from optimizers.graphs import make_graph
from problems.base import RobotBlock
from problems.mnist import MNISTProblem, mnist_cnn
from problems.node_stack import default_plan_cache
from problems.mnist_data import images_to_tensor, load_mnist, split_indices

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data"

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_path(value: str | None, default: Path) -> Path:
    """Config paths: absolute as given, relative to the working directory (as the original code)."""
    if value is None:
        return default
    return Path(value).expanduser().resolve()


class ExperimentSetup:
    """Base class of per-domain setups."""

    kind = ""

    def __init__(self, cfg: dict, device: torch.device):
        self.cfg = cfg
        self.exp = cfg["experiment"]
        self.device = device
        self.dtype = DTYPES[self.exp["dtype"]]
        self.seed = self.exp["seed"]
        self.plan_cache = default_plan_cache()
        self.block: RobotBlock | None = None  # under torch.distributed: the robots this process hosts

    def local(self, per_robot: list) -> list:
        """This process's entries of a per-robot list (all of them in one process)."""
        return per_robot if self.block is None else per_robot[self.block.start:self.block.stop]

    # graph: nx.Graph, base_model: nn.Module, data_description: dict are set by subclasses
    def make_problem(self, problem_cfg: dict):
        raise NotImplementedError

    def make_baseline(self, kind: str):
        """(problem, optimizer config) of the individual or centralized baseline."""
        raise NotImplementedError

    def problem_kwargs(self, problem_cfg: dict) -> dict[str, Any]:
        mc = problem_cfg["metrics_config"]
        return dict(metrics=problem_cfg["metrics"], train_batch_size=problem_cfg["train_batch_size"],
                    val_batch_size=problem_cfg["val_batch_size"],
                    evaluate_frequency=mc["evaluate_frequency"], tloss_decay=mc["tloss_decay"],
                    device=self.device, dtype=self.dtype, seed=self.seed + 1,
                    verbose_evals=problem_cfg["verbose_evals"], execution=self.exp["execution"],
                    chunk_size=self.exp["node_chunk_size"], plan_cache=self.plan_cache,
                    eval_nodes=mc["eval_nodes"], robots=self.block)

    def describe(self) -> dict:
        return {}

    def save_figures(self, out_dir: Path) -> list[Path]:
        """Domain-specific figures written after the standard ones."""
        return []


def build_graph(exp: dict) -> nx.Graph:
    g = exp["graph"]
    return make_graph(g["type"], g["num_nodes"], seed=exp["seed"], p=g.get("p"), radius=g.get("radius"),
                      target_fiedler=g.get("target_fiedler"), gen_attempts=g["gen_attempts"])


def load_experiment_mnist(exp: dict):
    data_dir = resolve_path(exp["data_dir"], DEFAULT_DATA_DIR)
    with warnings.catch_warnings(record=True) as caught:  # the fallback notice, as one plain line
        warnings.simplefilter("always")
        data = load_mnist(data_dir, exp["dataset"], download=exp["download"])
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return data


class MnistSetup(ExperimentSetup):
    kind = "mnist"

    def __init__(self, cfg: dict, device: torch.device, graph: nx.Graph | None = None, data=None):
        """``graph`` and ``data`` (an ``MnistData``) default to building them from the config."""
        super().__init__(cfg, device)
        exp = self.exp
        self.graph = build_graph(exp) if graph is None else graph
        self.num_nodes = self.graph.number_of_nodes()
        self.data = load_experiment_mnist(exp) if data is None else data
        self.node_indices = split_indices(self.data.train_labels, self.num_nodes, exp["data_split_type"],
                                          seed=self.seed, alpha=exp["dirichlet_alpha"],
                                          min_size=max(pc["train_batch_size"]
                                                       for pc in cfg["problem_configs"].values()))
        smallest = min(len(ix) for ix in self.node_indices)
        for key, pc in cfg["problem_configs"].items():
            if pc["train_batch_size"] > smallest:
                from experiments.config import ConfigError
                raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger "
                                  f"than the smallest node's {smallest} training samples")
        self.train_x = images_to_tensor(self.data.train_images, self.dtype)
        self.train_y = self.data.train_labels
        self.val_x = images_to_tensor(self.data.test_images, self.dtype)
        self.val_y = self.data.test_labels
        size = exp["validation_size"]
        if size is not None and size < len(self.val_y):  # a fixed, seeded subset of the test set
            keep = torch.randperm(len(self.val_y), generator=torch.Generator().manual_seed(self.seed))[:size]
            keep = keep.sort().values
            self.val_x, self.val_y = self.val_x[keep], self.val_y[keep]
        torch.manual_seed(self.seed)
        model_cfg = exp["model"]
        self.base_model = mnist_cnn(model_cfg["num_filters"], model_cfg["kernel_size"], model_cfg["linear_width"])
        for p in self.base_model.parameters():
            p.requires_grad_(False)

    def describe(self) -> dict:
        info = self.data.describe()
        info["num_validation"] = len(self.val_y)
        info["node_sizes"] = [len(ix) for ix in self.node_indices]
        info["node_classes"] = [sorted(set(self.train_y[ix].tolist())) for ix in self.node_indices]
        return info

    def _problem(self, name, node_indices, kwargs):
        return MNISTProblem(name, self.base_model, node_indices, self.train_x, self.train_y, self.val_x,
                            self.val_y, loss=self.exp["loss"], **kwargs)

    def make_problem(self, problem_cfg: dict):
        return self._problem(problem_cfg["problem_name"], self.local(self.node_indices),
                             self.problem_kwargs(problem_cfg))

    def make_baseline(self, kind: str):
        first = next(iter(self.cfg["problem_configs"].values()))
        ind = self.exp["individual_training"]
        kwargs = self.problem_kwargs(first)
        opt_cfg = {"alg_name": "local", "optimizer": ind["optimizer"], "lr": ind["lr"], "profile": False}
        if kind == "centralized":
            pooled = [torch.cat(self.node_indices)]
            kwargs["train_batch_size"] = first["train_batch_size"] * self.num_nodes
            kwargs["metrics"] = [m for m in kwargs["metrics"] if m != "consensus_error"]
            kwargs["robots"] = None  # one model (on rank 0 under torch.distributed)
            opt_cfg["outer_iterations"] = first["optimizer_config"]["outer_iterations"]
            return self._problem("centralized", pooled, kwargs), opt_cfg
        batch = min(ind["train_batch_size"], min(len(ix) for ix in self.node_indices))
        kwargs["train_batch_size"] = batch
        kwargs["val_batch_size"] = ind["val_batch_size"]
        mean_size = sum(len(ix) for ix in self.node_indices) / self.num_nodes
        opt_cfg["outer_iterations"] = max(1, math.ceil(ind["epochs"] * mean_size / batch))
        return self._problem("individual", self.local(self.node_indices), kwargs), opt_cfg


SETUPS: dict[str, type[ExperimentSetup]] = {"mnist": MnistSetup}


from experiments.density_setup import DensitySetup, OnlineDensitySetup  # noqa: E402

SETUPS.update({"density": DensitySetup, "online_density": OnlineDensitySetup})
