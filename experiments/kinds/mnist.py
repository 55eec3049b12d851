"""The ``mnist`` kind: digit classification, the training set split across the robots (the paper's CNN)."""

from __future__ import annotations

import warnings

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
    resolve_path,
)
from foundation.log import LOG
from foundation.schema import AT_LEAST_ONE, OPTIONAL, POSITIVE, REQUIRED, Bool, Choice, ConfigError, Float, Int
from problems.metrics import CONSENSUS_ERROR, FORWARD_PASS_COUNT, TOP1_ACCURACY, VALIDATION_LOSS
from problems.mnist import MNISTProblem, mnist_cnn
from problems.mnist_data import DATASET_CHOICES, data_folder, images_to_tensor, load_mnist
from problems.splits import SPLIT_TYPES, split_indices

EXPERIMENT_SCHEMA = {
    **COMMON_EXPERIMENT,
    "dataset": (Choice(DATASET_CHOICES), "mnist"),
    "download": (Bool, False),
    "data_split_type": (Choice(SPLIT_TYPES), "random"),
    "dirichlet_alpha": (Float, 0.5, POSITIVE),
    "validation_size": (Int, OPTIONAL, AT_LEAST_ONE),
    "loss": (Choice(("NLL",)), "NLL"),
    "graph": (GRAPH_SCHEMA, REQUIRED),
    "model": ({"num_filters": (Int, 3, AT_LEAST_ONE), "kernel_size": (Int, 5, AT_LEAST_ONE),
               "linear_width": (Int, 64, AT_LEAST_ONE)}, {}),
}

PROBLEM_SCHEMA = problem_schema(MNISTProblem.available_metrics(),
                                [FORWARD_PASS_COUNT, VALIDATION_LOSS, CONSENSUS_ERROR, TOP1_ACCURACY,
                                 "current_epoch"], 64, 128)


def check(cfg: dict) -> None:
    exp = cfg["experiment"]
    n = exp["graph"]["num_nodes"]
    if exp["data_split_type"] == "hetero" and n > 10:
        raise ConfigError(f"experiment.graph.num_nodes: {n} nodes but only 10 digits; data_split_type hetero "
                          f"gives each node whole digit classes, so use at most 10 nodes or split sorted, "
                          f"random or dirichlet")
    check_graph_parameters(exp["graph"])
    kernel = exp["model"]["kernel_size"]
    if kernel > 27:
        raise ConfigError(f"experiment.model.kernel_size: {kernel} leaves nothing of a 28x28 digit after the "
                          f"2x2 pooling; use at most 27")


class MnistSetup(ExperimentSetup):
    problem_class = MNISTProblem

    def __init__(self, cfg: dict, device: torch.device, graph: nx.Graph | None = None, data=None,
                 base_model=None):
        super().__init__(cfg, device, graph, data, base_model)
        exp = self.exp
        self.data = self.load_data(cfg) if data is None else data
        robots = exp["graph"]["num_nodes"] if self.graph is None else self.graph.number_of_nodes()
        share = len(self.data.train_labels) // robots  # the most the smallest robot can get
        for key, pc in cfg["problem_configs"].items():
            if pc["train_batch_size"] > share:  # said before the graph is built (a large one takes a while)
                raise ConfigError(f"problem_configs.{key}.train_batch_size: {pc['train_batch_size']} is larger than the "
                                  f"{share} training samples the smallest node can get ({robots:,} robots share "
                                  f"{len(self.data.train_labels):,})")
        if self.graph is None:
            self.graph = build_graph(exp)
        self.num_nodes = self.graph.number_of_nodes()
        self.node_indices = split_indices(self.data.train_labels, self.num_nodes, exp["data_split_type"],
                                          seed=self.seed, alpha=exp["dirichlet_alpha"],
                                          min_size=max(pc["train_batch_size"]
                                                       for pc in cfg["problem_configs"].values()))
        smallest = min(len(ix) for ix in self.node_indices)
        check_batches_fit(cfg, smallest, f"the smallest node's {smallest} training samples")
        self.train_x = images_to_tensor(self.data.train_images, self.dtype)
        self.train_y = self.data.train_labels
        self.val_x = images_to_tensor(self.data.test_images, self.dtype)
        self.val_y = self.data.test_labels
        size = exp["validation_size"]
        if size is not None and size < len(self.val_y):  # a fixed, seeded subset of the test set
            keep = torch.randperm(len(self.val_y), generator=torch.Generator().manual_seed(self.seed))[:size]
            keep = keep.sort().values
            self.val_x, self.val_y = self.val_x[keep], self.val_y[keep]
        self.seeded_base_model(lambda: mnist_cnn(**exp["model"]))

    @classmethod
    def load_data(cls, cfg: dict):
        exp = cfg["experiment"]
        data_dir = resolve_path(exp["data_dir"], data_folder())  # $NNDT_DATA (read now), else data/
        with warnings.catch_warnings(record=True) as caught:  # the fallback notice, as one plain line
            warnings.simplefilter("always")
            data = load_mnist(data_dir, exp["dataset"], download=exp["download"])
        for warning in caught:
            LOG.warning(f"warning: {warning.message}")
        return data

    def describe(self) -> dict:
        info = self.data.describe()
        info["num_validation"] = len(self.val_y)
        info["node_sizes"] = [len(ix) for ix in self.node_indices]
        info["node_classes"] = [sorted(set(self.train_y[ix].tolist())) for ix in self.node_indices]
        return info

    def build_problem(self, name, kwargs, pooled):
        indices = [torch.cat(self.node_indices)] if pooled else self.local(self.node_indices)
        assert self.base_model is not None  # __init__ built it
        return MNISTProblem(name, self.base_model, indices, self.train_x, self.train_y, self.val_x, self.val_y,
                            loss=self.exp["loss"], **kwargs)


KIND = ProblemKind("mnist", MnistSetup, EXPERIMENT_SCHEMA, PROBLEM_SCHEMA, check,
                   recognizes=lambda experiment: not isinstance(experiment.get("data"), dict))
