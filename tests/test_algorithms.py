"""CHOCO-SGD, compressors, EXTRA, NEXT, Prox-PDA, byte accounting and lossy links against slow
per-node references, on the convex least-squares problem, and in the exact equalities they promise."""

import math

import networkx as nx
import pytest
import torch

from foundation.counters import code, uniform
from optimizers import (
    BEER,
    CHOCOSGD,
    DSGD,
    DSGT,
    EXTRA,
    NEXT,
    OPTIMIZERS,
    DeepSqueeze,
    DiNNO,
    LocalTraining,
    ProxPDA,
    RelaxedADMM,
)
from optimizers.comm.compressors import make_compressor
from optimizers.comm.network import InProcessNetwork
from tests.helpers.convex import DT, ROUNDS, N, Reference, graph, make_problem, reference_theta, run_convex, run_stack


def neighbours(ref, i):
    return list(ref.graph.neighbors(i))


# ------------------------------------------------------------------------------------ compressors

def test_compressors_row_by_row():
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0), dtype=DT)
    top = make_compressor({"name": "top_k", "fraction": 0.05})
    q = top(x)
    for i in range(3):
        keep = sorted(range(200), key=lambda j: -abs(float(x[i, j])))[:10]
        expect = torch.zeros(200, dtype=DT)
        expect[keep] = x[i, keep]
        assert torch.equal(q[i], expect)
    assert top.row_bytes(200, 4) == 10 * (4 + 4)

    sign = make_compressor({"name": "sign"})
    for i in range(3):
        assert torch.allclose(sign(x)[i], torch.sign(x[i]) * x[i].abs().mean())
    assert sign.row_bytes(200, 4) == 25 + 4

    rk = make_compressor({"name": "random_k", "fraction": 0.05, "seed": 1})
    a, b = rk(x, rk.stream(torch.arange(3))), rk(x, rk.stream(torch.arange(3)))
    assert torch.equal(a, b) and ((a != 0).sum(dim=1) == 10).all()
    assert torch.equal(a[a != 0], x[a != 0])

    assert make_compressor({"name": "qsgd", "levels": 4}).row_bytes(200, 4) == math.ceil(200 * (1 + 3) / 8) + 4
    qsgd = make_compressor({"name": "qsgd", "levels": 16, "seed": 2})
    gen = qsgd.stream(torch.arange(3))
    mean = sum(qsgd(x, gen) for _ in range(4000)) / 4000
    tau = 1 + min(200 / 256, math.sqrt(200) / 16)
    assert torch.allclose(mean * tau, x, atol=0.05)  # unbiased up to the contraction factor 1 / tau
    assert make_compressor({"name": "identity"}).row_bytes(200, 4) == 800


@pytest.mark.parametrize("name", ["random_k", "qsgd"])
def test_random_compressors_draw_per_robot_whatever_the_block(name):
    """Robot 1's compressed rows are the same when it is compressed with robots 0 and 2 or alone."""
    comp = make_compressor({"name": name, "fraction": 0.1, "seed": 4} if name == "random_k" else
                           {"name": name, "levels": 4, "seed": 4})
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(1), dtype=DT)
    team, alone = comp.stream(torch.arange(3)), comp.stream(torch.tensor([1]))
    for _ in range(3):
        assert torch.equal(comp(x, team)[1], comp(x[1:2], alone)[0])


# --------------------------------------------------------------------------- per-node references

@pytest.mark.parametrize("compressor", [{"name": "top_k", "fraction": 0.2}, {"name": "sign"},
                                        {"name": "qsgd", "bits": 2, "scope": "tensor", "seed": 3}])
def test_choco_matches_its_per_robot_reference(compressor):
    cfg = {"lr": 0.05, "consensus_stepsize": 0.4, "compressor": compressor}
    theta, _ = run_stack(CHOCOSGD, cfg)
    segments = [s.numel for s in make_problem().stack.slots]
    assert torch.allclose(theta, reference_theta(CHOCOSGD, cfg, ROUNDS, segments=segments), atol=1e-10, rtol=0)


def test_choco_identity_with_unit_consensus_step_is_dsgd():
    choco, _ = run_stack(CHOCOSGD, {"lr": 0.05, "consensus_stepsize": 1.0})
    dsgd, _ = run_stack(DSGD, {"alpha0": 0.05, "mu": 0.0, "adapt_then_combine": True})
    assert torch.allclose(choco, dsgd, atol=1e-13, rtol=0)  # equal up to float64 rounding
    assert not torch.allclose(choco, make_problem().theta, atol=1e-3)


def _top_k_of(v, k):
    out = torch.zeros_like(v)
    idx = v.abs().topk(k).indices
    out[idx] = v[idx]
    return out


def test_deepsqueeze_matches_its_per_robot_reference():
    cfg = {"lr": 0.05, "consensus_stepsize": 0.6, "compressor": {"name": "top_k", "fraction": 0.1}}
    theta, net = run_stack(DeepSqueeze, cfg)
    assert torch.allclose(theta, reference_theta(DeepSqueeze, cfg, ROUNDS), atol=1e-10, rtol=0)
    n = theta.shape[1]
    k = math.ceil(0.1 * n)
    degrees = torch.tensor([d for _, d in sorted(graph().degree)], dtype=torch.float64)
    assert torch.equal(net.bytes_sent, degrees * ROUNDS * k * (8 + 4))  # float64 values + int32 indices


