"""Communication graphs as JSON files (networkx node-link data with only JSON types): what a run writes as
``graph.json`` and what plots and notebooks read back."""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np


def _to_builtin(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (str, int)) else k: _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_builtin(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def graph_to_json(graph: nx.Graph) -> dict:
    """networkx node-link dict ("nodes"/"edges") with only JSON types (positions as lists)."""
    data = nx.node_link_data(graph, edges="edges")
    return _to_builtin(data)


def graph_from_json(d: dict) -> nx.Graph:
    """Inverse of graph_to_json ("pos" back to tuples); also reads the older "links" key."""
    edges = "edges" if "edges" in d else "links"
    graph = nx.node_link_graph(d, edges=edges)
    for _, attrs in graph.nodes(data=True):
        if "pos" in attrs and isinstance(attrs["pos"], list):
            attrs["pos"] = tuple(float(v) for v in attrs["pos"])
    return graph
