"""Faulty and hostile robots and robust aggregation: every fault kind's effect on what a receiver combines, and
every rule, against plain per-robot references; non-finite rows and robots isolated; bad configs refused; fault-free
runs unchanged to the bit."""

from __future__ import annotations

import copy
import csv
import math

import networkx as nx
import pytest
import torch

from experiments.config import validate_config
from foundation.schema import ConfigError, validate_mapping
from optimizers.comm.aggregation import AGGREGATION_SCHEMA
from optimizers.comm.faults import FAULT_KINDS, Faults, gaussian, validate_faults
from optimizers.comm.link_models import IndependentLoss
from optimizers.comm.network import InProcessNetwork
from tests.helpers.runs import TINY, run, write_config

DT = torch.float64
N, WIDTH = 6, 7


def team_graph() -> nx.Graph:
    """Six robots: a cycle with two chords (degrees 2 to 4)."""
    g = nx.cycle_graph(N)
    g.add_edges_from([(0, 3), (1, 4)])
    return g


def rows(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=DT)


def network_with(faults: list[dict] | None = None, aggregation: dict | None = None, round_index: int = 5):
    net = InProcessNetwork(team_graph(), dtype=DT)
    if faults:
        hook = Faults(validate_faults("faults", faults), N)
        hook(round_index)
        net.set_faults(hook)
    net.set_aggregation(validate_mapping("aggregation", AGGREGATION_SCHEMA, aggregation or {}))
    return net


def weights(graph: nx.Graph) -> dict[tuple[int, int], float]:
    deg = dict(graph.degree())
    return {(i, j): 1.0 / (1 + max(deg[i], deg[j])) for i, j in graph.edges()} | \
        {(j, i): 1.0 / (1 + max(deg[i], deg[j])) for i, j in graph.edges()}


def honest_stats(x, graph, receiver, faulty):
    honest = [x[receiver]] + [x[j] for j in sorted(graph.neighbors(receiver)) if j not in faulty]
    stacked = torch.stack(honest)
    return stacked.mean(0), stacked.std(0, unbiased=False), torch.stack([h.norm() for h in honest]).mean()


def sent_by(kind: dict, x, graph, sender, receiver, faulty, exchange, channel="x", mix=True):
    """What ``sender`` (faulty, ``kind``) sends ``receiver``, written out plainly."""
    name = kind["kind"]
    row = x[sender]
    if name == "nan":
        return torch.full_like(row, math.nan)
    if name == "noise":
        noise = gaussian(kind.get("seed", 0), exchange, torch.tensor([sender]), torch.tensor([receiver]), channel,
                         WIDTH, DT, "cpu")[0]
        return row + noise * kind["scale"] * row.norm() / math.sqrt(WIDTH)
    if name == "sign_flip":
        return -kind["scale"] * row
    if name in ("stale",):
        return row  # the first message after it went stale is its row then
    mean, std, norm = honest_stats(x, graph, receiver, faulty)
    if name == "random":
        noise = gaussian(kind.get("seed", 0), exchange, torch.tensor([sender]), torch.tensor([receiver]), channel,
                         WIDTH, DT, "cpu")[0]
        return noise / noise.norm() * norm
    if name == "alie":
        return mean + kind["z"] * std
    if name == "dissensus":
        w = weights(graph) if mix else {e: 1.0 for e in weights(graph)}
        honest = [j for j in graph.neighbors(receiver) if j not in faulty]
        bad = [j for j in graph.neighbors(receiver) if j in faulty]
        gossip = sum(w[receiver, j] * (x[j] - x[receiver]) for j in honest)
        return x[receiver] - kind["epsilon"] * gossip / sum(w[receiver, b] for b in bad)
    raise AssertionError(name)


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS])
def test_every_fault_changes_what_the_receivers_combine_as_the_plain_reference_says(kind):
    x, graph = rows(), team_graph()
    entry = {"robots": [1], "kind": kind, "from_round": 2, **{k: spec[1] for k, spec in FAULT_KINDS[kind].schema.items()}}
    net = network_with([entry])
    mixed, summed = net.mix(x, "x"), net.neighbor_sum(x, "y")
    w = weights(graph)
    for i in range(N):
        received = {}
        for j in sorted(graph.neighbors(i)):
            if j != 1:
                received[j] = x[j]
            elif kind not in ("crash", "nan"):  # a crashed robot sends nothing, NaN is dropped: i holds its own row
                received[j] = sent_by(entry, x, graph, 1, i, {1}, net.exchanges - 1)
            else:
                received[j] = x[i]
        expected_mix = x[i] + sum(w[i, j] * (received[j] - x[i]) for j in received)
        received_sum = dict(received)
        if 1 in received and kind in ("random", "noise", "dissensus"):
            received_sum[1] = sent_by(entry, x, graph, 1, i, {1}, net.exchanges, channel="y", mix=False)
        expected_sum = sum(received_sum.values())
        torch.testing.assert_close(mixed[i], expected_mix, rtol=1e-12, atol=1e-12, msg=f"{kind}: mix at robot {i}")
        torch.testing.assert_close(summed[i], expected_sum, rtol=1e-12, atol=1e-12, msg=f"{kind}: sum at robot {i}")
    if kind == "nan":  # counted per receiver: robot 1's neighbours dropped one message in each exchange
        assert net.tallies.dropped.tolist() == [2.0 if i in graph.neighbors(1) else 0.0 for i in range(N)]


