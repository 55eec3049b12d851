"""How optimizers talk to the other nodes.

An optimizer only ever holds the rows of the node stack that live in its process and asks the
network for graph-shaped products of them: ``mix(X) = W X`` with Metropolis weights and
``neighbor_sum(X) = A X`` with the adjacency matrix. In one process these are matrix products
over the whole stack; a distributed backend answers the same calls by exchanging rows with the
processes that host the neighbours, so optimizer code never changes.

The network also counts the bytes each node has sent: one exchange sends a node's row to each of
its neighbours.
"""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import torch

from optimizers.graphs import metropolis_weights

# Above this many nodes a sparse product beats a dense one for sparse graphs.
_SPARSE_MIN_NODES = 32
_SPARSE_MAX_DENSITY = 0.25


def _as_operator(matrix: np.ndarray, device, dtype) -> torch.Tensor:
    dense = torch.as_tensor(matrix, device=device, dtype=dtype)
    n = matrix.shape[0]
    density = np.count_nonzero(matrix) / max(1, n * n)
    if n >= _SPARSE_MIN_NODES and density <= _SPARSE_MAX_DENSITY:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            return dense.to_sparse_csr()
    return dense


class InProcessNetwork:
    """All nodes in this process; communication is a product with a graph-shaped matrix."""

    def __init__(self, graph: nx.Graph, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_nodes = graph.number_of_nodes()
        self.local_nodes = slice(0, self.num_nodes)
        self.bytes_sent = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.exchanges = 0
        self.set_graph(graph)

    def set_graph(self, graph: nx.Graph) -> None:
        """Use a new communication graph (same node set) from now on."""
        if graph.number_of_nodes() != self.num_nodes:
            raise ValueError(f"graph has {graph.number_of_nodes()} nodes, network has {self.num_nodes}")
        nodes = list(range(self.num_nodes))
        self.graph = graph
        adjacency = nx.to_numpy_array(graph, nodelist=nodes, dtype=np.float64)
        np.fill_diagonal(adjacency, 0.0)
        self._adjacency = _as_operator(adjacency, self.device, self.dtype)
        self._mixing = _as_operator(metropolis_weights(graph), self.device, self.dtype)
        self.degrees = torch.as_tensor(adjacency.sum(axis=1), device=self.device, dtype=self.dtype)
        self._degrees_cpu = torch.as_tensor(adjacency.sum(axis=1), dtype=torch.float64)
        self.is_connected = self.num_nodes == 1 or nx.is_connected(graph)

    def state_dict(self) -> dict:
        """Byte counters and the graph in use (which changes when the graph is dynamic)."""
        edges = torch.tensor(sorted(self.graph.edges()), dtype=torch.long).reshape(-1, 2)
        return {"bytes_sent": self.bytes_sent.clone(), "exchanges": self.exchanges, "edges": edges}

    def load_state_dict(self, saved: dict) -> None:
        graph = nx.Graph()
        graph.add_nodes_from(self.graph.nodes(data=True))
        graph.add_edges_from(saved["edges"].tolist())
        graph.graph.update(self.graph.graph)
        if frozenset(map(frozenset, graph.edges())) != frozenset(map(frozenset, self.graph.edges())):
            self.set_graph(graph)
        self.bytes_sent.copy_(saved["bytes_sent"])
        self.exchanges = int(saved["exchanges"])

    def _count(self, x: torch.Tensor) -> None:
        row_bytes = x[0].numel() * x.element_size()
        self.bytes_sent += self._degrees_cpu * row_bytes
        self.exchanges += 1

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``W x``: Metropolis-weighted average of each node's and its neighbours' rows."""
        self._count(x)
        return self._mixing @ x

    def neighbor_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: sum of the neighbours' rows for each node."""
        self._count(x)
        return self._adjacency @ x

    def mixing_matrix(self) -> torch.Tensor:
        m = self._mixing
        return m.to_dense() if m.layout != torch.strided else m
