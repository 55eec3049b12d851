"""Hostile but fair input: bad names, paths, YAML files, value ranges and output locations.

Every case is refused before anything runs: exit 2, exactly one line on stderr that names the key or
file, and nothing written anywhere (the test runs in an empty folder and compares what is there after).
"""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.runner import main
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import TINY, data_overrides

P1 = "problem_configs.problem1"
OPT1, OPT2, OPT3 = (f"problem_configs.problem{i}.optimizer_config" for i in (1, 2, 3))


def tiny(**sets):
    """TINY writing under ./meta, with the given dotted keys set."""
    cfg = copy.deepcopy(TINY)
    cfg["experiment"]["output_metadir"] = "meta"
    for dotted, value in sets.items():
        node = cfg
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return cfg


def dump(cfg) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def text_with_duplicate(key_line: str, after: str) -> tuple[str, int, int]:
    """TINY as YAML text with ``key_line`` repeated right after the line ``after``; returns text and both lines."""
    lines = dump(tiny()).splitlines()
    lines.insert(lines.index(after) + 1, key_line)
    first, second = (i + 1 for i, line in enumerate(lines) if line == key_line)
    return "\n".join(lines) + "\n", first, second


DUP_PROBLEM = dump({"experiment": tiny()["experiment"], "problem_configs": {}}).replace(
    "problem_configs: {}\n",
    "problem_configs:\n  problem1:\n    problem_name: dsgd\n"
    "    optimizer_config: {alg_name: dsgd, outer_iterations: 3, alpha0: 0.01}\n"
    "  problem1:\n    problem_name: dsgt\n"
    "    optimizer_config: {alg_name: dsgt, outer_iterations: 3, alpha: 0.01}\n")
DUP_PROBLEM_LINES = [i + 1 for i, line in enumerate(DUP_PROBLEM.splitlines()) if line == "  problem1:"]
DUP_SEED, SEED_LINE_1, SEED_LINE_2 = text_with_duplicate("  seed: 1", "  name: tiny")

LAUGHS = "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")) + "]"  # 9^9 lol
BOMB = dump(tiny()).replace("  seed: 1\n", f"  seed: {LAUGHS}\n")
BOMB_IN_LIST = dump(tiny()).replace("  problem2:\n", f"  problem2:\n    metrics: {LAUGHS}\n")
DEEP = "experiment:\n  seed: " + "[" * 5000 + "]" * 5000 + "\n"

