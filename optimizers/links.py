"""Unreliable and changing links for every optimizer: ``experiment.links`` and ``experiment.graph_schedule``.

- ``links: {drop_prob: p, seed: s}``: every directed message is lost with probability p (see
  ``InProcessNetwork.set_links`` for what the receiver does then).
- ``graph_schedule: {graphs: [graph, ...]}``: round k uses graphs[(k - 1) mod len] (each built like
  ``experiment.graph``, seeded with experiment.seed + its position in the list);
  ``graph_schedule: {random_edges_per_round: m, seed: s}``: round k uses m edges of
  ``experiment.graph`` drawn uniformly at random (a ``torch.Generator`` seeded with s).

``configure_network`` applies both to a network and returns the per-round hook (or None).
"""

from __future__ import annotations

import networkx as nx
import torch

from optimizers.graphs import make_graph


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


def configure_network(network, experiment: dict, base: nx.Graph) -> GraphSchedule | None:
    """Apply ``experiment.links`` and ``experiment.graph_schedule``; returns the per-round hook or None."""
    links = experiment.get("links") or {}
    if links.get("drop_prob"):
        network.set_links(links["drop_prob"], links.get("seed", 0))
    schedule = experiment.get("graph_schedule") or {}
    if schedule.get("graphs"):
        graphs = [make_graph(g["type"], g["num_nodes"], seed=experiment.get("seed", 0) + i, p=g.get("p"),
                             radius=g.get("radius"), target_fiedler=g.get("target_fiedler"),
                             gen_attempts=g.get("gen_attempts", 100))
                  for i, g in enumerate(schedule["graphs"])]
        return GraphSchedule(network, base, graphs=graphs)
    if schedule.get("random_edges_per_round"):
        return GraphSchedule(network, base, edges_per_round=schedule["random_edges_per_round"],
                             seed=schedule.get("seed", 0))
    return None
