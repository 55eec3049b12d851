"""The ``logreg`` kind: decentralized logistic regression / least squares with a known optimum
(:mod:`problems.logreg`), the sanity check of every decentralized optimizer."""

from __future__ import annotations

import networkx as nx
import torch

from experiments.kinds.base import (
    COMMON_EXPERIMENT,
    GRAPH_SCHEMA,
    ExperimentSetup,
    ProblemKind,
    build_graph,
    check_batches_fit,
    check_graph_parameters,
    problem_schema,
)
from foundation.schema import POSITIVE, REQUIRED, Bool, Choice, ConfigError, Float, Range
from problems.logreg import LOSSES, LogRegProblem, TeamObjective, linear_model, load_tabular, split_labels
from problems.metrics import (
    CONSENSUS_ERROR,
    FORWARD_PASS_COUNT,
    MEAN_MODEL_TOP1_ACCURACY,
    TOP1_ACCURACY,
    VALIDATION_LOSS,
)
from problems.splits import DataError, split_indices

EXPERIMENT_SCHEMA = {
    **COMMON_EXPERIMENT,
    "dataset": (Choice(tuple(LOSSES)), "breast_cancer"),
    "regularization": (Float, 0.01, POSITIVE),  # makes f strongly convex, so its minimizer is unique
    "test_fraction": (Float, 0.2, Range(0.0, 1.0, high_open=True)),
    "data_split_type": (Choice(("random", "sorted", "dirichlet")), "random"),
    "dirichlet_alpha": (Float, 0.5, POSITIVE),
    "full_batch": (Bool, True),
    "graph": (GRAPH_SCHEMA, REQUIRED),
}

PROBLEM_SCHEMA = problem_schema(LogRegProblem.available_metrics(),
                                [FORWARD_PASS_COUNT, VALIDATION_LOSS, CONSENSUS_ERROR, "optimality_gap",
                                 "mean_optimality_gap"], 16, 1000)


def check(cfg: dict) -> None:
    exp = cfg["experiment"]
    check_graph_parameters(exp["graph"])
    if LOSSES[exp["dataset"]] != "logistic":
        for key, pc in cfg["problem_configs"].items():
            for metric in (TOP1_ACCURACY, MEAN_MODEL_TOP1_ACCURACY):
                if metric in pc["metrics"]:
                    raise ConfigError(f"problem_configs.{key}.metrics: {metric} needs a classification data set "
                                      f"(dataset {exp['dataset']} is a regression); allowed datasets: breast_cancer")


class LogRegSetup(ExperimentSetup):
    problem_class = LogRegProblem

    def __init__(self, cfg: dict, device: torch.device, graph: nx.Graph | None = None, data=None,
                 base_model=None):
        super().__init__(cfg, device, graph, data, base_model)
        exp = self.exp
        if self.graph is None:
            self.graph = build_graph(exp)
        self.num_nodes = self.graph.number_of_nodes()
        self.data = self.load_data(cfg) if data is None else data
        self.loss = LOSSES[exp["dataset"]]
        train_y = self.data["train_y"]
        try:
            self.node_indices = split_indices(split_labels(self.loss, train_y), self.num_nodes,
                                              exp["data_split_type"], seed=self.seed, alpha=exp["dirichlet_alpha"])
        except DataError as exc:
            raise ConfigError(f"experiment.graph.num_nodes: {exc}") from None
        sizes = self.robot_data_sizes()
        if not exp["full_batch"]:
            check_batches_fit(cfg, min(sizes), f"the smallest robot's {min(sizes)} samples")
        n = self.num_nodes
        self.sample_weights = [torch.full((size,), 1.0 / size, dtype=torch.float64) for size in sizes]
        # every sample's weight in f = (1/N) sum_i f_i: 1 / (N |D_i|)
        weights = torch.zeros(len(train_y), dtype=torch.float64)
        for ix, size in zip(self.node_indices, sizes):
            weights[ix] = 1.0 / (n * size)
        self.objective = TeamObjective(self.data["train_x"], train_y, weights, self.loss, exp["regularization"])
        self.train_x = self.data["train_x"].to(self.dtype)
        self.train_y = train_y.to(self.dtype)
        self.val_x = self.data["test_x"].to(self.dtype)
        self.val_y = self.data["test_y"].to(self.dtype)
        self.seeded_base_model(lambda: linear_model(self.train_x.shape[1]))

    @classmethod
    def load_data(cls, cfg: dict):
        exp = cfg["experiment"]
        return load_tabular(exp["dataset"], exp["test_fraction"], exp["seed"])

    def describe(self) -> dict:
        return {"source": f"scikit-learn {self.exp['dataset']} ({self.loss} loss)",
                "num_features": int(self.train_x.shape[1]), "num_train": int(len(self.train_y)),
                "num_validation": int(len(self.val_y)), "node_sizes": self.robot_data_sizes(),
                "regularization": self.exp["regularization"], "f_star": self.objective.f_star}

    def problem_kwargs(self, problem_cfg: dict, rounds: int) -> dict:
        kwargs = super().problem_kwargs(problem_cfg, rounds)
        kwargs.update(objective=self.objective, full_batch=self.exp["full_batch"])
        return kwargs

    def build_problem(self, name, kwargs, pooled):
        assert self.num_nodes is not None and self.base_model is not None  # __init__ set them
        if pooled:  # one model whose objective is the team's f: each sample weighted 1 / (N |D_i|)
            indices = [torch.cat(self.node_indices)]
            weights = [torch.cat(self.sample_weights) / self.num_nodes]
        else:
            indices, weights = self.local(self.node_indices), self.local(self.sample_weights)
        return LogRegProblem(name, self.base_model, indices, self.train_x, self.train_y, self.val_x, self.val_y,
                             loss=self.loss, sample_weights=weights, **kwargs)


KIND = ProblemKind("logreg", LogRegSetup, EXPERIMENT_SCHEMA, PROBLEM_SCHEMA, check)
