"""Shared test helpers: convex."""

from __future__ import annotations

import copy

import networkx as nx
import torch
from torch import nn

from optimizers.comm.network import InProcessNetwork
from problems.base import SupervisedProblem
from problems.sampling import NodeBatchSampler

N, M_PER_NODE, B = 4, 12, 5

DT = torch.float64


def tiny_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def tiny_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N * M_PER_NODE, 3, generator=g, dtype=DT)
    y = torch.randn(N * M_PER_NODE, 2, generator=g, dtype=DT)
    # different nodes see different functions so consensus matters
    y += torch.arange(N * M_PER_NODE).div(M_PER_NODE, rounding_mode="floor").unsqueeze(1).to(DT)
    split = [torch.arange(i * M_PER_NODE, (i + 1) * M_PER_NODE) for i in range(N)]
    return x, y, split


def graph():
    g = nx.Graph()
    g.add_nodes_from(range(N))
    g.add_edges_from([(0, 1), (1, 2), (2, 3), (1, 3)])
    return g


def make_problem(batch=B):
    x, y, split = tiny_data()
    return SupervisedProblem("p", tiny_model(), split, x, y, x[:6], y[:6], loss="MSE",
                             metrics=["validation_loss"], train_batch_size=batch, val_batch_size=6,
                             dtype=DT, seed=11)


class Reference:
    """N ordinary modules, a loop over nodes, mixing as explicit sums over neighbours."""

    def __init__(self, batch=B):
        self.x, self.y, split = tiny_data()
        self.models = [copy.deepcopy(tiny_model()).to(DT) for _ in range(N)]
        self.sampler = NodeBatchSampler(split, seed=11)  # same stream of batches as the problem
        self.graph = graph()
        self.batch = batch

    def weight(self, i, j):
        di, dj = self.graph.degree[i], self.graph.degree[j]
        if i == j:
            return 1.0 - sum(self.weight(i, k) for k in self.graph.neighbors(i))
        return 1.0 / (1 + max(di, dj)) if self.graph.has_edge(i, j) else 0.0

    def vec(self, i):
        return torch.cat([p.detach().reshape(-1) for p in self.models[i].parameters()])

    def set_vec(self, i, v):
        nn.utils.vector_to_parameters(v.clone(), self.models[i].parameters())

    def batch_indices(self):
        return self.sampler.next_indices(self.batch)

    def loss(self, i, idx):
        xb, yb = self.x[idx[i]], self.y[idx[i]]
        return ((self.models[i](xb) - yb) ** 2).mean()

    def grads(self):
        idx = self.batch_indices()
        out = []
        for i in range(N):
            self.models[i].zero_grad()
            self.loss(i, idx).backward()
            out.append(torch.cat([p.grad.reshape(-1) for p in self.models[i].parameters()]))
        return out

    def mix(self, vectors):
        return [sum(self.weight(i, j) * vectors[j] for j in range(N)) for i in range(N)]

    def stacked(self):
        return torch.stack([self.vec(i) for i in range(N)])


def reference_theta(cls, cfg, rounds=5, **kwargs):
    """theta after ``rounds`` rounds of ``cls``'s plain per-robot reference step (in its own module), run on
    N ordinary modules that draw the same batches as the stacked problem."""
    import importlib

    from foundation.schema import defaults
    from optimizers.reference import Robots

    ref = Reference()

    def gradients(vectors):
        for i, v in enumerate(vectors):
            ref.set_vec(i, v)
        return ref.grads()

    robots = Robots([ref.vec(i) for i in range(N)], ref.graph, gradients)
    config = {**defaults(cls.config_schema), "outer_iterations": rounds, **cfg}
    importlib.import_module(cls.__module__).reference_rounds(robots, config, rounds, **kwargs)
    return torch.stack(robots.x)


def least_squares_rows(num_nodes=5, rows=20, dim=4, seed=0):
    """(a, b): ``rows`` rows per node, node i's rows first i * rows on; each node has its own ground truth, so
    local optima differ from the global one."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(num_nodes * rows, dim, generator=g, dtype=DT)
    truths = torch.randn(num_nodes, dim, generator=g, dtype=DT) * 2
    return a, torch.cat([a[i * rows:(i + 1) * rows] @ truths[i] for i in range(num_nodes)]).unsqueeze(1)


def least_squares_problem(num_nodes=5, rows=20, dim=4, seed=0):
    a, b = least_squares_rows(num_nodes, rows, dim, seed)
    split = [torch.arange(i * rows, (i + 1) * rows) for i in range(num_nodes)]
    model = nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    problem = SupervisedProblem("ls", model, split, a, b, a, b, loss="MSE", metrics=["validation_loss"],
                                train_batch_size=rows, val_batch_size=len(a), dtype=DT, seed=0)
    optimum = torch.linalg.lstsq(a, b).solution.reshape(-1)
    return problem, optimum, nx.cycle_graph(num_nodes)


def run_convex(cls, cfg, rounds):
    problem, optimum, g = least_squares_problem()
    net = InProcessNetwork(g, dtype=DT)
    opt = cls(problem, net, {"outer_iterations": rounds, **cfg})
    start_error = (problem.theta - optimum).norm() / optimum.norm()
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            opt.round(k)
    errors = (problem.theta - optimum).norm(dim=1) / optimum.norm()
    return errors, start_error


ROUNDS = 5


def run_stack(cls, cfg, rounds=ROUNDS, links=None, perturb=None, on_graph=None):
    problem = make_problem()
    if perturb is not None:
        problem.theta[perturb] += 0.3
    net = InProcessNetwork(on_graph if on_graph is not None else graph(), dtype=DT)
    if links is not None:
        net.set_links(*links)
    opt = cls(problem, net, {"outer_iterations": rounds, **cfg})
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            opt.round(k)
    return problem.theta.clone(), net