# case -> (config: dict | str | bytes, extra argv, text the one stderr line must hold, files to create first)
CASES = {
    # 1. path traversal
    "problem_name climbs out": (tiny(**{f"{P1}.problem_name": "../../x/pwn"}), [], f"{P1}.problem_name", ()),
    "experiment.name absolute": (tiny(**{"experiment.name": "/../../x/run"}), [], "experiment.name", ()),
    "experiment.name is ..": (tiny(**{"experiment.name": ".."}), [], "experiment.name", ()),
    "hidden name": (tiny(**{f"{P1}.problem_name": ".dinno"}), [], f"{P1}.problem_name", ()),
    "name like an option": (tiny(**{"experiment.name": "-rf"}), [], "experiment.name", ()),
    "problem_name via --set": (tiny(), ["--set", f"{P1}.problem_name=../x"], f"{P1}.problem_name", ()),
    # 2. names that would crash at the first results write
    "slash in name": (tiny(**{f"{P1}.problem_name": "a/b"}), [], f"{P1}.problem_name", ()),
    "backslash in name": (tiny(**{f"{P1}.problem_name": "a\\b"}), [], f"{P1}.problem_name", ()),
    "300-character name": (tiny(**{f"{P1}.problem_name": "a" * 300}), [], f"{P1}.problem_name", ()),
    "300-character run name": (tiny(**{"experiment.name": "r" * 300}), [], "experiment.name", ()),
    "NUL in name": (tiny(**{f"{P1}.problem_name": "a\x00b"}), [], f"{P1}.problem_name", ()),
    "newline in name": (tiny(**{"experiment.name": "a\nb"}), [], "experiment.name", ()),
    "empty name": (tiny(**{f"{P1}.problem_name": ""}), [], f"{P1}.problem_name", ()),
    "space in name": (tiny(**{"experiment.name": "my run"}), [], "experiment.name", ()),
    "number as name": (tiny(**{f"{P1}.problem_name": 5}), [], f"{P1}.problem_name", ()),
    "NUL in a path": (tiny(**{"experiment.output_metadir": "me\x00ta"}), [], "experiment.output_metadir", ()),
    "newline in a problem key": ({**tiny(), "problem_configs": {"p\nq": TINY["problem_configs"]["problem1"]}},
                                 [], "problem_configs.'p\\nq'", ()),
    # 3. YAML
    "duplicate problem key": (DUP_PROBLEM, [], "problem1 appears twice (lines {} and {})".format(*DUP_PROBLEM_LINES), ()),
    "duplicate nested key": (DUP_SEED, [], f"seed appears twice (lines {SEED_LINE_1} and {SEED_LINE_2})", ()),
    "billion laughs as a value": (BOMB, [], "experiment.seed", ()),
    "billion laughs in a list": (BOMB_IN_LIST, [], "problem_configs.problem2.metrics[0]", ()),
    "binary file": (bytes(range(256)) * 4, [], "binary", ()),
    "not UTF-8": (dump(tiny()).replace("tiny", "caf\xe9").encode("latin-1"), [], "not UTF-8", ()),
    "top-level list": ("- experiment\n- problem_configs\n", [], "expected a mapping", ()),
    "top-level scalar": ("42\n", [], "expected a mapping", ()),
    "top-level list with --set": ("[1, 2]\n", ["--set", "experiment.seed=3"], "expected a mapping", ()),
    "--set puts a list where a mapping goes": (tiny(), ["--set", "experiment.graph=[1, 2]"], "experiment.graph", ()),
    "--set through a scalar": (tiny(), ["--set", "experiment.seed.x=1"], "experiment.seed is not a mapping", ()),
    "very deep nesting": (DEEP, [], "nested deeper than", ()),
    "very deep nesting via --set": (tiny(), ["--set", "experiment.seed=" + "{a: " * 3000 + "1" + "}" * 3000],
                                    "--set", ()),
    "python object tag": (dump(tiny()).replace("seed: 1", "seed: !!python/object/apply:os.system [touch pwned]"),
                          [], "not valid YAML", ()),
    "5000-digit integer": (dump(tiny()).replace("seed: 1", "seed: " + "9" * 5000), [], "not valid YAML", ()),
    "huge file": ("# padding\n" * 200_000, [], "larger than 1 MiB", ()),
    "huge value in a message": (tiny(**{"experiment.seed": "x" * 100_000}), [], "experiment.seed", ()),
    "huge unknown key": (tiny(**{"experiment.graph": {"k" * 100_000: 1, "num_nodes": 4, "type": "cycle"}}), [],
                         "experiment.graph.", ()),
    # 4. value ranges
    "nan string": (tiny(**{"experiment.individual_training.lr": "nan"}), [], "individual_training.lr", ()),
    "inf": (tiny(**{f"{OPT2}.alpha0": float("inf")}), [], f"{OPT2}.alpha0", ()),
    "negative baseline lr": (tiny(**{"experiment.individual_training.lr": -0.1}), [], "individual_training.lr", ()),
    "negative primal lr": (tiny(**{f"{OPT1}.primal_lr_start": -0.005}), [], f"{OPT1}.primal_lr_start", ()),
    "negative rho_init": (tiny(**{f"{OPT1}.rho_init": -0.5}), [], f"{OPT1}.rho_init", ()),
    "negative alpha0": (tiny(**{f"{OPT2}.alpha0": -0.01}), [], f"{OPT2}.alpha0", ()),
    "negative alpha": (tiny(**{f"{OPT3}.alpha": -0.01}), [], f"{OPT3}.alpha", ()),
    "tloss_decay above 1": (tiny(**{f"{P1}.metrics_config.tloss_decay": 1.5}), [], "tloss_decay", ()),
    "tloss_decay below 0": (tiny(**{f"{P1}.metrics_config.tloss_decay": -0.1}), [], "tloss_decay", ()),
    "node_chunk_size 0": (tiny(**{"experiment.node_chunk_size": 0}), [], "experiment.node_chunk_size", ()),
    "num_filters 0": (tiny(**{"experiment.model.num_filters": 0}), [], "experiment.model.num_filters", ()),
    "kernel larger than the image": (tiny(**{"experiment.model.kernel_size": 29}), [], "kernel_size", ()),
    "negative baseline epochs": (tiny(**{"experiment.individual_training.epochs": -1}), [], "epochs", ()),
    "baseline batch 0": (tiny(**{"experiment.individual_training.train_batch_size": 0}), [],
                         "individual_training.train_batch_size", ()),
    "negative seed": (tiny(**{"experiment.seed": -1}), [], "experiment.seed", ()),
    "seed beyond 2^32 - 1": (tiny(**{"experiment.seed": 2**32}), [], "experiment.seed", ()),
    "more nodes than digits": (tiny(**{"experiment.data_split_type": "hetero", "experiment.graph.num_nodes": 11}),
                               [], "experiment.graph.num_nodes", ()),
    "evaluate_frequency 0": (tiny(**{f"{P1}.metrics_config.evaluate_frequency": 0}), [], "evaluate_frequency", ()),
    # 5. output locations
    "--output-dir is a file": (tiny(), ["--output-dir", "afile"], "--output-dir", ("afile",)),
    "--output-dir inside a file": (tiny(), ["--output-dir", "afile/out"], "--output-dir", ("afile",)),
    "output_metadir is a file": (tiny(**{"experiment.output_metadir": "afile"}), [], "experiment.output_metadir",
                                 ("afile",)),
    "output_metadir inside a file": (tiny(**{"experiment.output_metadir": "afile/meta"}), [],
                                     "experiment.output_metadir", ("afile",)),
}
if sys.platform.startswith("linux"):  # /proc refuses new files even to root
    CASES["--output-dir not writable"] = (tiny(), ["--output-dir", "/proc/nndt_out"], "--output-dir", ())


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refuse(tmp_path, monkeypatch, capsys, config, extra=(), fixtures=()) -> str:
    """Run ``config`` in an empty working folder; check exit 2, one stderr line and nothing written."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.yaml"
    if isinstance(config, dict):
        config = dump(config)
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    for name in fixtures:
        (tmp_path / name).write_text("not a folder")
    before = files_under(tmp_path)
    argv = [str(path), "--quiet"]
    for item in data_overrides():
        argv += ["--set", item]
    code = main([*argv, *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err[-2000:]
    assert len(lines) == 1, lines[:5]
    assert len(lines[0]) < 400, lines[0][:500]
    assert files_under(tmp_path) == before
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_with_one_line_and_nothing_written(case, tmp_path, monkeypatch, capsys):
    config, extra, expected, fixtures = CASES[case]
    line = refuse(tmp_path, monkeypatch, capsys, config, extra, fixtures)
    assert line.startswith("error: ") and expected in line, line


def test_name_rule_still_allows_ordinary_names_and_keeps_every_file_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "dsgt_v2.1-" + "x" * 90  # 100 characters: the longest allowed
    cfg = tiny(**{"experiment.name": "Run_01.a-b", "experiment.individual_training.train_solo": False,
                  "experiment.centralized": False})
    cfg["problem_configs"] = {"p": {**TINY["problem_configs"]["problem3"], "problem_name": name}}
    Path("cfg.yaml").write_text(dump(cfg))
    argv = ["cfg.yaml", "--quiet"]
    for item in data_overrides():
        argv += ["--set", item]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "meta").iterdir()
    assert run_dir.name.endswith("_Run_01.a-b")
    assert {p for p in files_under(tmp_path) if not p.startswith("meta")} == {"cfg.yaml"}
    assert (run_dir / f"{name}_results.pt").is_file()


def test_anchors_and_merge_keys_still_work(tmp_path, monkeypatch, capsys):
    """Refusing duplicate keys must not refuse YAML merge keys, where a later key overrides a merged one."""
    text = dump(tiny()).replace("  problem2:\n", "  problem2: &p2\n")
    text += "  problem4:\n    <<: *p2\n    problem_name: dsgd_again\n    bogus: 1\n"
    line = refuse(tmp_path, monkeypatch, capsys, text)
    assert "problem_configs.problem4.bogus: unknown key" in line  # got past loading: merge + override accepted


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into any folder")
def test_output_metadir_without_write_permission_is_refused(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = refuse(tmp_path, monkeypatch, capsys, tiny(**{"experiment.output_metadir": "locked/meta"}))
    finally:
        locked.chmod(0o755)
    assert "experiment.output_metadir" in line and "not writable" in line


def test_failed_download_leaves_no_folders(tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    cfg = tiny(**{"experiment.download": True})
    line = refuse(tmp_path, monkeypatch, capsys, cfg,
                  ["--set", "experiment.dataset=mnist", "--set", "experiment.data_dir=data/mnist"])
    assert "download" in line


@pytest.mark.integration
def test_billion_laughs_is_refused_fast_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    script = ("import resource, sys; from experiments.runner import main; "
              "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              f"code = main([{str(path)!r}, '--quiet']); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base); sys.exit(code)")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-1000:]
    assert time.monotonic() - start < 60
    grown_kib = int(proc.stdout.strip().splitlines()[-1])
    assert grown_kib < 100_000, grown_kib  # loading and refusing the bomb adds < 100 MB
    (line,) = proc.stderr.strip().splitlines()
    assert "experiment.seed" in line and len(line) < 200, line
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.integration
def test_no_config_at_all_prints_the_usage_in_one_line(capsys):
    assert main([]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CONFIG file given") and "usage: run.py" in lines[0]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "run.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_waypoint_file_that_is_not_numpy_is_named(tmp_path, monkeypatch, capsys):
    from tests.helpers.density import make_plan, tiny_online_config

    plan = make_plan(tmp_path / "plan")
    (plan / "paths" / "robot_1.npy").write_bytes(b"these are not waypoints\n" * 4)
    config = tmp_path / "cfg.yaml"
    config.write_text(dump(tiny_online_config(plan, rounds=2)))
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    assert main([str(config), "--quiet", "--output-dir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and files_under(tmp_path) == before
    line = lines[0]
    assert line.startswith("error: experiment.data.waypoint_subdir:") and "robot_1.npy" in line, line
    assert "not a NumPy .npy file" in line


def test_a_bare_on_or_off_is_read_as_the_word_yaml_made_a_boolean_of():
    """YAML 1.1 reads `compile: on` (and `--set experiment.compile=on`) as true: a choice of on / off takes it
    as the word; a boolean where the choice has no on / off is still refused."""
    from experiments.config import validate_config
    from foundation.schema import ConfigError

    raw = copy.deepcopy(TINY)
    for word, value in (("on", True), ("off", False)):
        raw["experiment"]["compile"] = yaml.safe_load(f"x: {word}")["x"]
        assert raw["experiment"]["compile"] is value
        assert validate_config(copy.deepcopy(raw))["experiment"]["compile"] == word
    raw["experiment"]["compile"] = "auto"
    raw["experiment"]["execution"] = True
    with pytest.raises(ConfigError, match="experiment.execution: True is not allowed"):
        validate_config(raw)
