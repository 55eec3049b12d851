"""Push-sum over one-way links (SGP, Push-DIGing): a per-node reference, the optimum over directed graphs with
and without lost messages, the push-sum weights' invariants, out-neighbour rules and refused settings."""

import networkx as nx
import pytest
import torch

from foundation.counters import code, uniform
from optimizers import SGP, ConfigError, PushDIGing, validate_optimizer_config
from optimizers.comm.link_models import make_link_model
from optimizers.comm.network import InProcessNetwork
from optimizers.push_sum import out_edges
from tests.helpers.convex import DT, N, Reference, least_squares_problem, run_stack

LOSSY = {"independent": {"model": "independent", "drop_prob": 0.3, "seed": 0},
         "bursty": {"model": "bursty", "seed": 0, "bursty": {"enter_bad": 0.1, "leave_bad": 0.3,
                                                              "loss_good": 0.1, "loss_bad": 0.9}}}


def run_least_squares(cls, cfg, rounds, links=None, graph=None):
    problem, optimum, g = least_squares_problem()
    net = InProcessNetwork(graph if graph is not None else g, dtype=DT)
    if links is not None:
        net.set_link_model(make_link_model(links))
    opt = cls(problem, net, {"outer_iterations": rounds, **cfg})
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            opt.round(k)
    error = float(((problem.theta - optimum).norm(dim=1) / optimum.norm()).max())
    return error, opt, net


def test_out_neighbour_rules():
    g = nx.cycle_graph(6)
    g.add_edge(0, 3)
    ring = out_edges(g, 6, "ring", 0, 1)
    assert ring.sum() == 6 and all(ring[i, (i + 1) % 6] for i in range(6))
    every = out_edges(g, 6, "all", 0, 1)
    assert torch.equal(every, torch.as_tensor(nx.to_numpy_array(g, nodelist=range(6)) > 0))
    rounds = [out_edges(g, 6, 1, 4, k) for k in range(1, 41)]
    for pushes in rounds:
        assert (pushes.sum(dim=1) == 1).all() and not (pushes & ~every).any()
    assert len({tuple(p.flatten().tolist()) for p in rounds}) > 10  # drawn afresh each round
    assert torch.equal(out_edges(g, 6, 1, 4, 7), rounds[6])  # a function of (seed, round) only
    assert torch.equal(out_edges(g, 6, 5, 4, 3), every)  # fewer neighbours than k: all of them
    with pytest.raises(ValueError, match="no edge 1 - 2"):
        out_edges(nx.Graph([(0, 1), (2, 3), (3, 4), (4, 5), (5, 0)]), 6, "ring", 0, 1)


