"""The shape of the code: layers point down, no import cycle, one registry of problem kinds, and
sweeps that train through the same pair driver as runs (so ``experiment.links`` means the same)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import torch
import yaml

from experiments import runner
from experiments.config import load_yaml, validate_scaling_config
from experiments.kinds import KINDS
from experiments.scaling import trial_config, trial_plan
from foundation.graph_files import graph_from_json
from optimizers import DSGD
from optimizers.comm.network import InProcessNetwork
from problems.metrics import METRICS
from tests.helpers.paths import REPO_ROOT

PACKAGES = ("experiments", "optimizers", "problems", "lidar", "planner", "floorplans", "visualization", "foundation")
# which packages each package may import (its own modules always): every import points down
ALLOWED = {
    "foundation": set(),
    "floorplans": set(),
    "lidar": set(),  # takes a floor plan as an image array
    "planner": {"lidar", "floorplans"},
    "optimizers": {"foundation"},
    "problems": {"foundation"},
    "visualization": {"foundation", "problems"},
    "experiments": {"foundation", "optimizers", "problems", "lidar", "planner", "floorplans", "visualization"},
}
# inside optimizers/, the algorithms may use the radio layer (optimizers.comm), never the other way round
INSIDE = {"optimizers.comm": ("optimizers.comm",)}


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}


def test_layers_point_down():
    for name, path in modules().items():
        package = name.split(".")[0]
        for imported in project_imports(path):
            other = imported.split(".")[0]
            assert other == package or other in ALLOWED[package], f"{name} imports {imported}"
            for room, allowed in INSIDE.items():
                if name.startswith(room + ".") and imported.startswith(package + "."):
                    assert imported.startswith(allowed), f"{name} imports {imported}"


def test_no_import_cycle_among_the_project_modules():
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported in project_imports(path):
            # "a.b.c" may name module a.b.c or an attribute c of module a.b
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    # a package's __init__ importing its own modules is how a package is assembled, not a cycle
    edges = {a: {b for b in bs if not (b.startswith(a + ".") and known[a].name == "__init__.py")}
             for a, bs in graph.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_no_test_module_imports_another_and_the_helpers_import_no_test_module():
    """Shared test code lives in tests/helpers/; conftest.py keeps only pytest's hooks and fixtures."""
    offenders = []
    for path in sorted((REPO_ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names
                          if n.startswith(("tests.test_", "tests.conftest"))]
    assert offenders == []


def test_any_experiments_module_imports_first():
    """Each module imports on its own, first of the project's modules (an import cycle that a lucky order hides
    shows up here): one fresh interpreter, the project's modules dropped from its cache before each import."""
    firsts = ["experiments.kinds.density", "experiments.kinds.logreg", "experiments.scaling", "experiments.pair",
              "experiments.config", "experiments.kinds.mnist", "experiments.runner", "optimizers", "problems.density",
              "visualization.plotting", "planner.make_shipped_plans"]
    script = (f"import importlib, sys\nfor first in {firsts!r}:\n"
              f"    for name in [m for m in sys.modules if m.split('.')[0] in {PACKAGES!r}]:\n"
              f"        del sys.modules[name]\n"
              f"    importlib.import_module(first)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]


def test_no_reaching_into_private_parts():
    for path in (REPO_ROOT / "experiments").rglob("*.py"):
        text = path.read_text()
        for pattern in ("_extras(", 'hasattr(problem, "before_round")', "problem.ranks =", "problem.log ="):
            assert pattern not in text, f"{path.name}: {pattern}"


def test_every_kind_is_one_registry_entry_with_its_metrics():
    assert list(KINDS) == ["mnist", "density", "online_density", "logreg", "rl_tag"]
    for kind in KINDS.values():
        assert kind.metrics == kind.setup.problem_class.available_metrics()
        recorded = kind.setup.problem_class.recorded_metrics(kind.metrics)
        assert set(recorded) <= set(METRICS), kind.name  # every recorded metric is catalogued
        choices = kind.problem_schema["metrics"][0].item
        assert set(kind.metrics) <= set(choices)


SWEEP = {
    "experiment": {"name": "lossy_sweep", "dataset": "mnist_subset", "validation_size": 100, "seed": 1,
                   "dtype": "float64", "execution": "loop",
                   "scaling": {"const": "num_nodes", "num_nodes": 4, "min_fied": 1.0, "max_fied": 1.0,
                               "num_trials": 1, "target_accuracy": 0.5}},
    "problem_configs": {
        "p1": {"problem_name": "dsgd", "train_batch_size": 8, "metrics_config": {"evaluate_frequency": 3},
               "optimizer_config": {"alg_name": "dsgd", "outer_iterations": 6, "alpha0": 0.05}},
    },
}


def test_a_sweep_that_loses_every_message_trains_each_robot_alone(tmp_path):
    """``experiment.links`` reaches the sweep's pairs: with every message lost, DSGD is local SGD."""
    lossy = tmp_path / "lossy.yaml"
    lossy.write_text(yaml.safe_dump({**SWEEP, "experiment": {**SWEEP["experiment"],
                                                             "links": {"drop_prob": 1.0}}}))
    lossless = tmp_path / "lossless.yaml"
    lossless.write_text(yaml.safe_dump(SWEEP))
    for config, out in ((lossy, "lossy"), (lossless, "lossless")):
        assert runner.main([str(config), "--output-dir", str(tmp_path / out), "--quiet"]) == 0
    theta = torch.load(tmp_path / "lossy" / "trial_00" / "dsgd_final_params.pt", weights_only=True)
    mixed = torch.load(tmp_path / "lossless" / "trial_00" / "dsgd_final_params.pt", weights_only=True)
    assert not torch.allclose(theta, mixed)  # the lossless sweep did mix

    # each robot alone: the same problem (same batches), no neighbours at all
    cfg = validate_scaling_config(load_yaml(lossless))
    plan = trial_plan(cfg["experiment"]["scaling"])[0]
    graph = graph_from_json(json.loads((tmp_path / "lossy" / "graphs" / "trial_00.json").read_text()))
    setup = KINDS["mnist"].setup(trial_config(cfg, plan), torch.device("cpu"), graph=graph)
    problem = setup.make_problem(cfg["problem_configs"]["p1"])
    alone = DSGD(problem, InProcessNetwork(nx.empty_graph(4), dtype=torch.float64),
                 {"outer_iterations": 6, "alpha0": 0.05})
    alone.train()
    torch.testing.assert_close(theta, problem.theta, rtol=1e-12, atol=1e-12)
