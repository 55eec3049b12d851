"""The density results notebook runs end to end on a small online run and writes its figures and GIF."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from tests.helpers.density import make_plan, run_config, tiny_online_config  # noqa: E402
from tests.helpers.paths import REPO_ROOT, assert_notebook_is_shipped_whole, execute_results_notebook  # noqa: E402

NOTEBOOK = REPO_ROOT / "visualization" / "density.ipynb"
FIGURES = ("notebook_maps.png", "notebook_node_maps.png", "notebook_validation_loss.png", "notebook_map_quality.png",
           "notebook_animation.gif")


def test_notebook_is_shipped_with_its_title_and_pictures():
    assert_notebook_is_shipped_whole(NOTEBOOK)


def test_notebook_shows_figures_inline_and_explains_its_steps():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    source = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use(" not in source and "plt.show()" in source
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5


@pytest.mark.integration
def test_notebook_draws_maps_curves_and_animation_of_a_small_online_run(tmp_path, monkeypatch):
    plan = make_plan(tmp_path / "plan")
    rc, out = run_config(tiny_online_config(plan, rounds=6), tmp_path)
    assert rc == 0
    monkeypatch.setenv("MPLBACKEND", "Agg")  # headless here; in Jupyter the figures show inline
    printed = execute_results_notebook(NOTEBOOK, out, FIGURES, monkeypatch, timeout=180)
    from PIL import Image
    with Image.open(out / "figures" / "notebook_animation.gif") as gif:
        assert gif.n_frames == 4  # evaluations at rounds 0, 2, 4, 6
    for pair in ("dinno", "dsgd", "dsgt", "individual", "centralized"):
        assert pair in printed
    assert printed.count("map balanced accuracy") == 5