@pytest.mark.parametrize("kind", ["nan", "crash"])
@pytest.mark.parametrize("lossy", [False, True])
def test_a_robot_that_breaks_leaves_its_last_row_held_only_where_links_lose_messages(kind, lossy):
    """Robot 1 sends finite rows, then (from round 7) NaN or nothing: a lost message to its neighbours. With lossy
    links (here a loss rate of 0, so every other message arrives) they hold its last row; on exact links rows are
    not kept, and each uses its own row in robot 1's place."""
    graph, w = team_graph(), weights(team_graph())
    hook = Faults(validate_faults("faults", [{"robots": [1], "kind": kind, "from_round": 7}]), N)
    net = InProcessNetwork(graph, dtype=DT)
    net.set_faults(hook)
    if lossy:
        net.set_link_model(IndependentLoss(seed=0, drop_prob=0.0))
    before, after = rows(0), rows(1)
    hook(5)
    net.mix(before, "x")
    hook(7)
    mixed = net.mix(after, "x")
    for i in graph.neighbors(1):
        from_1 = before[1] if lossy else after[i]
        expected = after[i] + sum(w[i, j] * ((from_1 if j == 1 else after[j]) - after[i]) for j in graph.neighbors(i))
        torch.testing.assert_close(mixed[i], expected, rtol=1e-12, atol=1e-12, msg=f"{kind}: robot {i}")


def test_a_fault_waits_for_its_round_and_a_stale_robot_repeats_its_row():
    x, graph = rows(), team_graph()
    plain = InProcessNetwork(graph, dtype=DT).mix(x, "x")
    early = network_with([{"robots": [1], "kind": "sign_flip", "from_round": 9}], round_index=5)
    assert torch.equal(early.mix(x, "x"), plain)  # before from_round: the exact, fault-free product
    stale = network_with([{"robots": [1], "kind": "stale", "from_round": 2}])
    first = stale.mix(x, "x")
    moved = x.clone()
    moved[1] += 1.0  # robot 1's model moves on; it keeps sending the old one
    again = stale.mix(moved, "x")
    w = weights(graph)
    for i in graph.neighbors(1):
        torch.testing.assert_close(again[i] - first[i], moved[i] - x[i] + 0 * x[i]
                                   - sum(w[i, j] * (moved[i] - x[i]) for j in graph.neighbors(i)), rtol=0, atol=1e-12)


