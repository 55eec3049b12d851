"""Shared test helpers: paths."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_mnist_dir() -> Path | None:
    """MNIST in torchvision's layout: $NNDT_DATA (what the code reads too), else the repository's data/, else a
    copy beside the repository (../shared/data/mnist); None when none has it."""
    candidates = [os.environ.get("NNDT_DATA"), REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data" / "mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir() and any((Path(candidate) / "MNIST" / "raw").iterdir()):
            return Path(candidate)
    return None


def assert_notebook_is_shipped_whole(path: Path) -> None:
    """A committed notebook: its title first, then the cell that reads the results folder from NNDT_RESULTS, and
    the outputs of its last execution stored (``make notebooks``), pictures included, without an error."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert nb.cells[1].cell_type == "code" and "NNDT_RESULTS" in nb.cells[1].source
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) or "image/gif" in o.get("data", {}) for o in outputs), \
        f"{path.name} has no stored picture: run make notebooks"
    assert not any(o.get("output_type") == "error" for o in outputs)


def execute_results_notebook(notebook: Path, results: Path, figures, monkeypatch, timeout: int = 180) -> str:
    """Run a results notebook on ``results`` (via NNDT_RESULTS), check that it wrote each of ``figures``
    into results/figures, and return everything its cells printed."""
    import nbclient
    import nbformat

    monkeypatch.setenv("NNDT_RESULTS", str(results))
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    for name in figures:
        path = results / "figures" / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 1000, f"{name} is (nearly) empty"
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
