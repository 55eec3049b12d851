"""The team as the plain per-robot reference steps see it.

Every algorithm module keeps, next to its stacked ``round`` (one tensor op over all robots, workspace
buffers, in-place updates), a ``reference_rounds(robots, config, rounds)``: the same update written the way
the paper writes it, robot by robot, with explicit sums over neighbours. The tests run both and compare;
a reader can check the fast form against the readable one.

:class:`Robots` holds one parameter vector per robot (``robots.x``, a list the reference steps replace
entries of), the graph, Metropolis weights and a gradient oracle: ``robots.gradients()`` gives every robot's
stochastic gradient at its current vector on a fresh batch (the same batches the stacked run draws).
"""

from __future__ import annotations

from typing import Callable

import networkx as nx
import torch


class Robots:
    def __init__(self, x: list[torch.Tensor], graph: nx.Graph,
                 gradients: Callable[[list[torch.Tensor]], list[torch.Tensor]]):
        self.x = [v.detach().clone() for v in x]
        self.graph = graph
        self.n = len(self.x)
        self._gradients = gradients

    def neighbours(self, i: int) -> list[int]:
        return sorted(self.graph.neighbors(i))

    def degree(self, i: int) -> int:
        return self.graph.degree[i]

    def weight(self, i: int, j: int) -> float:
        """Metropolis: 1 / (1 + max(d_i, d_j)) on an edge, the rest of the row on the diagonal."""
        if i == j:
            return 1.0 - sum(self.weight(i, k) for k in self.neighbours(i))
        return 1.0 / (1 + max(self.degree(i), self.degree(j))) if self.graph.has_edge(i, j) else 0.0

    def mix(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """(W v)_i = sum_j w_ij v_j, for every robot."""
        return [self.weight(i, i) * vectors[i] + sum(self.weight(i, j) * vectors[j] for j in self.neighbours(i))
                for i in range(self.n)]

    def gossip(self, vectors: list[torch.Tensor], i: int) -> torch.Tensor:
        """sum_j w_ij (v_j - v_i) over robot i's neighbours."""
        return sum((self.weight(i, j) * (vectors[j] - vectors[i]) for j in self.neighbours(i)),
                   torch.zeros_like(vectors[i]))

    def gradients(self) -> list[torch.Tensor]:
        return [g.detach().clone() for g in self._gradients(self.x)]

    def optimizers(self, name: str, lr: float) -> tuple[list[torch.Tensor], list[torch.optim.Optimizer]]:
        """One leaf tensor per robot (its current vector) and one torch optimizer of ``name`` for each."""
        leaves = [v.clone().requires_grad_(True) for v in self.x]
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
        return leaves, [cls([leaf], lr=lr) for leaf in leaves]

    def step(self, leaves: list[torch.Tensor], optimizers: list[torch.optim.Optimizer],
             extra: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
        """One optimizer step of every robot on its fresh-batch gradient plus ``extra(i, x_i)``."""
        self.x = [leaf.detach() for leaf in leaves]
        grads = self.gradients()
        for i, (leaf, opt) in enumerate(zip(leaves, optimizers)):
            leaf.grad = grads[i] + extra(i, leaf.detach())
            opt.step()
        self.x = [leaf.detach().clone() for leaf in leaves]
