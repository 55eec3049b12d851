"""docs/extending.md's claims, checked: its optimizer and problem-kind modules, copied from the page as they are,
are one module plus one registry line (and a meaning per new key) each, and they run."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
import torch
import yaml

from experiments import config_docs
from experiments.kinds import KINDS
from experiments.runner import main
from optimizers import OPTIMIZERS
from tests.helpers.paths import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "extending.md"


def page_module(tmp_path, monkeypatch, marker: str, name: str):
    """The python block of the page whose text contains ``marker``, imported as module ``name``."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    (source,) = [b for b in blocks if marker in b]
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def test_the_pages_optimizer_is_one_module_and_one_registry_line(tmp_path, monkeypatch, capsys):
    module = page_module(tmp_path, monkeypatch, "class MomentumDSGD", "momentum_dsgd_example")
    cls = module.MomentumDSGD
    assert len(PAGE.read_text().split("class MomentumDSGD")[1].split("```")[0].splitlines()) < 45
    monkeypatch.setitem(OPTIMIZERS, cls.alg_name, cls)
    # the stacked round against the plain per-robot reference on the tests' small problem
    from tests.helpers.convex import reference_theta, run_stack

    theta, _ = run_stack(cls, {"alpha": 0.05, "beta": 0.8})
    torch.testing.assert_close(theta, reference_theta(cls, {"alpha": 0.05, "beta": 0.8}), rtol=0, atol=1e-6)
    # a pair of it, from a config, by run.py
    cfg = {"experiment": {"name": "momentum", "problem": "logreg", "graph": {"num_nodes": 4, "type": "cycle"}},
           "problem_configs": {"p": {"problem_name": "momentum",
                                     "optimizer_config": {"alg_name": "momentum_dsgd", "alpha": 0.1,
                                                          "outer_iterations": 30}}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main([str(tmp_path / "cfg.yaml"), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    # its meaning is what the configuration page needs
    monkeypatch.setitem(config_docs.MEANINGS, "optimizer.momentum_dsgd.beta", "the momentum's weight")
    assert "### `momentum_dsgd`: DSGD with heavy-ball momentum" in config_docs.page()


def test_the_pages_problem_kind_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    module = page_module(tmp_path, monkeypatch, "class SineSetup", "sine_example")
    assert len(PAGE.read_text().split("The ``sine`` kind")[1].split("```")[0].splitlines()) < 85
    monkeypatch.setitem(KINDS, "sine", module.KIND)
    cfg = {"experiment": {"name": "sine", "problem": "sine", "graph": {"num_nodes": 4, "type": "cycle"}},
           "problem_configs": {
               "dinno": {"problem_name": "dinno", "metrics_config": {"evaluate_frequency": 20},
                         "optimizer_config": {"alg_name": "dinno", "outer_iterations": 100, "rho_init": 0.5,
                                              "primal_iterations": 2, "primal_lr_start": 0.01}},
               "dsgt": {"problem_name": "dsgt", "metrics_config": {"evaluate_frequency": 20},
                        "optimizer_config": {"alg_name": "dsgt", "outer_iterations": 100, "alpha": 0.05}}}}
    (tmp_path / "sine.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main([str(tmp_path / "sine.yaml"), "--output-dir", str(out), "--quiet"]) == 0
    for name in ("dinno", "dsgt"):
        history = torch.load(out / f"{name}_results.pt", weights_only=True)
        first, last = (float(torch.as_tensor(history["validation_loss"][i]).mean()) for i in (0, -1))
        assert last < 0.5 * first, name  # the team learned the wave, not each robot its own stretch only
    monkeypatch.setitem(config_docs.MEANINGS, "experiment.samples_per_robot", "samples each robot holds")
    monkeypatch.setitem(config_docs.MEANINGS, "experiment.noise", "std of the noise on y")
    assert "## `experiment`: `sine`" in config_docs.page()


@pytest.mark.parametrize("line", [line for line in PAGE.read_text().split("## Common changes")[1].split("```")[1]
                                  .splitlines() if line.startswith("venv/bin/python")])
def test_every_common_change_checks_as_written(line, capsys, monkeypatch):
    import shlex

    from tests.helpers.paths import shared_mnist_dir

    data = shared_mnist_dir()
    if data is None:
        pytest.skip("MNIST not present (put it in data/MNIST/raw with `make data`, or set NNDT_DATA)")
    monkeypatch.setenv("NNDT_DATA", str(data))
    args = [a for a in shlex.split(line.split("  #")[0])[2:] if a != "--check"]
    assert main([*args, "--check"]) == 0, capsys.readouterr().err
