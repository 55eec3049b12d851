import os
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT, shared_mnist_dir


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
        pytest.skip("MNIST not present (put it in data/MNIST/raw with `make data`, or set NNDT_DATA)")
    return path


