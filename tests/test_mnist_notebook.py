"""The MNIST results notebook runs end to end on a tiny experiment and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from experiments import runner  # noqa: E402
from tests.conftest import REPO_ROOT, assert_notebook_is_clean, execute_results_notebook, shared_mnist_dir  # noqa: E402

NOTEBOOK = REPO_ROOT / "visualization" / "mnist.ipynb"
CONFIG = REPO_ROOT / "experiments" / "configs" / "mnist_paper.yaml"
FIGURES = ("notebook_curves.png", "notebook_graph.png", "notebook_final_accuracy.png",
           "notebook_consensus_heatmap.png")


def tiny_run(out_dir: Path) -> None:
    overrides = ["experiment.graph.num_nodes=4", "experiment.graph.type=cycle",
                 "experiment.data_split_type=random", "experiment.use_cuda=false"]
    mnist = shared_mnist_dir()
    if mnist is not None:
        overrides += [f"experiment.data_dir={mnist}", "experiment.dataset=mnist"]
    else:
        overrides += ["experiment.dataset=mnist_subset"]
    for key in ("problem1", "problem2", "problem3"):
        overrides += [f"problem_configs.{key}.optimizer_config.outer_iterations=6",
                      f"problem_configs.{key}.metrics_config.evaluate_frequency=2"]
    argv = [str(CONFIG), "--output-dir", str(out_dir), "--quiet"]
    for item in overrides:
        argv += ["--set", item]
    assert runner.main(argv) == 0


def test_notebook_has_no_stored_outputs():
    assert_notebook_is_clean(NOTEBOOK)


@pytest.mark.integration
def test_notebook_draws_figures_of_a_tiny_run(tmp_path, monkeypatch):
    out_dir = tmp_path / "tiny_mnist"
    tiny_run(out_dir)
    printed = execute_results_notebook(NOTEBOOK, out_dir, FIGURES, monkeypatch, timeout=120)
    for pair in ("dinno", "dsgt", "dsgd"):
        assert pair in printed
    assert "completed" in printed
