"""experiment.links and experiment.graph_schedule through the runner, on a tiny MNIST run."""

import copy
import json

import pytest
import torch

from tests.helpers.runs import TINY, run, write_config


def tiny(**experiment):
    cfg = copy.deepcopy(TINY)
    cfg["experiment"].update(individual_training={"train_solo": False}, centralized=False, execution="grouped",
                             **experiment)  # a pinned execution form: bit-identical reruns
    dsgd = cfg["problem_configs"]["problem2"]
    choco = copy.deepcopy(dsgd)
    choco["problem_name"] = "choco"
    choco["optimizer_config"] = {"alg_name": "choco_sgd", "outer_iterations": 3, "lr": 0.01,
                                 "consensus_stepsize": 0.5, "compressor": {"name": "top_k", "fraction": 0.1}}
    cfg["problem_configs"] = {"problem2": dsgd, "choco": choco}
    return cfg


def final(out, name):
    return torch.load(out / f"{name}_final_params.pt", weights_only=True)


@pytest.mark.integration
def test_links_and_graph_schedule_in_a_run(tmp_path):
    plain, lossless, alone, sparse = (tmp_path / d for d in ("plain", "p0", "p1", "sparse"))
    assert run(write_config(tmp_path, tiny(), "a.yaml"), plain) == 0
    assert run(write_config(tmp_path, tiny(links={"drop_prob": 0.0, "seed": 4}), "b.yaml"), lossless) == 0
    assert run(write_config(tmp_path, tiny(links={"drop_prob": 1.0, "seed": 4}), "c.yaml"), alone) == 0
    assert (plain / "figures" / "top1_vs_round_and_megabytes.png").stat().st_size > 0
    for name in ("dsgd", "choco"):
        assert torch.equal(final(plain, name), final(lossless, name))
        assert not torch.equal(final(plain, name), final(alone, name))
    # one random edge of the 4-cycle per round: 2 dense float32 messages a round
    cfg = tiny(graph_schedule={"random_edges_per_round": 1, "seed": 2})
    assert run(write_config(tmp_path, cfg, "d.yaml"), sparse) == 0
    pairs = {p["problem_name"]: p for p in json.loads((sparse / "manifest.json").read_text())["pairs"]}
    n = final(sparse, "dsgd").shape[1]
    assert pairs["dsgd"]["bytes_sent_total"] == 3 * 2 * 4 * n


def test_bad_graph_schedule_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = tiny(graph_schedule={"random_edges_per_round": 1, "graphs": [{"num_nodes": 4, "type": "cycle"}]})
    out = tmp_path / "out"
    assert run(write_config(tmp_path, cfg), out) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: experiment.graph_schedule: give either graphs or random_edges_per_round, not both"
    assert not out.exists()
    cfg = tiny(graph_schedule={"graphs": [{"num_nodes": 5, "type": "cycle"}]})
    assert run(write_config(tmp_path, cfg), out) == 2
    assert "graph_schedule.graphs[0].num_nodes: must equal experiment.graph.num_nodes (4)" in capsys.readouterr().err
    cfg = tiny(links={"drop_prob": 1.5})
    assert run(write_config(tmp_path, cfg), out) == 2
    assert "experiment.links.drop_prob: must be in [0, 1], got 1.5" in capsys.readouterr().err