@pytest.mark.parametrize("compressor", [{"name": "top_k", "fraction": 0.2}, {"name": "sign"},
                                        {"name": "random_k", "fraction": 0.3, "scope": "tensor", "seed": 2}])
def test_beer_matches_its_per_robot_reference(compressor):
    cfg = {"lr": 0.05, "lr_finish": 0.01, "lr_decay_type": "linear", "consensus_stepsize": 0.4,
           "compressor": compressor}
    theta, net = run_stack(BEER, cfg)
    segments = [s.numel for s in make_problem().stack.slots]
    assert torch.allclose(theta, reference_theta(BEER, cfg, ROUNDS, segments=segments), atol=1e-10, rtol=0)
    n = theta.shape[1]
    if compressor["name"] == "top_k":
        per_message = math.ceil(0.2 * n) * (8 + 4)
    elif compressor["name"] == "sign":
        per_message = math.ceil(n / 8) + 8
    else:
        per_message = sum(math.ceil(0.3 * size) * (8 + 4) for size in segments)
    degrees = torch.tensor([d for _, d in sorted(graph().degree)], dtype=torch.float64)
    assert torch.equal(net.bytes_sent, degrees * ROUNDS * 2 * per_message)  # two messages a round


@pytest.mark.parametrize("compressor", [{"name": "top_k", "fraction": 0.5}, {"name": "qsgd", "levels": 4, "seed": 1},
                                        {"name": "qsgd", "bits": 2, "scope": "tensor", "seed": 1}])
def test_beer_reaches_the_exact_least_squares_optimum_under_compression(compressor):
    """Gradient tracking with compressed public copies: the exact optimum, not a neighbourhood of it."""
    errors, start = run_convex(BEER, {"lr": 0.03, "consensus_stepsize": 0.3, "compressor": compressor}, 3000)
    assert errors.max() < 1e-8 * start


def test_deepsqueeze_averages_where_compressing_the_model_without_error_feedback_cannot():
    """The error term sends what top-k left out later; with it the robots reach consensus on the
    least-squares problem, up to the DSGD-like bias a decaying rate shrinks. Without it (top-k of the
    model itself) they stay far apart."""

    class WithoutErrorFeedback(DeepSqueeze):
        def round(self, k):
            self.error.zero_()
            super().round(k)

    cfg = {"lr": 0.05, "lr_finish": 0.002, "lr_decay_type": "log", "consensus_stepsize": 0.2}
    top_k = {"compressor": {"name": "top_k", "fraction": 0.5}}
    exact, start = run_convex(DeepSqueeze, cfg, 1500)
    compressed, _ = run_convex(DeepSqueeze, {**cfg, **top_k}, 1500)
    without, _ = run_convex(WithoutErrorFeedback, {**cfg, **top_k}, 1500)
    assert exact.max() < start / 10
    assert compressed.max() < 1.5 * exact.max() + 0.02
    assert without.max() > 2 * compressed.max()


def test_dsgd_refuses_a_compressor_and_names_the_methods_that_compress():
    from foundation.schema import ConfigError
    from optimizers import validate_optimizer_config
    with pytest.raises(ConfigError, match=r"^p\.compressor: dsgd sends its model uncompressed .* use deepsqueeze, "
                                          r"choco_sgd or beer$"):
        validate_optimizer_config("p", {"alg_name": "dsgd", "outer_iterations": 3, "alpha0": 0.1,
                                        "compressor": {"name": "top_k"}})


def test_compressors_per_tensor_compress_each_tensor_on_its_own():
    x = torch.randn(3, 30, generator=torch.Generator().manual_seed(5), dtype=DT)
    x[:, 20:] *= 100  # a whole-row top-k would take only the last tensor's entries
    segments = [12, 8, 10]
    top = make_compressor({"name": "top_k", "fraction": 0.25, "scope": "tensor"}, segments)
    q, start = top(x), 0
    for size in segments:
        k = math.ceil(0.25 * size)
        part = x[:, start:start + size]
        for i in range(3):
            assert torch.equal(q[i, start:start + size], _top_k_of(part[i], k))
        start += size
    assert top.row_bytes(30, 4) == (3 + 2 + 3) * (4 + 4)
    whole = make_compressor({"name": "top_k", "fraction": 0.25})(x)
    assert (whole[:, :20] == 0).all() and not (q[:, :20] == 0).all()
    qsgd = make_compressor({"name": "qsgd", "bits": 3, "scope": "tensor", "seed": 0}, segments)
    assert qsgd.levels == 7
    assert qsgd.row_bytes(30, 4) == sum(math.ceil(size * (1 + 3) / 8) + 4 for size in segments)
    assert torch.equal(q, make_compressor({"name": "top_k", "fraction": 0.25, "scope": "tensor"}, segments)(x))
    with pytest.raises(ValueError, match="needs the sizes"):
        make_compressor({"name": "top_k", "fraction": 0.25, "scope": "tensor"})


def test_extra_matches_its_per_robot_reference():
    theta, _ = run_stack(EXTRA, {"alpha": 0.05})
    assert torch.allclose(theta, reference_theta(EXTRA, {"alpha": 0.05}, ROUNDS), atol=1e-10, rtol=0)


def test_next_matches_its_per_robot_reference():
    cfg = {"alpha0": 0.5, "mu": 0.1, "tau": 20.0}
    theta, _ = run_stack(NEXT, cfg)
    assert torch.allclose(theta, reference_theta(NEXT, cfg, ROUNDS), atol=1e-10, rtol=0)


