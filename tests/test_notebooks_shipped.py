"""Every shipped notebook opens with its title and carries the outputs of its last execution (``make notebooks``),
pictures included, so that a reader browsing the repository sees them; the examples write their figures to a folder
of their own, not into the working directory."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")

from tests.helpers.paths import REPO_ROOT  # noqa: E402

EXAMPLES = ("lidar/lidar_example.ipynb", "planner/planner_example.ipynb")


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_examples_are_shipped_with_their_pictures_and_keep_out_of_the_working_directory(name):
    nb = nbformat.read(REPO_ROOT / name, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    assert not any(o.get("output_type") == "error" for o in outputs)
    source = "".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'os.environ.get("NNDT_FIGURE_DIR") or tempfile.mkdtemp(' in source
    assert '"figures")' not in source
