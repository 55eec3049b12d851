"""Communication graphs of a robot team and their mixing matrices.

Every graph has integer nodes 0..N-1 and a ``"pos"`` node attribute (a tuple of
floats) for plotting: geometric graphs (disk, delaunay, fiedler) use the sampled
positions in the unit square, the others a circular layout (wheel: hub at the
centre). Generation is seeded with ``numpy.random.default_rng(seed)``, so the
same arguments always give the same graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import networkx as nx
import numpy as np
import scipy.linalg
from scipy.spatial import Delaunay, QhullError

FIEDLER_REL_TOL = 0.05


class GraphError(ValueError):
    """Invalid graph arguments or a graph that could not be generated."""


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GraphError(f"{name} must be an integer >= {minimum} (got {value!r})")
    if value < minimum:
        raise GraphError(f"{name} must be an integer >= {minimum} (got {value})")
    return int(value)


def _check_number(name: str, value: Any, kind: str) -> float:
    if value is None:
        raise GraphError(f"{name} is required for graph.type {kind}")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GraphError(f"{name} must be a number for graph.type {kind} (got {value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise GraphError(f"{name} must be finite for graph.type {kind} (got {value})")
    return value


def _pairwise_distances(positions: np.ndarray) -> np.ndarray:
    diff = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def _set_positions(graph: nx.Graph, positions: np.ndarray) -> None:
    for i in range(positions.shape[0]):
        graph.nodes[i]["pos"] = tuple(float(v) for v in positions[i])


def _circular_positions(n: int) -> np.ndarray:
    if n == 1:
        return np.zeros((1, 2))
    angles = 2.0 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _wheel_positions(n: int) -> np.ndarray:
    positions = np.zeros((n, 2))
    if n > 1:
        positions[1:] = _circular_positions(n - 1)
    return positions


def disk_graph(positions: np.ndarray, radius: float) -> nx.Graph:
    """Graph with an edge between i != j iff ||positions[i] - positions[j]|| <= radius."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2:
        raise GraphError(f"disk graph positions must have shape (N, dim) (got {positions.shape})")
    n = positions.shape[0]
    dist = _pairwise_distances(positions)
    rows, cols = np.nonzero(np.triu(dist <= radius, k=1))
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(rows.tolist(), cols.tolist()))
    _set_positions(graph, positions)
    graph.graph["radius"] = float(radius)
    return graph


def fiedler_value(graph: nx.Graph) -> float:
    """Algebraic connectivity (second-smallest Laplacian eigenvalue); 0 for disconnected graphs."""
    n = graph.number_of_nodes()
    if n <= 1 or not nx.is_connected(graph):
        return 0.0
    nodes = sorted(graph.nodes)
    lap = nx.laplacian_matrix(graph, nodelist=nodes).toarray().astype(np.float64)
    eigenvalues = scipy.linalg.eigvalsh(lap)
    return float(max(eigenvalues[1], 0.0))


def _check_node_labels(graph: nx.Graph) -> list[int]:
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise GraphError("graph nodes must be the integers 0..N-1")
    return list(range(n))