@pytest.mark.parametrize("primal_optimizer", ["sgd", "adam"])
def test_prox_pda_matches_its_per_robot_reference(primal_optimizer):
    cfg = {"beta": 0.7, "primal_iterations": 3, "primal_lr": 0.05, "primal_optimizer": primal_optimizer}
    theta, _ = run_stack(ProxPDA, cfg)
    assert torch.allclose(theta, reference_theta(ProxPDA, cfg, ROUNDS), atol=1e-5 if primal_optimizer == "adam"
                          else 1e-10, rtol=0)


# ------------------------------------------------------------------- convex: least squares optimum

def test_extra_reaches_centralized_least_squares_solution():
    errors, _ = run_convex(EXTRA, {"alpha": 0.05}, 1500)
    assert errors.max() < 1e-3


def test_next_reaches_centralized_least_squares_solution():
    errors, _ = run_convex(NEXT, {"alpha0": 1.0, "mu": 1e-4, "tau": 100.0}, 1500)
    assert errors.max() < 1e-3


def test_prox_pda_reaches_centralized_least_squares_solution():
    errors, _ = run_convex(ProxPDA, {"beta": 1.0, "primal_iterations": 30, "primal_lr": 0.05}, 300)
    assert errors.max() < 1e-3


def test_choco_gets_close_to_least_squares_solution():
    # A decaying step shrinks the (DSGD-like) bias of uncompressed CHOCO; compression may add an error
    # of its own, but only a small one on top.
    cfg = {"lr": 0.05, "lr_finish": 0.002, "lr_decay_type": "log", "consensus_stepsize": 0.5}
    exact, start = run_convex(CHOCOSGD, cfg, 1500)
    assert exact.max() < start / 30
    for compressor in ({"name": "top_k", "fraction": 0.5}, {"name": "qsgd", "levels": 16, "seed": 0}):
        errors, _ = run_convex(CHOCOSGD, {**cfg, "compressor": compressor}, 1500)
        assert errors.max() < 1.5 * exact.max() + 0.01, compressor


# ------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("compressor,message", [
    ({"name": "top_q"}, "c.compressor.name: 'top_q' is not allowed (did you mean 'top_k'?); allowed: identity"),
    ({"name": "top_k", "fraction": 0}, "c.compressor.fraction: must be in (0, 1], got 0.0"),
    ({"name": "sign", "fraction": 0.1}, "c.compressor.fraction: unknown key; allowed: name"),
    ({"name": "qsgd", "levels": 0}, "c.compressor.levels: must be at least 1, got 0"),
    ({"name": "qsgd", "levels": 4, "bits": 2}, "c.compressor: give qsgd either levels or bits, not both"),
    ({"name": "qsgd", "bits": 31}, "c.compressor.bits: must be"),
    ({"name": "top_k", "scope": "layer"}, "c.compressor.scope: 'layer' is not allowed"),
    ("top_k", "c.compressor: expected a mapping such as {name: top_k, fraction: 0.01}, got 'top_k'"),
])
def test_compressor_config_errors_name_key_and_choices(compressor, message):
    from foundation.schema import ConfigError
    from optimizers import validate_optimizer_config as validate_optimizer
    with pytest.raises(ConfigError) as err:
        validate_optimizer("c", {"alg_name": "choco_sgd", "outer_iterations": 3, "lr": 0.1,
                                 "consensus_stepsize": 0.5, "compressor": compressor})
    assert str(err.value).startswith(message)


def test_compressor_defaults_are_filled_in():
    from optimizers import validate_optimizer_config as validate_optimizer
    cfg = validate_optimizer("c", {"alg_name": "choco_sgd", "outer_iterations": 3, "lr": 0.1,
                                   "consensus_stepsize": 0.5, "compressor": {"name": "qsgd"}})
    assert cfg["compressor"] == {"name": "qsgd", "levels": 16, "bits": None, "scope": "row", "seed": 0}


# ------------------------------------------------------------------------------ bytes on the radio

def test_each_optimizer_counts_what_it_sends():
    degrees = torch.tensor([d for _, d in sorted(graph().degree)], dtype=torch.float64)
    n = make_problem().theta.shape[1]
    dense = 8 * n  # float64 rows
    cases = [(DSGD, {"alpha0": 0.05}, ROUNDS * dense),
             (DSGT, {"alpha": 0.05}, 2 * ROUNDS * dense),
             (DiNNO, {"rho_init": 0.5, "primal_lr_start": 0.01}, ROUNDS * dense),
             (EXTRA, {"alpha": 0.05}, ROUNDS * dense),
             (NEXT, {"alpha0": 0.5, "tau": 20.0}, 2 * ROUNDS * dense),
             (ProxPDA, {"beta": 0.5, "primal_lr": 0.01}, (ROUNDS + 1) * dense),
             (CHOCOSGD, {"lr": 0.05, "consensus_stepsize": 0.5, "compressor": {"name": "sign"}},
              ROUNDS * (math.ceil(n / 8) + 8)),
             (BEER, {"lr": 0.05, "consensus_stepsize": 0.5, "compressor": {"name": "sign"}},
              2 * ROUNDS * (math.ceil(n / 8) + 8)),
             (DeepSqueeze, {"lr": 0.05, "consensus_stepsize": 0.5, "compressor": {"name": "sign"}},
              ROUNDS * (math.ceil(n / 8) + 8))]
    for cls, cfg, per_neighbour in cases:
        _, net = run_stack(cls, cfg)
        assert torch.equal(net.bytes_sent, degrees * per_neighbour), cls.alg_name


