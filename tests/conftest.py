import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_mnist_dir() -> Path | None:
    """MNIST in torchvision's layout: $NNDT_MNIST_DIR, else ../shared/data/mnist beside the repository."""
    candidate = Path(os.environ.get("NNDT_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))
    return candidate if (candidate / "MNIST" / "raw").is_dir() else None


def pytest_configure(config):
    """Execution-plan decisions of the test session go to a throwaway cache, not the user's."""
    import tempfile
    os.environ.setdefault("NNDT_PLAN_CACHE", str(Path(tempfile.mkdtemp(prefix="nndt-plans-")) / "plans.json"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("NNDT_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or NNDT_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def mnist_dir() -> Path:
    path = shared_mnist_dir()
    if path is None:
        pytest.skip("MNIST folder not present (set NNDT_MNIST_DIR)")
    return path


def assert_notebook_is_clean(path: Path) -> None:
    """A committed notebook: no stored outputs, and its first cell reads the results folder from NNDT_RESULTS."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and "NNDT_RESULTS" in first.source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


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
