"""The MNIST results notebook runs end to end on a tiny experiment and writes its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from experiments import runner  # noqa: E402
from tests.helpers.paths import REPO_ROOT, assert_notebook_is_shipped_whole, execute_results_notebook, shared_mnist_dir  # noqa: E402

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


def test_notebook_is_shipped_with_its_title_and_pictures():
    assert_notebook_is_shipped_whole(NOTEBOOK)


@pytest.mark.integration
def test_notebook_draws_figures_of_a_tiny_run(tmp_path, monkeypatch):
    out_dir = tmp_path / "tiny_mnist"
    tiny_run(out_dir)
    printed = execute_results_notebook(NOTEBOOK, out_dir, FIGURES, monkeypatch, timeout=120)
    for pair in ("dinno", "dsgt", "dsgd"):
        assert pair in printed
    assert "completed" in printed


def test_the_notebooks_pick_their_folder_by_manifest_not_by_name(tmp_path, capsys):
    """After a tuning study and a scaling sweep (both with "mnist" in their names, written last), the MNIST
    notebook's default folder is still the newest MNIST run; the scaling notebook's is the sweep."""
    import json
    import os
    import time

    from visualization.plotting import latest_output

    def folder(name, manifest, age):
        path = tmp_path / name
        path.mkdir()
        (path / "manifest.json").write_text(json.dumps(manifest))
        os.utime(path / "manifest.json", (time.time() - age, time.time() - age))
        return path

    done = {"status": "completed"}
    run = folder("2026-12-01_mnist_demo", {"name": "mnist_demo", "problem": "mnist", "pairs": [], **done}, 300)
    folder("2026-12-02_density_demo", {"name": "density_demo", "problem": "online_density", "pairs": [], **done}, 200)
    folder("2026-12-03_mnist_tune", {"kind": "tuning", "name": "mnist_tune", "problem": "mnist", **done}, 100)
    sweep = folder("2026-12-04_mnist_scaling", {"kind": "scaling", "name": "mnist_scaling", "problem": "mnist", **done},
                   50)
    (tmp_path / "2026-12-05_mnist_broken").mkdir()
    (tmp_path / "2026-12-05_mnist_broken" / "manifest.json").write_text("{truncated")
    # newer runs that did not finish: a crashed one and a live one have nothing whole to draw
    folder("2026-12-06_mnist_crashed", {"name": "mnist_demo", "problem": "mnist", "pairs": [], "status": "failed"}, 20)
    folder("2026-12-07_mnist_live", {"name": "mnist_demo", "problem": "mnist", "pairs": [], "status": "running"}, 10)
    assert latest_output(("mnist",), tmp_path) == str(run)
    said = capsys.readouterr().out
    assert said.startswith(f"results: {run} (newer but not completed: 2026-12-07_mnist_live running, "
                           f"2026-12-06_mnist_crashed failed)")
    assert latest_output(("mnist", "logreg"), tmp_path, kind="scaling") == str(sweep)
    assert latest_output(("logreg",), tmp_path) == ""
