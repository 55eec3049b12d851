"""Asynchronous robots and late messages (``experiment.asynchrony``): asleep robots are frozen, late messages
follow a per-edge reference, loss-robust methods still reach the optimum, runs resume bit for bit, bad
settings are refused."""

import networkx as nx
import pytest
import torch

from foundation.counters import code, uniform
from optimizers import DSGD, DSGT, PushDIGing, RelaxedADMM
from optimizers.comm.asynchrony import _DELAY
from optimizers.comm.links import configure_asynchrony
from optimizers.comm.network import InProcessNetwork
from tests.helpers.convex import DT, N, Reference, least_squares_problem, make_problem


def run(cls, cfg, rounds, asynchrony, problem=None, graph=None, after_round=None):
    if problem is None:
        problem, _, graph = least_squares_problem()
    net = InProcessNetwork(graph, dtype=DT)
    hook = configure_asynchrony(net, {"asynchrony": asynchrony})
    opt = cls(problem, net, {"outer_iterations": rounds, **cfg})
    opt.asynchrony = hook
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            hook(k)
            before = {name: t.clone() for name, t in
                      {"theta": problem.theta, "bytes": net.bytes_sent, **vars_rows(opt)}.items()}
            hook.run_round(opt, k)
            if after_round is not None:
                after_round(k, hook.awake, before, opt, net)
    return problem, opt, net


def vars_rows(opt):
    from optimizers.comm.asynchrony import robot_rows
    return robot_rows(opt)


def test_asleep_robots_keep_every_row_and_send_nothing():
    seen_asleep = []

    def check(k, awake, before, opt, net):
        now = {"theta": opt.problem.theta, "bytes": net.bytes_sent, **vars_rows(opt)}
        asleep = (~awake).nonzero().flatten()
        seen_asleep.append(len(asleep))
        for name in ("theta", "bytes", "tracker", "grads"):
            assert torch.equal(now[name][asleep], before[name][asleep]), (k, name)
            assert not awake.any() or not torch.equal(now[name][awake], before[name][awake]), (k, name)

    run(DSGT, {"alpha": 0.05}, 12, {"activation": 0.5, "seed": 3}, after_round=check)
    assert 0 < sum(seen_asleep) < 12 * 5


def test_late_messages_follow_a_per_edge_reference():
    """DSGD with every robot awake and delays of 0..2 rounds: each robot mixes the newest row it has received
    from each neighbour (by the round it was sent), its own row before any arrived."""
    graph = nx.cycle_graph(N)
    problem = make_problem()
    seed, depth = 4, 3
    theta_stack, _, _ = run(DSGD, {"alpha0": 0.05, "mu": 0.0}, 6, {"max_delay": depth - 1, "seed": seed},
                            problem=problem, graph=graph)
    ref = Reference()
    ref.graph = graph
    history = {}  # round -> every robot's row as sent
    newest = {(j, i): (-1, None) for i in range(N) for j in graph.neighbors(i)}
    for t in range(1, 7):
        history[t] = [ref.vec(i).clone() for i in range(N)]
        for (j, i) in newest:
            for s in range(max(1, t - depth + 1), t + 1):
                d = int(float(uniform(seed, _DELAY, s, torch.tensor([j]), torch.tensor([i]), code("theta"))[0]) * depth)
                if s + d <= t and s > newest[j, i][0]:
                    newest[j, i] = (s, history[s][j])
        mixed = []
        for i in range(N):
            x = history[t][i].clone()
            for j in graph.neighbors(i):
                held = newest[j, i][1] if newest[j, i][1] is not None else history[t][i]
                x = x + ref.weight(i, j) * (held - history[t][i])
            mixed.append(x)
        for i in range(N):
            ref.set_vec(i, mixed[i])
        grads = ref.grads()
        for i in range(N):
            ref.set_vec(i, ref.vec(i) - 0.05 * grads[i])
    assert torch.allclose(theta_stack.theta, ref.stacked(), atol=1e-12, rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("cls,cfg,rounds", [
    (RelaxedADMM, {"rho": 1.0, "primal_iterations": 30, "primal_optimizer": "sgd", "primal_lr_start": 0.05,
                   "lr_decay_type": "constant"}, 300),
    (PushDIGing, {"alpha": 0.02}, 2000)])
def test_loss_robust_methods_reach_the_optimum_with_asleep_robots_and_late_messages(cls, cfg, rounds):
    problem, optimum, graph = least_squares_problem()
    problem, opt, _ = run(cls, cfg, rounds, {"activation": 0.7, "max_delay": 3, "seed": 1}, problem, graph)
    error = float(((problem.theta - optimum).norm(dim=1) / optimum.norm()).max())
    assert error < 1e-5


def test_every_robot_awake_and_nothing_late_is_the_synchronous_run():
    net = InProcessNetwork(nx.cycle_graph(4), dtype=DT)
    assert configure_asynchrony(net, {"asynchrony": {"activation": 1.0, "max_delay": 0}}) is None
    assert configure_asynchrony(net, {}) is None and net.link_model is None


@pytest.mark.parametrize("bad,message", [
    ({"activation": 0.0}, "experiment.asynchrony.activation: must be in (0, 1], got 0.0"),
    ({"activation": 1.5}, "experiment.asynchrony.activation: must be in (0, 1], got 1.5"),
    ({"max_delay": -1}, "experiment.asynchrony.max_delay: must be in [0, 1000], got -1"),
    ({"delay": 2}, "experiment.asynchrony.delay"),
])
def test_bad_asynchrony_settings_are_refused_with_one_line(tmp_path, bad, message, capsys):
    from experiments.run import main
    from tests.helpers.runs import long_tiny, write_config

    cfg = long_tiny(rounds=4)
    cfg["experiment"]["asynchrony"] = bad
    assert main([str(write_config(tmp_path, cfg)), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