def metropolis_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis mixing matrix: W_ij = 1/(1+max(d_i,d_j)) on edges, W_ii = 1 - sum_j W_ij."""
    _check_node_labels(graph)
    n = graph.number_of_nodes()
    edges = [(u, v) for u, v in graph.edges if u != v]
    degree = np.zeros(n, dtype=np.float64)
    for u, v in edges:
        degree[u] += 1.0
        degree[v] += 1.0
    weights = np.zeros((n, n), dtype=np.float64)
    if edges:
        rows = np.array([u for u, _ in edges], dtype=np.int64)
        cols = np.array([v for _, v in edges], dtype=np.int64)
        values = 1.0 / (1.0 + np.maximum(degree[rows], degree[cols]))
        weights[rows, cols] = values
        weights[cols, rows] = values
    weights[np.diag_indices(n)] = 1.0 - weights.sum(axis=1)
    return weights


def _unit_square_points(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(n, 2))


def _random_graph(n: int, p: float, rng: np.random.Generator, attempts: int) -> nx.Graph:
    rows, cols = np.triu_indices(n, k=1)
    for _ in range(attempts):
        keep = rng.uniform(size=rows.shape[0]) < p
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(zip(rows[keep].tolist(), cols[keep].tolist()))
        if nx.is_connected(graph):
            _set_positions(graph, _circular_positions(n))
            return graph
    raise GraphError(
        f"graph.type random: still disconnected after {attempts} attempts with p={p:g} and {n} nodes;"
        " raise graph.p or graph.gen_attempts"
    )


def _disk_random_graph(n: int, radius: float, rng: np.random.Generator, attempts: int) -> nx.Graph:
    for _ in range(attempts):
        graph = disk_graph(_unit_square_points(rng, n), radius)
        if nx.is_connected(graph):
            return graph
    raise GraphError(
        f"graph.type disk: still disconnected after {attempts} attempts with radius={radius:g} and {n} nodes;"
        " raise graph.radius or graph.gen_attempts"
    )


def _delaunay_graph(n: int, rng: np.random.Generator, attempts: int) -> nx.Graph:
    if n < 3:
        graph = nx.path_graph(n)
        _set_positions(graph, _unit_square_points(rng, n))
        return graph
    for _ in range(attempts):
        points = _unit_square_points(rng, n)
        try:
            triangulation = Delaunay(points)
        except QhullError:
            continue
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        for simplex in triangulation.simplices:
            a, b, c = (int(v) for v in simplex)
            graph.add_edges_from([(a, b), (b, c), (a, c)])
        if nx.is_connected(graph):
            _set_positions(graph, points)
            return graph
    raise GraphError(f"graph.type delaunay: no valid triangulation of {n} points after {attempts} attempts")


def _fiedler_search(points: np.ndarray, target: float) -> tuple[nx.Graph, float, float]:
    """Disk graph on fixed points whose Fiedler value is closest to target (connected graphs only)."""
    n = points.shape[0]
    dist = _pairwise_distances(points)
    radii = np.unique(dist[np.triu_indices(n, k=1)])
    cache: dict[int, tuple[nx.Graph, float]] = {}

    def at(k: int) -> tuple[nx.Graph, float]:
        if k not in cache:
            upper = radii[k + 1] if k + 1 < radii.shape[0] else radii[k] + 1.0
            radius = 0.5 * (radii[k] + upper)
            graph = disk_graph(points, radius)
            cache[k] = (graph, fiedler_value(graph))
        return cache[k]

    lo, hi = 0, radii.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid)[1] >= target:
            hi = mid
        else:
            lo = mid + 1
    candidates = [k for k in (lo - 1, lo) if 0 <= k < radii.shape[0] and at(k)[1] > 1e-9]
    best = min(candidates, key=lambda k: abs(at(k)[1] - target))
    graph, value = at(best)
    return graph, value, graph.graph["radius"]


def _fiedler_graph(n: int, target: float, rng: np.random.Generator, attempts: int) -> nx.Graph:
    best: nx.Graph | None = None
    best_gap = math.inf
    for _ in range(attempts):
        graph, value, _ = _fiedler_search(_unit_square_points(rng, n), target)
        gap = abs(value - target)
        if gap < best_gap:
            best, best_gap = graph, gap
        if gap <= FIEDLER_REL_TOL * target:
            break
    assert best is not None
    best.graph["fiedler"] = float(fiedler_value(best))
    return best


@dataclass(frozen=True)
class GraphType:
    """One entry of ``GRAPHS``: how ``build(n, rng, attempts, value)`` draws a graph of ``n`` robots (with their
    positions when it knows them) and the one parameter it needs, if any (a key of a graph config mapping)."""

    build: Callable[..., tuple[nx.Graph, np.ndarray | None]]
    parameter: str | None = None
    meaning: str = ""
    example: float | None = None  # a value of the parameter that gives a connected graph of a few robots


def _wheel(n, rng, attempts, value):
    return nx.wheel_graph(n), _wheel_positions(n)


def _cycle(n, rng, attempts, value):
    return nx.cycle_graph(n), _circular_positions(n)


def _complete(n, rng, attempts, value):
    return nx.complete_graph(n), _circular_positions(n)


def _random(n, rng, attempts, p):
    if not 0.0 <= p <= 1.0:
        raise GraphError(f"graph.p must be in [0, 1] for graph.type random (got {p:g})")
    if n == 1:
        return nx.empty_graph(1), _circular_positions(1)
    return _random_graph(n, p, rng, attempts), None


def _disk(n, rng, attempts, radius):
    if radius <= 0.0:
        raise GraphError(f"graph.radius must be > 0 for graph.type disk (got {radius:g})")
    return _disk_random_graph(n, radius, rng, attempts), None


def _delaunay(n, rng, attempts, value):
    return _delaunay_graph(n, rng, attempts), None


def _fiedler(n, rng, attempts, target):
    if target <= 0.0:
        raise GraphError(f"graph.target_fiedler must be > 0 for graph.type fiedler (got {target:g})")
    if n < 2:
        raise GraphError("graph.target_fiedler needs graph.num_nodes >= 2 for graph.type fiedler")
    if target > n * (1.0 + 1e-12):
        raise GraphError(f"graph.target_fiedler {target:g} is above the complete graph's value {n} for {n} nodes;"
                         f" use a target <= {n}")
    return _fiedler_graph(n, target, rng, attempts), None


# The graph types a config can name: a new one is one builder and one entry.
GRAPHS: dict[str, GraphType] = {
    "wheel": GraphType(_wheel),
    "cycle": GraphType(_cycle),
    "complete": GraphType(_complete),
    "random": GraphType(_random, "p", "edge probability in [0, 1]", 0.5),
    "disk": GraphType(_disk, "radius", "link distance", 0.6),
    "delaunay": GraphType(_delaunay),
    "fiedler": GraphType(_fiedler, "target_fiedler", "algebraic connectivity to reach", 0.5),
}
GRAPH_TYPES = tuple(GRAPHS)


def make_graph(kind: str, num_nodes: int, seed: int = 0, gen_attempts: int = 100, **parameters) -> nx.Graph:
    """Build a seeded communication graph of ``num_nodes`` robots (nodes 0..N-1, "pos" attribute).

    random: Erdos-Renyi G(N, p), redrawn until connected; disk: uniform points in the unit square,
    edge when distance <= radius, redrawn until connected; delaunay: Delaunay triangulation of uniform
    points; fiedler: disk graph whose radius is searched so that the algebraic connectivity is the
    closest to target_fiedler (within 5% where the sampled points allow it; new points are drawn, up
    to gen_attempts times, only when a draw misses that tolerance). ``parameters`` holds the type's one
    parameter (p, radius, target_fiedler; the others are ignored). graph.graph records "type" and, where
    relevant, "radius" and "fiedler".
    """
    if kind not in GRAPHS:
        raise GraphError(f"graph.type {kind!r} is not one of: {', '.join(GRAPH_TYPES)}")
    n = _check_positive_int("graph.num_nodes", num_nodes)
    attempts = _check_positive_int("graph.gen_attempts", gen_attempts)
    rng = np.random.default_rng(seed)
    spec = GRAPHS[kind]
    value = None
    if spec.parameter is not None:
        value = _check_number(f"graph.{spec.parameter}", parameters.get(spec.parameter), kind)
    graph, positions = spec.build(n, rng, attempts, value)
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    if positions is not None:
        _set_positions(graph, positions)
    graph.graph["type"] = kind
    return graph


def adjacency(graph: nx.Graph):
    """(N, N) boolean adjacency of a graph on nodes 0..N-1, as a torch tensor."""
    import torch

    n = graph.number_of_nodes()
    adj = torch.zeros(n, n, dtype=torch.bool)
    for i, j in graph.edges():
        adj[i, j] = adj[j, i] = True
    return adj


def graph_from_config(spec: dict, seed: int) -> nx.Graph:
    """The graph a config mapping describes (``num_nodes``, ``type``, its parameter, ``gen_attempts``)."""
    return make_graph(spec["type"], spec["num_nodes"], seed=seed, p=spec.get("p"), radius=spec.get("radius"),
                      target_fiedler=spec.get("target_fiedler"), gen_attempts=spec.get("gen_attempts", 100))
