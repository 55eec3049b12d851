import json

import networkx as nx
import numpy as np
import pytest

from foundation.graph_files import graph_from_json, graph_to_json
from optimizers.comm.graphs import (
    GRAPH_TYPES,
    GraphError,
    disk_graph,
    fiedler_value,
    make_graph,
    metropolis_weights,
)

GRAPH_ARGS = {"p": 0.4, "radius": 0.45, "target_fiedler": 1.0}


def loop_metropolis(graph):
    n = graph.number_of_nodes()
    w = np.zeros((n, n))
    for i in range(n):
        for j in graph.neighbors(i):
            if i != j:
                w[i, j] = 1.0 / (1.0 + max(graph.degree(i), graph.degree(j)))
    for i in range(n):
        w[i, i] = 1.0 - sum(w[i, j] for j in range(n) if j != i)
    return w


@pytest.mark.parametrize(
    "graph",
    [
        nx.path_graph(4),
        nx.star_graph(5),
        nx.wheel_graph(7),
        nx.complete_graph(3),
        make_graph("random", 12, seed=3, p=0.3),
    ],
)
def test_metropolis_matches_loop_and_is_doubly_stochastic(graph):
    w = metropolis_weights(graph)
    assert w.dtype == np.float64
    assert w.shape == (graph.number_of_nodes(),) * 2
    np.testing.assert_allclose(w, w.T, atol=0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w, loop_metropolis(graph), atol=1e-15)
    assert (w >= 0).all()


def test_metropolis_known_values_on_path():
    w = metropolis_weights(nx.path_graph(3))
    expected = np.array([[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(w, expected, atol=1e-15)


@pytest.mark.parametrize("kind", GRAPH_TYPES)
def test_every_type_is_seeded_connected_and_positioned(kind):
    a = make_graph(kind, 15, seed=7, **GRAPH_ARGS)
    b = make_graph(kind, 15, seed=7, **GRAPH_ARGS)
    assert sorted(a.nodes) == list(range(15))
    assert nx.is_connected(a)
    assert nx.utils.graphs_equal(a, b)
    assert sorted(a.edges) == sorted(b.edges)
    assert all(len(a.nodes[i]["pos"]) == 2 for i in a.nodes)
    assert nx.number_of_selfloops(a) == 0


@pytest.mark.parametrize("kind", ["random", "disk", "delaunay", "fiedler"])
def test_random_types_change_with_seed(kind):
    graphs = [make_graph(kind, 15, seed=s, **GRAPH_ARGS) for s in range(4)]
    edge_sets = {tuple(sorted(g.edges)) for g in graphs}
    assert len(edge_sets) > 1


def test_fixed_types_have_expected_structure():
    wheel = make_graph("wheel", 8)
    assert wheel.degree(0) == 7
    assert wheel.nodes[0]["pos"] == (0.0, 0.0)
    assert all(wheel.degree(i) == 3 for i in range(1, 8))
    cycle = make_graph("cycle", 8)
    assert cycle.number_of_edges() == 8 and all(d == 2 for _, d in cycle.degree)
    assert make_graph("complete", 8).number_of_edges() == 28
    assert abs(fiedler_value(make_graph("complete", 8)) - 8.0) < 1e-9


def test_small_graphs():
    for kind in GRAPH_TYPES[:-1]:
        g = make_graph(kind, 1, **GRAPH_ARGS)
        assert list(g.nodes) == [0] and g.number_of_edges() == 0
        np.testing.assert_allclose(metropolis_weights(g), [[1.0]])
        g2 = make_graph(kind, 2, p=1.0, radius=2.0)
        assert list(g2.edges) == [(0, 1)]
    assert len(make_graph("delaunay", 3, seed=1).edges) == 3


def test_random_disconnected_raises_clear_error():
    with pytest.raises(GraphError) as info:
        make_graph("random", 10, seed=0, p=0.01, gen_attempts=5)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "graph.type random: still disconnected after 5 attempts with p=0.01 and 10 nodes;"
        " raise graph.p or graph.gen_attempts"
    )


def test_disk_disconnected_raises():
    with pytest.raises(GraphError, match=r"graph.type disk: still disconnected after 3 attempts"):
        make_graph("disk", 30, radius=0.01, gen_attempts=3)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"kind": "random", "num_nodes": 5}, "graph.p"),
        ({"kind": "random", "num_nodes": 5, "p": 1.5}, "graph.p"),
        ({"kind": "disk", "num_nodes": 5}, "graph.radius"),
        ({"kind": "disk", "num_nodes": 5, "radius": -1.0}, "graph.radius"),
        ({"kind": "fiedler", "num_nodes": 5}, "graph.target_fiedler"),
        ({"kind": "fiedler", "num_nodes": 5, "target_fiedler": 6.0}, "graph.target_fiedler"),
        ({"kind": "cycle", "num_nodes": 0}, "graph.num_nodes"),
        ({"kind": "cycle", "num_nodes": 4, "gen_attempts": 0}, "graph.gen_attempts"),
        ({"kind": "ring", "num_nodes": 4}, "graph.type"),
    ],
)
def test_argument_validation(kwargs, key):
    with pytest.raises(GraphError) as info:
        make_graph(**kwargs)
    message = str(info.value)
    assert key in message and "\n" not in message
    if key == "graph.type":
        assert all(kind in message for kind in GRAPH_TYPES)