# ------------------------------------------------------------------------------------ lossy links

# every registered optimizer, with the small working config its class carries
ALL = [(cls, cls.example_config) for cls in OPTIMIZERS.values()]


@pytest.mark.parametrize("cls,cfg", ALL, ids=[c.alg_name for c, _ in ALL])
def test_links_that_never_drop_change_nothing_and_links_that_always_drop_isolate(cls, cfg):
    plain, _ = run_stack(cls, cfg)
    lossless, _ = run_stack(cls, cfg, links=(0.0, 7))
    assert torch.equal(plain, lossless)
    # p = 1: nothing another node does reaches node 1..N-1
    alone, _ = run_stack(cls, cfg, links=(1.0, 7))
    moved, _ = run_stack(cls, cfg, links=(1.0, 7), perturb=0)
    assert not torch.equal(alone[0], moved[0])
    assert torch.equal(alone[1:], moved[1:])
    # and the lossy path does connect nodes when messages do arrive
    some, _ = run_stack(cls, cfg, links=(0.3, 7))
    some_moved, _ = run_stack(cls, cfg, links=(0.3, 7), perturb=0)
    assert not torch.allclose(some[1:], some_moved[1:], atol=1e-9)


def test_dsgd_with_all_messages_dropped_is_local_sgd():
    alone, _ = run_stack(DSGD, {"alpha0": 0.05}, links=(1.0, 0))
    local, _ = run_stack(LocalTraining, {"optimizer": "sgd", "lr": 0.05})
    assert torch.equal(alone, local)


def test_lossy_mixing_matches_per_edge_reference():
    g = nx.cycle_graph(5)
    g.add_edge(0, 2)
    net = InProcessNetwork(g, dtype=DT)
    net.set_links(0.4, 3)
    edges = sorted(((j, i) for i in g for j in g.neighbors(i)), key=lambda e: (e[1], e[0]))  # (src, dst)
    held = {}
    weight = lambda i, j: 1.0 / (1 + max(g.degree[i], g.degree[j]))  # noqa: E731
    rng = torch.Generator().manual_seed(9)
    for step in range(6):
        x = torch.randn(5, 3, generator=rng, dtype=DT)
        use_sum = step % 2 == 1
        got = net.neighbor_sum(x, "c") if use_sum else net.mix(x, "c")
        for j, i in edges:  # message j -> i of exchange step + 1 arrives unless hash(seed, k, j, i, "c") < 0.4
            if float(uniform(3, step + 1, j, i, code("c"))) >= 0.4:
                held[(j, i)] = x[j].clone()
        for i in range(5):
            rows = {j: held.get((j, i), x[i]) for j in g.neighbors(i)}
            if use_sum:
                expect = sum(rows.values())
            else:
                expect = (1 - sum(weight(i, j) for j in rows)) * x[i] + sum(weight(i, j) * r for j, r in rows.items())
            assert torch.allclose(got[i], expect, atol=1e-12), (step, i)


@pytest.mark.parametrize("n, cols, radius", [(6, 7, 0.8), (40, 300, 0.3), (90, 20_001, 0.2), (200, 3, 0.15)])
def test_mixing_matches_dense_products_on_random_graphs(n, cols, radius):
    """W x and A x (sparse CSR above 32 nodes, column-blocked on wide stacks, into ``out`` or not) equal the
    dense products, and the blocked product equals the one-call sparse product bit for bit."""
    from optimizers.comm.graphs import make_graph, metropolis_weights
    from optimizers.comm.network import graph_product
    g = make_graph("disk", n, seed=n, radius=radius, gen_attempts=1000)
    net = InProcessNetwork(g, dtype=DT)
    x = torch.randn(n, cols, generator=torch.Generator().manual_seed(n), dtype=DT)
    w = torch.as_tensor(metropolis_weights(g), dtype=DT)
    a = torch.as_tensor(nx.to_numpy_array(g, nodelist=range(n)), dtype=DT)
    out = torch.full_like(x, math.nan)
    assert torch.allclose(net.mix(x, "t"), w @ x, rtol=1e-12, atol=1e-12)
    assert net.mix(x, "t", out=out) is out and torch.allclose(out, w @ x, rtol=1e-12, atol=1e-12)
    assert torch.allclose(net.neighbor_sum(x, "t"), a @ x, rtol=1e-12, atol=1e-12)
    assert net.neighbor_sum(x, "t", out=out) is out and torch.allclose(out, a @ x, rtol=1e-12, atol=1e-12)
    assert torch.equal(net.mix(x[:, 0], "v"), net._mixing @ x[:, 0])
    for operator in (net._mixing, net._adjacency):
        if not isinstance(operator, torch.Tensor):  # term-by-term sums of a small graph
            continue
        assert torch.equal(graph_product(operator, x), operator @ x)
        x32 = x.float()
        assert torch.equal(graph_product(operator.to(torch.float32), x32), operator.to(torch.float32) @ x32)
    assert net.exchanges == 5


