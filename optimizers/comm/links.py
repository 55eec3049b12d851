"""Unreliable and changing links for every optimizer: ``experiment.links`` and ``experiment.graph_schedule``.

- ``links: {model: ..., drop_prob: p, seed: s, bursty: {...}, distance: {...}}``: how messages are lost
  (:mod:`optimizers.comm.link_models`; see ``InProcessNetwork`` for what the receiver does then).
- ``graph_schedule: {graphs: [graph, ...]}``: round k uses graphs[(k - 1) mod len] (each built like
  ``experiment.graph``, seeded with experiment.seed + its position in the list);
  ``graph_schedule: {random_edges_per_round: m, seed: s}``: round k uses m edges of
  ``experiment.graph`` drawn uniformly at random (a ``torch.Generator`` seeded with s).

``configure_network`` applies both to a network and returns the per-round hook (or None);
``configure_asynchrony`` adds ``experiment.asynchrony`` (:mod:`optimizers.comm.asynchrony`) on top of the links.
:class:`FollowPositions` is the schedule of robots that move: a disk graph on their current positions.
Only these schedules change a network's graph; each is called before every round.
"""

from __future__ import annotations

from typing import Callable

import networkx as nx
import numpy as np
import torch

from optimizers.comm.graphs import disk_graph, graph_from_config
from optimizers.comm.link_models import make_link_model


class GraphSchedule:
    """The communication graph of every round, set on the network before the round runs."""

    def __init__(self, network, base: nx.Graph, graphs: list[nx.Graph] | None = None,
                 edges_per_round: int | None = None, seed: int = 0):
        self.network = network
        self.graphs = graphs
        self.edges = sorted(tuple(sorted(e)) for e in base.edges)
        self.edges_per_round = edges_per_round
        self.generator = torch.Generator().manual_seed(int(seed))

    def graph_for_round(self, k: int) -> nx.Graph:
        if self.graphs:
            return self.graphs[(k - 1) % len(self.graphs)]
        pick = torch.randperm(len(self.edges), generator=self.generator)[:self.edges_per_round]
        g = nx.Graph()
        g.add_nodes_from(range(self.network.num_nodes))
        g.add_edges_from(self.edges[i] for i in sorted(pick.tolist()))
        return g

    def __call__(self, k: int) -> None:
        self.network.set_graph(self.graph_for_round(k))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, saved: dict) -> None:
        self.generator.set_state(saved["generator"])


class FollowPositions:
    """Before every round, the disk graph of ``radius`` on the robots' current ``positions()`` (every
    robot's, in every process); the network's graph changes only when an edge appears or disappears.
    Each change is recorded (round, edges, connected) and a disconnected graph is reported through
    ``log`` once per change."""

    def __init__(self, network, positions: Callable[[], np.ndarray], radius: float,
                 log: Callable[[str], None] = lambda message: None, name: str = ""):
        self.network = network
        self.positions = positions
        self.radius = float(radius)
        self.log = log
        self.name = name
        self.edges: frozenset | None = None
        self.changes: list[dict] = []

    def __call__(self, k: int) -> None:
        graph = disk_graph(self.positions(), self.radius)
        edges = frozenset(graph.edges())
        if edges == self.edges:
            return
        self.network.set_graph(graph)
        connected = self.network.is_connected
        self.changes.append({"round": k, "num_edges": len(edges), "connected": connected})
        if not connected:
            parts = [sorted(c) for c in nx.connected_components(graph)]
            self.log(f"  [{self.name}] round {k}: communication graph is disconnected "
                     f"({len(parts)} components: {parts})")
        self.edges = edges

    def state_dict(self) -> dict:
        edges = None if self.edges is None else torch.tensor(sorted(self.edges), dtype=torch.long).reshape(-1, 2)
        return {"edges": edges, "changes": list(self.changes)}

    def load_state_dict(self, saved: dict) -> None:
        edges = saved["edges"]
        self.edges = None if edges is None else frozenset(tuple(e) for e in edges.tolist())
        self.changes = list(saved["changes"])


class Chain:
    """Several per-round hooks, called in order, checkpointed together."""

    def __init__(self, *hooks):
        self.hooks = [h for h in hooks if h is not None]

    def __call__(self, k: int) -> None:
        for hook in self.hooks:
            hook(k)

    def state_dict(self) -> dict:
        return {"hooks": [h.state_dict() for h in self.hooks]}

    def load_state_dict(self, saved: dict) -> None:
        for hook, state in zip(self.hooks, saved["hooks"]):
            hook.load_state_dict(state)


def configure_network(network, experiment: dict, base: nx.Graph) -> GraphSchedule | None:
    """Apply ``experiment.links`` and ``experiment.graph_schedule``; returns the per-round hook or None."""
    links = experiment.get("links") or {}
    model = make_link_model(links) if links else None
    if model is not None:
        network.set_link_model(model)
    schedule = experiment.get("graph_schedule") or {}
    if schedule.get("graphs"):
        graphs = [graph_from_config(g, seed=experiment.get("seed", 0) + i) for i, g in enumerate(schedule["graphs"])]
        return GraphSchedule(network, base, graphs=graphs)
    if schedule.get("random_edges_per_round"):
        return GraphSchedule(network, base, edges_per_round=schedule["random_edges_per_round"],
                             seed=schedule.get("seed", 0))
    return None


PER_EDGE_OPTIMIZERS = ("relaxed_admm", "sgp", "push_diging")  # their messages are per edge: no rule combines them


def check_team_options(experiment: dict, graph: nx.Graph, alg_names=()) -> None:
    """``experiment.faults`` and ``experiment.aggregation`` fit the team's graph (and its pairs' algorithms)."""
    from foundation.schema import ConfigError
    from optimizers.comm.aggregation import check_aggregation
    from optimizers.comm.faults import check_faults

    check_faults(experiment.get("faults") or [], graph.number_of_nodes())
    aggregation = experiment.get("aggregation") or {"rule": "mean"}
    if aggregation["rule"] != "mean":
        degrees = [d for _, d in graph.degree()]
        check_aggregation(aggregation, min(degrees) if degrees else 0)
        for name in alg_names:
            if name in PER_EDGE_OPTIMIZERS:
                raise ConfigError(f"experiment.aggregation.rule: {aggregation['rule']} combines a neighbourhood's "
                                  f"rows, but {name} sends one message per edge; use rule mean with {name}")


def configure_faults(network, experiment: dict):
    """``experiment.faults`` and ``experiment.aggregation`` on a network; returns the per-round hook that tells the
    faults the round (None when every robot is honest)."""
    network.set_aggregation(experiment.get("aggregation"))
    entries = experiment.get("faults") or []
    if not entries:
        return None
    from optimizers.comm.faults import Faults

    faults = Faults(entries, network.num_nodes)
    network.set_faults(faults)
    return faults


def configure_asynchrony(network, experiment: dict):
    """``experiment.asynchrony`` on a network (after ``configure_network``: lost messages stay lost); returns
    the per-round hook, or None when every robot is awake every round and nothing is late."""
    spec = experiment.get("asynchrony") or {}
    if spec.get("activation", 1.0) >= 1.0 and not spec.get("max_delay", 0):
        return None
    from optimizers.comm.asynchrony import Asynchrony

    return Asynchrony(network, spec.get("activation", 1.0), spec.get("max_delay", 0), spec.get("seed", 0),
                      inner=network.link_model)