def reference_rule(rule: dict, x: torch.Tensor, graph: nx.Graph, mix: bool) -> torch.Tensor:
    """The robust rules robot by robot, coordinate by coordinate."""
    w = weights(graph) if mix else {e: 1.0 for e in weights(graph)}
    out = torch.zeros_like(x)
    for i in range(N):
        hood = sorted(graph.neighbors(i))
        if rule["rule"] == "clip":
            lengths = sorted(((x[j] - x[i]).norm().item() for j in hood), reverse=True)
            tau = rule["radius"] if rule.get("radius") else lengths[rule.get("assumed_byzantine", 1)]
            steps = [w[i, j] * (x[j] - x[i]) * min(1.0, tau / max((x[j] - x[i]).norm().item(), 1e-30)) for j in hood]
            out[i] = (x[i] if mix else len(hood) * x[i]) + sum(steps)
            continue
        values = ([x[i]] if mix else []) + [x[j] for j in hood]
        for c in range(WIDTH):
            column = sorted(v[c].item() for v in values)
            if rule["rule"] == "trimmed_mean":
                t = rule["trim"]
                centre = sum(column[t:len(column) - t]) / (len(column) - 2 * t)
            else:
                m = len(column)
                centre = (column[(m - 1) // 2] + column[m // 2]) / 2
            out[i, c] = centre if mix else centre * len(hood)
    return out


@pytest.mark.parametrize("rule", [{"rule": "clip"}, {"rule": "clip", "radius": 0.5},
                                  {"rule": "clip", "assumed_byzantine": 0}, {"rule": "trimmed_mean", "trim": 0},
                                  {"rule": "median"}])
def test_every_robust_rule_equals_its_plain_reference(rule):
    x, graph = rows(3), team_graph()
    net = network_with(aggregation=rule)
    torch.testing.assert_close(net.mix(x, "x"), reference_rule(rule, x, graph, mix=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.neighbor_sum(x, "y"), reference_rule(rule, x, graph, mix=False), rtol=1e-12,
                               atol=1e-12)


def test_trimming_one_or_two_values_equals_the_plain_reference_on_sets_of_every_size():
    """Trimming one value at each end takes the sum less the extremes, two a sort: both against the reference,
    on the mix's sets of 3 to 5 values and on the complete graph's neighbour sums of 5."""
    x, graph = rows(4), team_graph()
    one = {"rule": "trimmed_mean", "trim": 1}
    torch.testing.assert_close(network_with(aggregation=one).mix(x, "x"), reference_rule(one, x, graph, mix=True),
                               rtol=1e-12, atol=1e-12)
    complete = nx.complete_graph(N)
    for rule in (one, {"rule": "trimmed_mean", "trim": 2}, {"rule": "median"}):
        net = InProcessNetwork(complete, dtype=DT)
        net.set_aggregation(validate_mapping("aggregation", AGGREGATION_SCHEMA, rule))
        torch.testing.assert_close(net.neighbor_sum(x, "y"), reference_rule(rule, x, complete, mix=False),
                                   rtol=1e-12, atol=1e-12, msg=str(rule))


def test_trimmed_mean_and_clip_keep_a_sign_flipped_robot_out():
    x = torch.ones(N, WIDTH, dtype=DT)  # the honest robots agree: the robust rules keep them where they are
    for rule in ({"rule": "clip"}, {"rule": "median"}, {"rule": "trimmed_mean", "trim": 1}):
        net = network_with([{"robots": [1], "kind": "sign_flip", "scale": 10.0}], aggregation=rule)
        mixed = net.mix(x, "x")
        honest = [i for i in range(N) if i != 1]
        torch.testing.assert_close(mixed[honest], x[honest], rtol=0, atol=1e-12, msg=rule["rule"])
    plain = network_with([{"robots": [1], "kind": "sign_flip", "scale": 10.0}]).mix(x, "x")
    assert (plain - 1.0).abs().max() > 2.0  # plain averaging is pulled far off


def test_a_mean_rule_and_no_faults_take_the_exact_product():
    x, graph = rows(), team_graph()
    assert torch.equal(network_with(aggregation={"rule": "mean"}).mix(x, "x"), InProcessNetwork(graph, dtype=DT).mix(x))


# ------------------------------------------------------------------------------------------------ runs
def short_cfg(rounds: int = 8, **experiment) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=False, **experiment)
    for pc in cfg["problem_configs"].values():
        pc["optimizer_config"]["outer_iterations"] = rounds
        pc["optimizer_config"]["profile"] = False
    return cfg


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fault_free_runs_with_the_mean_rule_are_unchanged_to_the_bit(tmp_path):
    from tests.helpers.runs import same_results

    plain = tmp_path / "plain"
    assert run(write_config(tmp_path, short_cfg(), "plain.yaml"), plain) == 0
    explicit = tmp_path / "explicit"
    assert run(write_config(tmp_path, short_cfg(faults=[], aggregation={"rule": "mean"}), "explicit.yaml"),
               explicit) == 0
    same_results(plain, explicit, ["dinno", "dsgd", "dsgt"])


def test_a_nan_robot_is_isolated_and_the_team_trains_on(tmp_path):
    cfg = short_cfg(faults=[{"robots": [2], "kind": "nan", "from_round": 3}])
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 0
    for name in ("dinno", "dsgd", "dsgt"):
        final = torch.load(out / f"{name}_final_params.pt", weights_only=True)
        assert torch.isfinite(final).all(), name  # no honest robot (nor robot 2 itself) turned non-finite
        history = torch.load(out / f"{name}_results.pt", weights_only=True)
        dropped = torch.as_tensor(history["messages_dropped"][-1])
        assert dropped[[1, 3]].min() > 0 and dropped[[0, 2]].max() == 0  # robot 2's neighbours on the 4-cycle
    row = {r["problem_name"]: r for r in read_csv(out / "summary.csv")}["dsgd"]
    assert float(row["honest_top1_accuracy_mean"]) > 0.0 and "honest_top1_accuracy_min" in row


def test_a_robot_whose_own_state_turns_non_finite_restarts_from_its_neighbours(tmp_path, monkeypatch):
    from problems.base import SupervisedProblem

    original = SupervisedProblem.local_grads
    calls = {"n": 0}

    def poisoned(self, theta=None, out=None):
        losses, grads = original(self, theta, out)
        calls["n"] += 1
        if calls["n"] == 4 and self.name == "dsgd":
            grads[1] = math.inf  # robot 1's step makes its parameters infinite
            losses[1] = math.inf
        return losses, grads

    monkeypatch.setattr(SupervisedProblem, "local_grads", poisoned)
    cfg = short_cfg()
    cfg["problem_configs"] = {"p": cfg["problem_configs"]["problem2"]}
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 0
    import json

    assert read_csv(out / "summary.csv")[0]["status"] == "completed"
    assert json.loads((out / "manifest.json").read_text())["pairs"][0]["robot_resets"] == 1
    assert torch.isfinite(torch.load(out / "dsgd_final_params.pt", weights_only=True)).all()


@pytest.mark.parametrize("change, key", [
    ({"faults": [{"robots": [7], "kind": "nan"}]}, "experiment.faults[0].robots"),
    ({"faults": [{"robots": [0, 1, 2, 3], "kind": "crash"}]}, "experiment.faults"),
    ({"faults": [{"robots": [1], "kind": "noise", "scale": -1.0}]}, "experiment.faults[0].scale"),
    ({"faults": [{"robots": [1], "kind": "teleport"}]}, "experiment.faults[0].kind"),
    ({"faults": [{"robots": [1], "kind": "nan"}, {"robots": [1], "kind": "crash"}]}, "experiment.faults[1].robots"),
    ({"aggregation": {"rule": "median", "radius": 0}}, "experiment.aggregation.radius"),
    ({"aggregation": {"rule": "vote"}}, "experiment.aggregation.rule"),
])
def test_bad_fault_and_aggregation_configs_are_refused_with_one_line(change, key):
    with pytest.raises(ConfigError) as refused:
        validate_config(short_cfg(**change))
    assert str(refused.value).startswith(key)


@pytest.mark.parametrize("aggregation, message", [
    ({"rule": "trimmed_mean", "trim": 1}, "experiment.aggregation.trim: 1 at each end needs more than 2 neighbours"),
    ({"rule": "clip", "assumed_byzantine": 2}, "experiment.aggregation.assumed_byzantine"),
])
def test_a_rule_too_big_for_the_smallest_neighbourhood_is_refused_before_anything_runs(tmp_path, capsys,
                                                                                        aggregation, message):
    out = tmp_path / "never"
    code = run(write_config(tmp_path, short_cfg(aggregation=aggregation)), out)  # a 4-cycle: every degree is 2
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_robust_rule_with_per_edge_messages_is_refused(tmp_path, capsys):
    cfg = short_cfg(aggregation={"rule": "median"})
    from optimizers import OPTIMIZERS

    cfg["problem_configs"]["problem1"]["optimizer_config"] = {"alg_name": "relaxed_admm", "outer_iterations": 4,
                                                             **OPTIMIZERS["relaxed_admm"].example_config}
    out = tmp_path / "never"
    assert run(write_config(tmp_path, cfg), out) == 2 and not out.exists()
    assert "relaxed_admm sends one message per edge" in capsys.readouterr().err


def test_dinno_keeps_the_duals_a_robot_left_behind_so_the_honest_robots_end_off_their_optimum():
    """Least squares, 5 robots on a cycle, robot 2 sends NaN from round 1 or 20. Broken from the start, the honest
    robots' duals sum to zero and they reach their own optimum; broken later, the duals accumulated on the edges
    to robot 2 stay in its neighbours' objectives as a fixed linear term (the honest dual sum is not zero), and the
    honest robots end at a point set by that moment: neither their optimum nor the five robots' (the mechanism
    behind DiNNO's lower accuracy with a NaN robot in docs/results-faults.md)."""
    from optimizers import DiNNO
    from tests.helpers.convex import least_squares_problem, least_squares_rows

    honest = [0, 1, 3, 4]
    ends = {}
    for start in (1, 20):
        problem, optimum, g = least_squares_problem()
        net = InProcessNetwork(g, dtype=DT)
        hook = Faults(validate_faults("faults", [{"robots": [2], "kind": "nan", "from_round": start}]), 5)
        net.set_faults(hook)
        opt = DiNNO(problem, net, {"outer_iterations": 400, "rho_init": 0.5, "primal_iterations": 5,
                                   "primal_lr_start": 0.02, "primal_optimizer": "sgd"})
        with torch.no_grad():
            opt.setup()
            for k in range(1, 401):
                hook(k)
                opt.round(k)
        ends[start] = (problem.theta[honest].clone(), opt.duals[honest].sum(0).norm().item(), optimum)
    x, y = least_squares_rows()
    rows = torch.cat([torch.arange(i * 20, (i + 1) * 20) for i in honest])
    honest_optimum = torch.linalg.lstsq(x[rows], y[rows]).solution.reshape(-1)
    early, late = ends[1], ends[20]
    assert early[1] < 1e-8 and (early[0] - honest_optimum).norm(dim=1).max() < 1e-4 * honest_optimum.norm()
    assert late[1] > 1.0
    assert (late[0] - honest_optimum).norm(dim=1).min() > 0.1 * honest_optimum.norm()
    assert (late[0] - late[2]).norm(dim=1).min() > 0.05 * late[2].norm()