def test_accuracy_table_finds_first_round_and_megabytes_at_threshold():
    from visualization.plotting import accuracy_table
    res = {"round": [0, 10, 20], "top1_accuracy": [torch.tensor([0.1, 0.2], dtype=DT), torch.tensor([0.95, 0.8], dtype=DT),
                                                   torch.tensor([0.93, 0.91], dtype=DT)],
           "bytes_sent": [torch.zeros(2), torch.tensor([1e6, 3e6]), torch.tensor([2e6, 6e6])]}
    row, alone = accuracy_table({"a": res, "b": {**res, "bytes_sent": [torch.zeros(2)] * 3}}, 0.9)
    assert row["rounds_to_threshold"] == 20 and row["mb_to_threshold"] == 4.0 and row["mb_total"] == 4.0
    assert math.isclose(row["final_mean"], 0.92) and math.isclose(row["final_min"], 0.91)
    assert alone["mb_to_threshold"] is None
    assert accuracy_table({"a": res}, 0.99)[0]["rounds_to_threshold"] is None


def test_graph_schedule_cycles_through_graphs_or_draws_edges_of_the_base_graph():
    from optimizers.comm.links import configure_network
    base = nx.cycle_graph(5)
    net = InProcessNetwork(base, dtype=DT)
    exp = {"seed": 0, "graph_schedule": {"graphs": [{"num_nodes": 5, "type": "complete"},
                                                    {"num_nodes": 5, "type": "cycle"}]}}
    schedule = configure_network(net, exp, base)
    sizes = []
    for k in (1, 2, 3):
        schedule(k)
        sizes.append(net.graph.number_of_edges())
    assert sizes == [10, 5, 10]
    schedule = configure_network(net, {"graph_schedule": {"random_edges_per_round": 2, "seed": 1}}, base)
    seen = set()
    for k in range(1, 8):
        schedule(k)
        edges = {tuple(sorted(e)) for e in net.graph.edges}
        assert len(edges) == 2 and edges <= {tuple(sorted(e)) for e in base.edges}
        seen |= edges
    assert len(seen) > 2  # a new draw every round
    assert net.degrees.sum() == 4


def test_last_quarter_accuracy_averages_the_late_evaluations(tmp_path, capsys):
    from visualization.plotting import last_quarter_accuracy, print_seed_table

    rounds = [0, 20, 40, 60, 80, 100]
    top1 = [torch.tensor([0.1 * e, 0.1 * e + 0.2]) for e in range(6)]  # node 0 is always the worst
    res = {"round": rounds, "top1_accuracy": top1}
    late = [e for e, r in enumerate(rounds) if r > 75]  # rounds 80 and 100
    mean = sum(float(top1[e].mean()) for e in late) / len(late)
    worst = sum(float(top1[e].min()) for e in late) / len(late)
    assert last_quarter_accuracy(res) == pytest.approx((mean, worst))
    assert last_quarter_accuracy({"round": rounds}) is None
    for seed, shift in enumerate((0.0, 0.1)):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        torch.save({"round": rounds, "top1_accuracy": [t + shift for t in top1],
                    "bytes_sent": [torch.full((2,), 1e6 * e) for e in range(6)]}, folder / "dsgd_results.pt")
        (folder / "manifest.json").write_text('{"pairs": [{"problem_name": "dsgd"}]}')
    print_seed_table([str(tmp_path / "seed0"), str(tmp_path / "seed1")], threshold=0.55)
    row = capsys.readouterr().out.splitlines()[-1]
    final, final_worst = float(top1[-1].mean()), float(top1[-1].min())
    # a mean of 0.55 is first reached at round 100 by seed 0 (0.6), at round 80 by seed 1 (4 and 5 MB sent by then)
    assert row == (f"| dsgd | 2 | {final + 0.05:.3f} ({final:.3f}-{final + 0.1:.3f}) | "
                   f"{final_worst + 0.05:.3f} ({final_worst:.3f}-{final_worst + 0.1:.3f}) | "
                   f"{mean + 0.05:.3f} ({mean:.3f}-{mean + 0.1:.3f}) / "
                   f"{worst + 0.05:.3f} ({worst:.3f}-{worst + 0.1:.3f}) | 90 | 4.5 | 5.0 |")
    # a diverged run is named; a threshold only one seed reaches averages that seed alone
    (tmp_path / "seed1" / "summary.csv").write_text("problem_name,alg_name,status\ndsgd,dsgd,diverged\n")
    print_seed_table([str(tmp_path / "seed0"), str(tmp_path / "seed1")], threshold=0.65)
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| dsgd (diverged in 1/2) | 2 |") and row.endswith("| 100 (1/2) | 5.0 (1/2) | 5.0 |")


