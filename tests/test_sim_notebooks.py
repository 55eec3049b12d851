import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration  # real subprocesses: torchrun workers, notebook kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOTEBOOKS = {
    "lidar/lidar_example.ipynb": ["lidar_scans.png", "lidar_clipped.png", "lidar_trajectories.png",
                                  "lidar_online_window.png"],
    "planner/planner_example.ipynb": ["planner_path.png", "planner_tour.png", "planner_scans.png"],
}


@pytest.mark.parametrize("rel", sorted(NOTEBOOKS))
def test_notebook_executes_and_saves_figures(rel, tmp_path, monkeypatch):
    monkeypatch.setenv("NNDT_FIGURE_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = os.path.join(ROOT, rel)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= len(NOTEBOOKS[rel])
    for name in NOTEBOOKS[rel]:
        f = tmp_path / name
        assert f.exists() and f.stat().st_size > 5000, name