@pytest.mark.parametrize("rule,drop", [("ring", 0.0), ("ring", 0.3), (1, 0.3)])
def test_sgp_matches_a_per_node_loop(rule, drop):
    """z_i <- z_i - lr grad f_i(z_i / w_i); each robot keeps 1/(d+1) of (z, w) and pushes the same share to each
    out-neighbour; with losses, running sums per edge and the receiver adds what it had not heard yet."""
    g = nx.cycle_graph(N)
    lr, decay, rounds = 0.05, 0.1, 6
    problem_theta, net = run_stack(SGP, {"lr": lr, "lr_decay": decay, "out_neighbors": rule, "direction_seed": 2},
                                   rounds, links=(drop, 0) if drop else None, on_graph=g)
    ref = Reference()
    ref.graph = g
    n = ref.vec(0).numel()
    z = [ref.vec(i).clone() for i in range(N)]
    w = [torch.ones(1, dtype=DT) for _ in range(N)]
    sent = {(i, j): torch.zeros(n + 1, dtype=DT) for i in range(N) for j in g.neighbors(i)}
    heard = {(i, j): torch.zeros(n + 1, dtype=DT) for i in range(N) for j in g.neighbors(i)}
    lost_any = False
    for k in range(1, rounds + 1):
        grads = ref.grads()
        step = lr / (1 + decay * k)
        rows = [torch.cat([z[i] - step * grads[i], w[i]]) for i in range(N)]
        pushes = out_edges(g, N, rule, 2, k)
        shares = [rows[i] / (1 + int(pushes[i].sum())) for i in range(N)]
        new = [shares[i].clone() for i in range(N)]
        for (i, j) in sent:  # i -> j
            if pushes[i, j]:
                sent[i, j] = sent[i, j] + shares[i]
            lost = float(uniform(0, k, torch.tensor([i]), torch.tensor([j]), code("sgp"))[0]) < drop
            lost_any |= lost
            if not lost:
                new[j] = new[j] + (sent[i, j] - heard[i, j])
                heard[i, j] = sent[i, j].clone()
        z = [r[:n] for r in new]
        w = [r[n:] for r in new]
        for i in range(N):
            ref.set_vec(i, z[i] / w[i])
            z[i] = ref.vec(i) * w[i]
    assert lost_any == (drop > 0)
    assert torch.allclose(problem_theta, ref.stacked(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("rule,links", [("ring", None), ("ring", "independent"), (1, None), (1, "independent"),
                                        (1, "bursty"), ("all", "bursty")])
def test_push_diging_reaches_the_optimum_over_directed_graphs(rule, links):
    """(On the directed ring, where every robot hears one robot only, bursts of 90% loss or 50% independent
    loss make it diverge at steps 0.005 to 0.02: the README says so.)"""
    error, opt, _ = run_least_squares(PushDIGing, {"alpha": 0.02, "out_neighbors": rule}, 1500,
                                      LOSSY.get(links))
    assert error < 1e-6


@pytest.mark.parametrize("links", [None, "independent"])
def test_sgp_approaches_the_optimum_as_its_step_decays_and_keeps_the_weights(links):
    errors = []
    for rounds in (300, 3000):  # one random out-neighbour per round: in-degrees differ, so the weights move
        error, opt, net = run_least_squares(SGP, {"lr": 0.1, "lr_decay": 0.05, "out_neighbors": 1}, rounds,
                                            LOSSY.get(links))
        errors.append(error)
    assert errors[1] < errors[0] / 5 and errors[1] < 0.06
    weights = opt.weights.flatten()
    assert (weights > 0).all()
    if links is None:
        assert abs(float(weights.sum()) - 5) < 1e-12
        assert not torch.allclose(weights, torch.ones_like(weights), atol=1e-3)
    else:  # what the robots hold plus what is in flight (sent, not yet heard) is the team's N
        sent, _ = net.edge_rows("sgp_sent", torch.zeros(5, 5, dtype=torch.float64))
        heard, _ = net.edge_rows("sgp_heard", torch.zeros(5, 5, dtype=torch.float64))
        in_flight = float((sent - heard)[:, -1].sum())
        assert in_flight > 0 and abs(float(weights.sum()) + in_flight - 5) < 1e-9


def test_sgp_sends_only_to_out_neighbours():
    _, _, net = run_least_squares(SGP, {"lr": 0.01, "out_neighbors": "ring"}, 4)
    row = 5 * 8  # four weights and the push-sum weight, float64
    assert net.bytes_sent.tolist() == [4 * row] * 5
    _, _, every = run_least_squares(SGP, {"lr": 0.01}, 4)
    assert every.bytes_sent.tolist() == [4 * 2 * row] * 5


@pytest.mark.parametrize("alg,bad,message", [
    ("sgp", {"out_neighbors": 0}, "p.optimizer_config.out_neighbors: 0 is not allowed; allowed: 'all', 'ring'"),
    ("sgp", {"out_neighbors": "star"}, "p.optimizer_config.out_neighbors: 'star' is not allowed"),
    ("sgp", {"direction_seed": -1}, "p.optimizer_config.direction_seed: must be in [0, 4294967295], got -1"),
    ("sgp", {"lr": -1.0}, "p.optimizer_config.lr: must be greater than 0"),
    ("push_diging", {"alpha": float("nan")}, "p.optimizer_config.alpha: expected a finite number, got nan"),
])
def test_push_sum_settings_are_refused_with_one_line(alg, bad, message):
    base = {"sgp": {"lr": 0.1}, "push_diging": {"alpha": 0.1}}[alg]
    with pytest.raises(ConfigError) as refused:
        validate_optimizer_config("p.optimizer_config", {"alg_name": alg, "outer_iterations": 5, **base, **bad})
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_ring_the_graph_lacks_is_refused_before_the_first_round():
    problem, _, _ = least_squares_problem()
    with pytest.raises(ValueError, match="no edge 1 - 2"):
        SGP(problem, InProcessNetwork(nx.star_graph(4), dtype=DT),
            {"outer_iterations": 3, "lr": 0.1, "out_neighbors": "ring"}).setup()
