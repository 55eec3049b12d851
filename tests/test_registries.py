"""Contract tests over every entry of every registry (optimizers, compressors, link models, graph types,
metrics, problem kinds): a new entry is tested here without editing a list. And the extension points
really are one class plus one registry entry: a toy compressor, link model and metric added at run time work."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from experiments.config import validate_config
from experiments.kinds import KINDS
from foundation.schema import ConfigError
from optimizers import BASELINES, OPTIMIZERS, validate_optimizer_config
from optimizers.comm import compressors as compressor_module
from optimizers.comm import link_models
from optimizers.comm.compressors import COMPRESSORS, Compressor, make_compressor, validate_compressor
from optimizers.comm.graphs import GRAPHS, make_graph
from optimizers.comm.link_models import LINK_MODELS, make_link_model, validate_links
from optimizers.comm.network import InProcessNetwork
from problems import metrics as metric_module
from problems.metrics import METRICS, Metric
from tests.helpers.convex import DT, graph, make_problem

ROUNDS = 4


def trained(cls, config, rounds, links=None, checkpoint_at=None):
    """theta after ``rounds`` rounds on the small stochastic problem; with ``checkpoint_at`` the run is
    checkpointed there and continued by a fresh optimizer, problem and network (as --resume does)."""
    problem = make_problem()
    net = InProcessNetwork(graph(), dtype=DT)
    if links is not None:
        net.set_link_model(make_link_model(validate_links("links", links)))
    opt = cls(problem, net, {"outer_iterations": rounds, **config})
    with torch.no_grad():
        opt.setup()
        for k in range(1, rounds + 1):
            opt.round(k)
            if k == checkpoint_at:
                saved = opt.checkpoint(k)
                problem = make_problem()
                net = InProcessNetwork(graph(), dtype=DT)
                if links is not None:
                    net.set_link_model(make_link_model(validate_links("links", links)))
                opt = cls(problem, net, {"outer_iterations": rounds, **config})
                opt.resume(saved)
    return problem.theta.clone(), net


@pytest.mark.parametrize("name", list(OPTIMIZERS) + list(BASELINES))
def test_every_optimizer_validates_its_example_trains_counts_and_resumes_bit_for_bit(name):
    cls = {**OPTIMIZERS, **BASELINES}[name]
    if name in OPTIMIZERS:
        validate_optimizer_config("p", {"alg_name": name, "outer_iterations": ROUNDS, **cls.example_config})
    start = make_problem().theta
    theta, net = trained(cls, cls.example_config, 2 * ROUNDS)
    assert torch.isfinite(theta).all() and not torch.allclose(theta, start)
    if name in OPTIMIZERS:
        assert bool((net.bytes_sent > 0).all())  # every robot talked, and the network counted it
    resumed, _ = trained(cls, cls.example_config, 2 * ROUNDS, checkpoint_at=ROUNDS)
    assert torch.equal(resumed, theta)
    lossy = {"model": "bursty", "seed": 3}
    assert torch.equal(trained(cls, cls.example_config, 2 * ROUNDS, links=lossy, checkpoint_at=ROUNDS)[0],
                       trained(cls, cls.example_config, 2 * ROUNDS, links=lossy)[0])


@pytest.mark.parametrize("persistent", [True, False])
def test_proximal_dinno_resumes_bit_for_bit_with_its_moments(persistent):
    cls = OPTIMIZERS["dinno"]
    config = {**cls.example_config, "primal_penalty": "proximal", "persistant_primal_opt": persistent}
    validate_optimizer_config("p", {"alg_name": "dinno", "outer_iterations": ROUNDS, **config})
    theta, _ = trained(cls, config, 2 * ROUNDS)
    assert torch.isfinite(theta).all() and not torch.equal(theta, trained(cls, cls.example_config, 2 * ROUNDS)[0])
    assert torch.equal(trained(cls, config, 2 * ROUNDS, checkpoint_at=ROUNDS)[0], theta)


@pytest.mark.parametrize("name", list(COMPRESSORS))
@pytest.mark.parametrize("scope", ["row", "tensor"])
def test_every_compressor_contracts_costs_what_it_says_and_draws_per_robot(name, scope):
    schema = COMPRESSORS[name].config_schema
    if scope == "tensor" and "scope" not in schema:
        pytest.skip(f"{name} has no scope")
    config = validate_compressor("c", {"name": name, **({"scope": scope} if "scope" in schema else {})})
    segments = [20, 5, 75]
    comp = make_compressor(config, segments)
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(0), dtype=DT)
    stream = comp.stream(torch.arange(3))
    errors = torch.stack([(comp(x, stream) - x).square().sum(1) for _ in range(50)]).mean(0)
    assert bool((errors < x.square().sum(1)).all())  # a contraction: it never sends more error than x itself
    assert 0 < comp.row_bytes(100, 8) <= 100 * 8 + 8 * len(segments)
    again = make_compressor(config, segments)
    assert torch.equal(comp(x, comp.stream(torch.arange(3))), again(x, again.stream(torch.arange(3))))


@pytest.mark.parametrize("name", list(LINK_MODELS))
def test_every_link_model_loses_some_messages_and_resumes_its_memory(name):
    model_cls = LINK_MODELS[name]
    links = validate_links("links", {"model": name, "seed": 1, **({"drop_prob": 0.4} if "drop_prob" in
                                                                  model_cls.top_schema else {})})
    g = make_graph("disk", 12, seed=1, radius=0.6)
    g.graph["radius"] = 0.6
    src, dst = map(torch.tensor, zip(*[(i, j) for i, j in g.to_directed().edges()]))
    ids = torch.arange(len(src))
    model = make_link_model(links)
    lost = torch.stack([model.lost(k, src, dst, ids, "x", g) for k in range(1, 60)])
    assert 0.02 < lost.double().mean() < 0.98
    saved = model.state(len(ids))
    later = [model.lost(k, src, dst, ids, "x", g) for k in range(60, 80)]
    restored = make_link_model(links)
    restored.load_state(saved)
    assert all(torch.equal(a, restored.lost(k, src, dst, ids, "x", g)) for a, k in zip(later, range(60, 80)))
    assert isinstance(model.describe(), str) and model.describe()


@pytest.mark.parametrize("name", list(GRAPHS))
def test_every_graph_type_draws_a_connected_seeded_graph_with_positions(name):
    spec = GRAPHS[name]
    parameters = {} if spec.parameter is None else {spec.parameter: spec.example}
    a, b = make_graph(name, 9, seed=4, **parameters), make_graph(name, 9, seed=4, **parameters)
    assert sorted(a.nodes) == list(range(9)) and nx.is_connected(a)
    assert sorted(a.edges) == sorted(b.edges) and a.graph["type"] == name
    assert len(nx.get_node_attributes(a, "pos")) == 9
    if spec.parameter is not None:
        raw = {"experiment": {"name": "g", "graph": {"num_nodes": 4, "type": name}},
               "problem_configs": {"p": {"problem_name": "p", "optimizer_config": {"alg_name": "dsgd", "alpha0": 0.1,
                                                                                   "outer_iterations": 1}}}}
        with pytest.raises(ConfigError, match=rf"experiment\.graph\.{spec.parameter}: required for graph type {name}"):
            validate_config({**raw, "experiment": {**raw["experiment"], "problem": "logreg"}})


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_says_how_it_is_shown_and_some_kind_records_it(name):
    metric = METRICS[name]
    assert metric.label and metric.better in (None, "higher", "lower")
    for _stat, header, fmt in metric.table:
        assert header and fmt.format(0.123456)
    recorded = {m for kind in KINDS.values() for m in kind.setup.problem_class.recorded_metrics(kind.metrics)}
    from optimizers.base import NETWORK_METRICS

    assert name in recorded | set(NETWORK_METRICS)  # what the network counted, added by the optimizer


def test_every_problem_kind_has_a_setup_schemas_and_metrics():
    for name, kind in KINDS.items():
        assert kind.name == name and kind.metrics
        assert all(m in METRICS for m in kind.metrics), name


# ----------------------------------------------------------------------------- extending at run time

class EveryOther(Compressor):
    """Keeps the entries at even positions: a toy compressor."""

    name = "every_other"
    config_schema = {"offset": (int, 0, None)}

    def compress(self, x, draws):
        out = torch.zeros_like(x)
        out[:, self.params["offset"]::2] = x[:, self.params["offset"]::2]
        return out

    def vector_bytes(self, n, value_bytes):
        return math.ceil(n / 2) * value_bytes


class OddExchanges(link_models.IndependentLoss):
    """Loses every message of an odd exchange: a toy link model."""

    name = "odd_exchanges"
    top_schema: dict = {}
    block_schema: dict = {}

    @classmethod
    def from_config(cls, links):
        return cls(links["seed"], 0.0)

    def lost(self, exchange, src, dst, ids, channel, graph):
        return torch.full(src.shape, exchange % 2 == 1)

    def describe(self):
        return "odd exchanges lost"


def test_a_compressor_a_link_model_and_a_metric_are_each_one_class_and_one_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(COMPRESSORS, EveryOther.name, EveryOther)
    monkeypatch.setitem(LINK_MODELS, OddExchanges.name, OddExchanges)
    monkeypatch.setitem(METRICS, "toy_norm", Metric("parameter norm", summary=True, progress=True,
                                                    table=(("mean", "norm", "{:.3f}"),)))
    config = validate_optimizer_config("p", {"alg_name": "choco_sgd", "outer_iterations": 2, "lr": 0.05,
                                             "consensus_stepsize": 0.5, "compressor": {"name": "every_other"}})
    assert config["compressor"] == {"name": "every_other", "offset": 0}
    theta, net = trained(OPTIMIZERS["choco_sgd"], {k: v for k, v in config.items() if k not in ("alg_name",
                                                                                                "outer_iterations")},
                         2, links={"model": "odd_exchanges"})
    n = theta.shape[1]
    degrees = torch.tensor([d for _, d in sorted(graph().degree)], dtype=torch.float64)
    assert torch.equal(net.bytes_sent, degrees * 2 * math.ceil(n / 2) * 8)  # the toy's own price, two rounds
    with pytest.raises(ConfigError, match="allowed: .*odd_exchanges"):
        validate_links("links", {"model": "odd_exchange"})
    from experiments.pair import format_ranges, history_rows, summarize
    history = {"round": [0, 1], "toy_norm": [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])]}
    assert [r["toy_norm"] for r in history_rows(history)] == [1.0, 2.0, 3.0, 5.0]
    assert summarize({"problem_name": "p", "alg_name": "a", "status": "completed"}, history)["toy_norm_mean"] == 4.0
    assert "toy_norm 3..5" in format_ranges({"toy_norm": torch.tensor([3.0, 5.0])})
    assert ("toy_norm_mean", "norm", "{:.3f}") in metric_module.table_columns()
    assert compressor_module.COMPRESSORS is COMPRESSORS
