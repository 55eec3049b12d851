"""The MNIST results notebook runs end to end on a tiny experiment and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from experiments import runner  # noqa: E402
from tests.conftest import REPO_ROOT, assert_notebook_is_clean, shared_mnist_dir  # noqa: E402

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


def test_notebook_draws_figures_of_a_tiny_run(tmp_path, monkeypatch):
    out_dir = tmp_path / "tiny_mnist"
    tiny_run(out_dir)
    monkeypatch.setenv("NNDT_RESULTS", str(out_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(REPO_ROOT)}})
    client.execute()
    for name in FIGURES:
        path = out_dir / "figures" / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 1000, f"{name} is (nearly) empty"
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if o.get("output_type") == "stream")
    for pair in ("dinno", "dsgt", "dsgd"):
        assert pair in printed
    assert "completed" in printed