def test_graph_error_is_value_error():
    assert issubclass(GraphError, ValueError)


@pytest.mark.parametrize("n, target, seed", [(20, 1.0, 0), (20, 1.0, 5), (12, 3.0, 1), (30, 0.5, 2)])
def test_fiedler_hits_target(n, target, seed):
    g = make_graph("fiedler", n, seed=seed, target_fiedler=target)
    assert nx.is_connected(g)
    value = fiedler_value(g)
    assert abs(value - target) <= 0.05 * target
    assert g.graph["fiedler"] == pytest.approx(value)
    rebuilt = disk_graph(np.array([g.nodes[i]["pos"] for i in range(n)]), g.graph["radius"])
    assert sorted(rebuilt.edges) == sorted(g.edges)


def test_fiedler_value_known_graphs():
    assert fiedler_value(nx.complete_graph(6)) == pytest.approx(6.0)
    n = 10
    assert fiedler_value(nx.cycle_graph(n)) == pytest.approx(2 - 2 * np.cos(2 * np.pi / n))
    assert fiedler_value(nx.path_graph(n)) == pytest.approx(2 - 2 * np.cos(np.pi / n))
    assert fiedler_value(nx.empty_graph(4)) == 0.0
    two_parts = nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(3))
    assert fiedler_value(two_parts) == 0.0


def test_disk_graph_matches_brute_force():
    rng = np.random.default_rng(11)
    positions = rng.uniform(size=(40, 2))
    radius = 0.25
    g = disk_graph(positions, radius)
    expected = set()
    for i in range(40):
        for j in range(i + 1, 40):
            if np.linalg.norm(positions[i] - positions[j]) <= radius:
                expected.add((i, j))
    assert {tuple(sorted(e)) for e in g.edges} == expected
    assert len(expected) > 20
    assert g.nodes[3]["pos"] == tuple(positions[3])


def test_disk_graph_edge_at_exact_radius():
    g = disk_graph(np.array([[0.0, 0.0], [0.5, 0.0], [1.5, 0.0]]), 0.5)
    assert sorted(g.edges) == [(0, 1)]


@pytest.mark.parametrize("kind", GRAPH_TYPES)
def test_json_round_trip(kind):
    g = make_graph(kind, 9, seed=2, **GRAPH_ARGS)
    data = graph_to_json(g)
    text = json.dumps(data)
    back = graph_from_json(json.loads(text))
    assert sorted(back.nodes) == list(range(9))
    assert sorted(back.edges) == sorted(g.edges)
    assert back.graph == g.graph
    for i in range(9):
        assert back.nodes[i]["pos"] == g.nodes[i]["pos"]
    np.testing.assert_array_equal(metropolis_weights(back), metropolis_weights(g))