def test_seed_curves_average_the_seeds_node_means_and_keep_a_stopped_run_until_it_stopped(tmp_path):
    from visualization.plotting import save_seed_figure, seed_curves

    rounds = [0, 20, 40, 60]
    runs = {"seed0": [torch.tensor([0.1, 0.3]), torch.tensor([0.4, 0.6]), torch.tensor([0.5, 0.7]),
                      torch.tensor([0.6, 0.8])],
            "seed1": [torch.tensor([0.1, 0.1]), torch.tensor([0.2, 0.2])]}  # diverged after round 20
    for seed, (folder, top1) in enumerate(runs.items()):
        (tmp_path / folder).mkdir()
        sent = [torch.tensor([1e6 * (e + seed), 3e6 * (e + seed)]) for e in range(len(top1))]
        torch.save({"round": rounds[:len(top1)], "top1_accuracy": top1, "bytes_sent": sent},
                   tmp_path / folder / "dsgd_results.pt")
        (tmp_path / folder / "manifest.json").write_text('{"pairs": [{"problem_name": "dsgd"}]}')
    folders = [str(tmp_path / "seed0"), str(tmp_path / "seed1")]
    curve = seed_curves(folders)["dsgd"]
    assert curve["round"] == rounds
    per_seed = torch.stack([torch.as_tensor(v) for v in curve["top1_accuracy"]])
    expected = torch.tensor([[0.2, 0.1], [0.5, 0.2], [0.6, float("nan")], [0.7, float("nan")]], dtype=torch.float64)
    assert torch.allclose(per_seed, expected, atol=1e-6, equal_nan=True)
    sent = torch.stack([torch.as_tensor(v) for v in curve["bytes_sent"]])
    # each seed's node-mean megabytes (2 * (e + seed)); the stopped seed takes the others' mean afterwards
    assert torch.allclose(sent / 1e6, torch.tensor([[0., 2.], [2., 4.], [4., 4.], [6., 6.]], dtype=torch.float64))
    path = save_seed_figure(folders, tmp_path / "seeds.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dinno_duals_sum_to_zero_unless_messages_are_lost():
    """Why DiNNO stalls under lossy links: sum_i y_i = 0 holds exactly while every row arrives; a stale
    row makes the two ends of an edge add different dual increments, the sum drifts during the
    transient, and the consensus fixed point moves off the optimum by as much (documented)."""
    from tests.helpers.convex import least_squares_problem

    cfg = {"rho_init": 1.0, "rho_scaling": 1.0, "primal_iterations": 30, "primal_optimizer": "sgd",
           "primal_lr_start": 0.05, "lr_decay_type": "constant", "outer_iterations": 150}
    figures = {}
    for drop in (0.0, 0.3):
        problem, optimum, g = least_squares_problem()
        net = InProcessNetwork(g, dtype=DT)
        net.set_links(drop, 0)
        opt = DiNNO(problem, net, cfg)
        with torch.no_grad():
            opt.setup()
            for k in range(1, 151):
                opt.round(k)
        error = float(((problem.theta - optimum).norm(dim=1) / optimum.norm()).max())
        figures[drop] = (float(opt.duals.sum(0).norm()), error)
    assert figures[0.0][0] < 1e-10 and figures[0.0][1] < 1e-6
    assert figures[0.3][0] > 0.1 and figures[0.3][1] > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ordered_row_sums_of_a_block_of_rows_equal_the_whole_product_bit_for_bit(dtype):
    """What lets a process holding some robots compute exactly what one process holding all does."""
    from optimizers.comm.graphs import make_graph, metropolis_weights
    from optimizers.comm.network import make_operator, operator_kind
    g = make_graph("random", 12, seed=4, p=0.3)
    w = metropolis_weights(g)
    assert operator_kind(w) == "ordered"
    x = torch.randn(12, 1001, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    whole = make_operator("ordered", w, "cpu", dtype) @ x
    assert torch.allclose(whole, torch.as_tensor(w, dtype=dtype) @ x, rtol=1e-5, atol=1e-6)
    for rows in (slice(0, 5), slice(5, 9), slice(9, 12), slice(3, 4)):
        columns = sorted(set(range(rows.start, rows.stop)) | {j for i in range(rows.start, rows.stop)
                                                              for j in g.neighbors(i)})
        block = make_operator("ordered", w[rows][:, columns], "cpu", dtype) @ x[columns]
        assert torch.equal(block, whole[rows])


def test_symmetric_links_keep_dinnos_duals_summing_to_zero_and_reach_the_optimum():
    """With acknowledged links (an edge delivers both ways or is left out) DiNNO's dual increments stay
    antisymmetric: the duals sum to zero and the fixed point is the optimum, as without losses."""
    from optimizers.comm.link_models import SymmetricLoss
    from tests.helpers.convex import least_squares_problem

    cfg = {"rho_init": 1.0, "rho_scaling": 1.0, "primal_iterations": 30, "primal_optimizer": "sgd",
           "primal_lr_start": 0.05, "lr_decay_type": "constant", "outer_iterations": 300}
    problem, optimum, g = least_squares_problem()
    net = InProcessNetwork(g, dtype=DT)
    net.set_link_model(SymmetricLoss(0, 0.3))
    opt = DiNNO(problem, net, cfg)
    with torch.no_grad():
        opt.setup()
        for k in range(1, 301):
            opt.round(k)
            assert float(opt.duals.sum(0).norm()) < 1e-9, k
    error = float(((problem.theta - optimum).norm(dim=1) / optimum.norm()).max())
    assert error < 1e-6


def test_link_models_lose_what_they_promise():
    from optimizers.comm.link_models import BurstyLoss, DistanceLoss, IndependentLoss, SymmetricLoss

    g = nx.complete_graph(4)
    src = torch.tensor([i for i in range(4) for j in range(4) if i != j])
    dst = torch.tensor([j for i in range(4) for j in range(4) if i != j])
    ids = torch.arange(len(src))
    sym = SymmetricLoss(3, 0.4)
    rate = []
    for k in range(1, 400):
        lost = sym.lost(k, src, dst, ids, "theta", g)
        both = {(int(s), int(d)): bool(x) for s, d, x in zip(src, dst, lost)}
        assert all(both[(s, d)] == both[(d, s)] for s, d in both)  # both directions or neither
        rate.append(float(lost.double().mean()))
    assert abs(sum(rate) / len(rate) - 0.4) < 0.02
    indep = IndependentLoss(3, 0.4)
    assert not torch.equal(indep.lost(5, src, dst, ids, "theta", g), indep.lost(5, dst, src, ids, "theta", g))
    # Gilbert-Elliott: the long-run loss its parameters give, and losses in runs (positive correlation)
    ge = BurstyLoss(1, enter_bad=0.1, leave_bad=0.2, loss_good=0.05, loss_bad=0.8)
    assert abs(ge.mean_loss() - 0.3) < 1e-12
    one = torch.tensor([0]), torch.tensor([1]), torch.tensor([0])
    series = torch.tensor([bool(ge.lost(k, *one, "x", g)) for k in range(1, 20001)], dtype=torch.float64)
    assert abs(float(series.mean()) - 0.3) < 0.02
    after_loss = float(series[1:][series[:-1] > 0].mean())
    assert after_loss > 0.5  # independent losses would give 0.3 here
    # its chains resume exactly from their state
    a, b = BurstyLoss(2, 0.1, 0.2, 0.05, 0.8), BurstyLoss(2, 0.1, 0.2, 0.05, 0.8)
    first = [a.lost(k, src, dst, ids, "x", g) for k in range(1, 50)]
    b.load_state(a.state(len(ids)))
    c = BurstyLoss(2, 0.1, 0.2, 0.05, 0.8)
    straight = [c.lost(k, src, dst, ids, "x", g) for k in range(1, 80)]
    assert all(torch.equal(x, y) for x, y in zip(first, straight[:49]))
    assert all(torch.equal(b.lost(k, src, dst, ids, "x", g), straight[k - 1]) for k in range(50, 80))
    # distance: max_loss (d / R)^power, 0 next to each other, max_loss at the radius
    dist = DistanceLoss(0, radius=10.0, power=4.0, max_loss=1.0)
    p = dist.probability(torch.tensor([0.0, 5.0, 10.0, 20.0], dtype=torch.float64), 10.0)
    assert torch.allclose(p, torch.tensor([0.0, 0.0625, 1.0, 1.0], dtype=torch.float64))
    line = nx.Graph()
    line.add_node(0, pos=(0.0, 0.0))
    line.add_node(1, pos=(5.0, 0.0))
    line.add_edge(0, 1)
    draws = torch.stack([dist.lost(k, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), "x", line)
                         for k in range(1, 8001)]).double()
    assert abs(float(draws.mean()) - 0.0625) < 0.01


# -------------------------------------------------------------------------------- relaxed ADMM

RELAXED = {"rho": 0.7, "relaxation": 0.4, "primal_iterations": 3, "primal_optimizer": "adam",
           "primal_lr_start": 0.05, "lr_decay_type": "constant"}


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_relaxed_admm_matches_per_node_loop(drop):
    """One z per edge end, one message per edge and direction; a lost reply leaves that z as it was (every
    message delivered: the module's own per-robot reference gives the same)."""
    theta, net = run_stack(RelaxedADMM, RELAXED, links=(drop, 5))
    if drop == 0:
        assert torch.allclose(theta, reference_theta(RelaxedADMM, RELAXED, ROUNDS), atol=1e-5, rtol=0)
    ref = Reference()
    rho, alpha = 0.7, 0.4
    z = {(i, j): rho * ref.vec(i) for i in range(N) for j in neighbours(ref, i)}
    lost_any = False
    for k in range(1, ROUNDS + 1):
        sums = [sum(z[i, j] for j in neighbours(ref, i)) for i in range(N)]
        opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in ref.models]
        for _ in range(3):
            idx = ref.batch_indices()
            for i in range(N):
                opts[i].zero_grad()
                th = torch.cat([p.reshape(-1) for p in ref.models[i].parameters()])
                degree = len(neighbours(ref, i))
                (ref.loss(i, idx) - th @ sums[i] + rho * degree / 2 * (th ** 2).sum()).backward()
                opts[i].step()
        replies = {(i, j): 2 * rho * ref.vec(i) - z[i, j] for (i, j) in z}
        for (i, j) in z:  # z_ij takes j's reply unless it was lost
            lost = float(uniform(5, k, torch.tensor([j]), torch.tensor([i]), code("relaxed_admm_y"))[0]) < drop
            lost_any |= lost
            if not lost:
                z[i, j] = (1 - alpha) * z[i, j] + alpha * replies[j, i]
    assert lost_any == (drop > 0)
    assert torch.allclose(theta, ref.stacked(), atol=1e-5, rtol=0)
    row_bytes = theta.shape[1] * theta.element_size()
    assert net.bytes_sent.tolist() == [ROUNDS * len(neighbours(ref, i)) * row_bytes for i in range(N)]


@pytest.mark.parametrize("model", ["independent", "symmetric", "bursty"])
def test_relaxed_admm_reaches_the_optimum_where_dinno_does_not(model):
    """30% of the messages lost: relaxed ADMM's fixed point is still the optimum (DiNNO settles off it,
    test_dinno_duals_sum_to_zero_unless_messages_are_lost)."""
    from optimizers.comm.link_models import make_link_model
    from tests.helpers.convex import least_squares_problem

    links = {"independent": {"model": "independent", "drop_prob": 0.3, "seed": 0},
             "symmetric": {"model": "symmetric", "drop_prob": 0.3, "seed": 0},
             "bursty": {"model": "bursty", "seed": 0, "bursty": {"enter_bad": 0.1, "leave_bad": 0.3,
                                                                  "loss_good": 0.1, "loss_bad": 0.9}}}[model]
    problem, optimum, g = least_squares_problem()
    net = InProcessNetwork(g, dtype=DT)
    net.set_link_model(make_link_model(links))
    opt = RelaxedADMM(problem, net, {"rho": 1.0, "primal_iterations": 30, "primal_optimizer": "sgd",
                                     "primal_lr_start": 0.05, "lr_decay_type": "constant", "outer_iterations": 300})
    with torch.no_grad():
        opt.setup()
        for k in range(1, 301):
            opt.round(k)
    error = float(((problem.theta - optimum).norm(dim=1) / optimum.norm()).max())
    assert error < 1e-6


@pytest.mark.parametrize("primal", ["sgd", "adam"])
def test_lossless_relaxed_admm_at_one_half_is_dinno_at_half_the_rho(primal):
    """With every message delivered and alpha = 1/2, s_i = sum_j z_ij follows DiNNO's
    rho_D (d_i x_i + (A x)_i) - lambda_i with rho = 2 rho_D: the same iterates."""
    steps = {"primal_iterations": 3, "primal_optimizer": primal, "primal_lr_start": 0.05, "lr_decay_type": "constant"}
    dinno, _ = run_stack(DiNNO, {"rho_init": 0.35, **steps}, rounds=8)
    relaxed, _ = run_stack(RelaxedADMM, {"rho": 0.7, "relaxation": 0.5, **steps}, rounds=8)
    assert torch.allclose(relaxed, dinno, atol=1e-12, rtol=0)
    other, _ = run_stack(RelaxedADMM, {"rho": 0.7, "relaxation": 0.8, **steps}, rounds=8)
    assert not torch.allclose(other, dinno, atol=1e-4)


@pytest.mark.parametrize("bad,message", [
    ({"rho": float("nan")}, "optimizer_config.rho: expected a finite number, got nan"),
    ({"rho": 0}, "optimizer_config.rho: must be greater than 0, got 0.0"),
    ({"rho": 1, "relaxation": 1.0}, "optimizer_config.relaxation: must be in (0, 1), got 1.0"),
    ({"relaxation": 0.5}, "optimizer_config.rho"),
])
def test_relaxed_admm_refuses_bad_keys_with_one_line(bad, message):
    from optimizers import ConfigError, validate_optimizer_config

    with pytest.raises(ConfigError) as refused:
        validate_optimizer_config("p.optimizer_config", {"alg_name": "relaxed_admm", "outer_iterations": 5,
                                                         "primal_lr_start": 0.01, **bad})
    assert message in str(refused.value) and "\n" not in str(refused.value)


# ------------------------------------------------------------------------------------ MoTEF

@pytest.mark.parametrize("cfg", [
    {"lr": 0.05, "consensus_stepsize": 0.4, "momentum": 0.3, "compressor": {"name": "top_k", "fraction": 0.2}},
    {"lr": 0.05, "lr_finish": 0.01, "lr_decay_type": "linear", "lr_warmup_rounds": 3, "consensus_stepsize": 0.6,
     "consensus_stepsize_finish": 0.2, "consensus_decay_type": "log", "momentum": 0.5,
     "compressor": {"name": "qsgd", "bits": 2, "scope": "tensor", "seed": 3}},
])
def test_motef_matches_its_per_robot_reference(cfg):
    from optimizers import MoTEF

    theta, net = run_stack(MoTEF, cfg)
    segments = [s.numel for s in make_problem().stack.slots]
    assert torch.allclose(theta, reference_theta(MoTEF, cfg, ROUNDS, segments=segments), atol=1e-10, rtol=0)
    assert not torch.allclose(theta, make_problem().theta, atol=1e-3)


def test_motef_with_momentum_one_is_beer_bit_for_bit():
    from optimizers import MoTEF

    cfg = {"lr": 0.05, "consensus_stepsize": 0.4, "compressor": {"name": "top_k", "fraction": 0.2}}
    motef, motef_net = run_stack(MoTEF, {**cfg, "momentum": 1.0})
    beer, beer_net = run_stack(BEER, cfg)
    assert torch.equal(motef, beer) and torch.equal(motef_net.bytes_sent, beer_net.bytes_sent)


def test_motef_warm_up_and_consensus_schedule():
    from optimizers.motef import consensus_steps, warmed_up

    rates = warmed_up([0.1] * 6, 3)
    assert torch.allclose(rates, torch.tensor([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], dtype=torch.float64))
    gammas = consensus_steps({"consensus_stepsize": 0.8, "consensus_stepsize_finish": 0.2,
                              "consensus_decay_type": "linear", "outer_iterations": 4})
    assert torch.allclose(gammas, torch.tensor([0.8, 0.6, 0.4, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("compressor", [{"name": "top_k", "fraction": 0.5}, {"name": "qsgd", "levels": 4, "seed": 1}])
def test_motef_reaches_the_exact_least_squares_optimum_under_compression(compressor):
    """Tracking the momentum (not the gradient) keeps the exact fixed point: every robot at the optimum."""
    from optimizers import MoTEF

    errors, start = run_convex(MoTEF, {"lr": 0.03, "consensus_stepsize": 0.3, "momentum": 0.5,
                                       "compressor": compressor}, 4000)
    assert errors.max() < 1e-8 * start
