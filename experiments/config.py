"""Experiment configuration: loading, ``--set`` overrides and validation.

The schema is the original research code's YAML schema plus a few keys (``experiment.problem``,
``dtype``, ``dataset``, ``centralized``, engine settings). Validation runs before anything else and
raises :class:`ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml

from experiments.kinds import KINDS, kind_of
from experiments.kinds.base import check_graph_parameters
from foundation.schema import (
    AT_LEAST_ONE,
    OPTIONAL,
    POSITIVE,
    UNIT_INTERVAL,
    Choice,
    ConfigError,
    Float,
    Int,
    Range,
    clip,
    did_you_mean,
    excerpt,
    key_text,
    validate_mapping,
)
from optimizers.comm.faults import check_faults

MAX_DEPTH = 50  # nesting levels of a config file (the schema needs 5)
MAX_CONFIG_BYTES = 1 << 20


def validate_config(raw: Any) -> dict:
    """The validated, default-filled configuration (raises ConfigError)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping with keys 'experiment' and 'problem_configs'")
    for key in raw:
        if key not in ("experiment", "problem_configs"):
            hint = did_you_mean(key, ("experiment", "problem_configs"))
            if key == "tune":
                hint = " (a tuning config: run it with experiments/tune.py)"
            raise ConfigError(f"{key_text(key)}: unknown top-level key{hint}; allowed: experiment, problem_configs")
    experiment = raw.get("experiment")
    if not isinstance(experiment, dict):
        raise ConfigError("experiment: required mapping is missing")
    kind = kind_of(experiment)
    exp = validate_mapping("experiment", kind.experiment_schema, experiment)
    exp["problem"] = kind.name

    problems = raw.get("problem_configs")
    if not isinstance(problems, dict) or not problems:
        raise ConfigError("problem_configs: expected a mapping with at least one problem, "
                          "e.g. problem1: {problem_name: dinno, optimizer_config: {alg_name: dinno, ...}}")
    validated = {}
    names = set()
    for key, value in problems.items():
        prefix = f"problem_configs.{key_text(key)}"
        if key_text(key) != key:
            raise ConfigError(f"{prefix}: a problem key must be 1 to 60 letters, digits, '.', '_' or '-'")
        pc = validate_mapping(prefix, kind.problem_schema, value)
        if pc["problem_name"] in names or pc["problem_name"] in ("individual", "centralized"):
            raise ConfigError(f"{prefix}.problem_name: {pc['problem_name']!r} is used twice or reserved "
                              f"(individual, centralized); every problem needs its own name")
        names.add(pc["problem_name"])
        validated[key] = pc
    cfg = {"experiment": exp, "problem_configs": validated}
    check_representable(cfg)
    check_graph_schedule(exp)
    graph = exp.get("graph") or {}
    if graph.get("num_nodes") is not None:  # robots known before the graph is built: check the faults now
        check_faults(exp["faults"], graph["num_nodes"])
        check_team(exp["team"], graph["num_nodes"])
    links = exp["links"]
    if links["model"] == "distance" and links["distance"]["radius"] is None and kind.name not in ("density", "online_density"):
        raise ConfigError("experiment.links.distance.radius: required for links.model distance on a graph "
                          "without a radius (the density kinds' disk graphs have one)")
    ind = exp["individual_training"]
    if ind["lr_decay_type"] != "constant" and ind["lr_finish"] is None:
        raise ConfigError(f"experiment.individual_training.lr_finish: required when lr_decay_type is "
                          f"{ind['lr_decay_type']}")
    kind.cross_check(cfg)
    return cfg


def check_team(team: dict, robots: int) -> None:
    """``experiment.team``'s hosts fit the team's robots (its ports are checked when it runs as a team)."""
    hosts = team["hosts"]
    if len(hosts) not in (1, robots):
        raise ConfigError(f"experiment.team.hosts: {len(hosts)} hosts for {robots} robots; give one host (every robot "
                          f"on it) or one per robot")
    for key in ("router", "listen_host"):
        value = team.get(key)
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ConfigError(f"experiment.team.{key}: {value!r} is not an address")
    for host in hosts:
        if not host or any(c.isspace() or c in "/[]" for c in host):
            raise ConfigError(f"experiment.team.hosts: {host!r} is not a host name or address")


def check_representable(cfg: dict) -> None:
    """Every number a pair computes with fits the run's float type (float32: at most 3.4e38): a step of 1e308 would
    only overflow once training started."""
    import torch

    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg["experiment"]["dtype"]]
    largest = torch.finfo(dtype).max

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, float) and abs(value) > largest:
            raise ConfigError(f"{prefix}: {value:g} does not fit the run's {cfg['experiment']['dtype']} (at most "
                              f"{largest:.3g}); use a smaller value or experiment.dtype: float64")

    for key, pc in cfg["problem_configs"].items():
        walk(f"problem_configs.{key}", pc)


def check_graph_schedule(exp: dict) -> None:
    """Either a list of graphs over the experiment's nodes or a number of random edges per round."""
    schedule = exp.get("graph_schedule") or {}
    graphs, edges = schedule.get("graphs"), schedule.get("random_edges_per_round")
    if graphs is not None and edges is not None:
        raise ConfigError("experiment.graph_schedule: give either graphs or random_edges_per_round, not both")
    if graphs is not None and not graphs:
        raise ConfigError("experiment.graph_schedule.graphs: expected at least one graph")
    num_nodes = (exp.get("graph") or {}).get("num_nodes")
    for i, g in enumerate(graphs or []):
        if num_nodes is not None and g["num_nodes"] != num_nodes:
            raise ConfigError(f"experiment.graph_schedule.graphs[{i}].num_nodes: must equal "
                              f"experiment.graph.num_nodes ({num_nodes}), got {g['num_nodes']}")
        check_graph_parameters(g, f"experiment.graph_schedule.graphs[{i}]")


# ------------------------------------------------------------------ scaling study (experiments/scaling.py)
SCALING_SCHEMA = {
    "const": (Choice(("fiedler", "num_nodes")), "fiedler"),
    "min_N": (Int, 10, Range(2.0)),
    "max_N": (Int, 100, Range(2.0)),
    "target_fied": (Float, 1.0, POSITIVE),
    "min_fied": (Float, 0.1, POSITIVE),
    "max_fied": (Float, 2.0, POSITIVE),
    "num_nodes": (Int, 20, Range(2.0)),
    "num_trials": (Int, 10, AT_LEAST_ONE),
    "target_accuracy": (Float, OPTIONAL, UNIT_INTERVAL),
    "target_fraction": (Float, 0.9, UNIT_INTERVAL),
}


def is_scaling_config(raw: Any) -> bool:
    """The scaling-study form: a top-level ``problem`` or an ``experiment.scaling`` block."""
    return isinstance(raw, dict) and ("problem" in raw or (
        isinstance(raw.get("experiment"), dict) and "scaling" in raw["experiment"]))


def validate_scaling_config(raw: Any) -> dict:
    """A scaling study: ``experiment.scaling`` plus one top-level ``problem`` (the original's form) or
    ``problem_configs``. Returns the validated config with ``experiment.scaling`` filled in and
    ``experiment.graph`` describing the largest trial's graph (every trial builds its own)."""
    raw = copy.deepcopy(raw)
    experiment = raw.get("experiment")
    if not isinstance(experiment, dict):
        raise ConfigError("experiment: required mapping is missing")
    if "graph" in experiment:
        raise ConfigError("experiment.graph: a scaling study builds one Fiedler-targeted disk graph per trial; "
                          "set experiment.scaling instead")
    scaling = validate_mapping("experiment.scaling", SCALING_SCHEMA, experiment.pop("scaling", None))
    if "problem" in raw:
        if "problem_configs" in raw:
            raise ConfigError("problem: give either one top-level problem or problem_configs, not both")
        raw["problem_configs"] = {"problem": raw.pop("problem")}
    kind = kind_of(experiment)
    if not kind.sweepable:
        raise ConfigError(f"experiment.scaling: not for experiment.problem {kind.name} (its graph follows the "
                          f"robots); allowed: {', '.join(k.name for k in KINDS.values() if k.sweepable)}")
    if "data_split_type" in kind.experiment_schema:
        experiment.setdefault("data_split_type", "sorted")  # the original study splits MNIST sorted by label
    if scaling["const"] == "fiedler":
        if scaling["min_N"] > scaling["max_N"]:
            raise ConfigError(f"experiment.scaling.min_N: {scaling['min_N']} is above max_N = {scaling['max_N']}")
        distinct = scaling["max_N"] - scaling["min_N"] + 1
        if scaling["num_trials"] > distinct:
            raise ConfigError(f"experiment.scaling.num_trials: {scaling['num_trials']} trials but only {distinct} "
                              f"team sizes from min_N to max_N")
        if scaling["target_fied"] > scaling["min_N"]:
            raise ConfigError(f"experiment.scaling.target_fied: {scaling['target_fied']:g} is above the complete "
                              f"graph's value {scaling['min_N']} for min_N robots")
        largest, target = scaling["max_N"], scaling["target_fied"]
    else:
        if scaling["min_fied"] > scaling["max_fied"]:
            raise ConfigError(f"experiment.scaling.min_fied: {scaling['min_fied']:g} is above max_fied = "
                              f"{scaling['max_fied']:g}")
        if scaling["max_fied"] > scaling["num_nodes"]:
            raise ConfigError(f"experiment.scaling.max_fied: {scaling['max_fied']:g} is above the complete "
                              f"graph's value {scaling['num_nodes']} for num_nodes robots")
        largest, target = scaling["num_nodes"], scaling["max_fied"]
    experiment["graph"] = {"num_nodes": largest, "type": "fiedler", "target_fiedler": target}
    cfg = validate_config(raw)
    cfg["experiment"]["scaling"] = scaling
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping and nesting deeper than MAX_DEPTH."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_text(key)} appears twice (lines {first_line[key]} and {line}); "
                        f"give each key once", key_node.start_mark)
                first_line[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """``text`` parsed as safe YAML; any problem is a one-line ConfigError that starts with ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: e.g. a 5,000-digit integer
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}:{line} not valid YAML ({clip(problem)})") from None


def load_yaml(path: str | Path) -> dict | None:
    """The config file's top-level mapping (None for an empty file); ConfigError for anything else."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else None
        data = path.read_bytes() if size is not None and size <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{clip(path)}: cannot read the config file ({type(exc).__name__})") from None
    if size is None:
        raise ConfigError(f"{path}: config file not found")
    if data is None:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys 'experiment' and 'problem_configs' at the "
                          f"top, got a {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict | None, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML."""
    try:
        raw = copy.deepcopy(raw) if raw is not None else {}
    except RecursionError:
        raise ConfigError(f"config: nested deeper than {MAX_DEPTH} levels") from None
    for item in overrides:
        where = f"--set {clip(item, 100)}"
        if "=" not in item:
            raise ConfigError(f"{where}: expected dotted.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"{where}: empty key segment in {excerpt(key)}")
        value = parse_yaml(text, where)
        for target in pair_targets(raw, parts, where):
            _set(raw, target, value, where)
    return raw


def pair_targets(raw: dict, parts: list[str], where: str) -> list[list[str]]:
    """The keys a ``problem_configs.<pair>...`` override sets: ``<pair>`` is a key of problem_configs, a pair's
    problem_name, or ``*`` (every pair); anything else is refused with the pairs there are."""
    if parts[0] != "problem_configs" or len(parts) < 3:
        return [parts]
    if parts[1] == "*" and "problem_configs" not in raw and isinstance(raw.get("problem"), dict):
        return [["problem", *parts[2:]]]  # a scaling sweep's one pair
    if not isinstance(raw.get("problem_configs"), dict):
        return [parts]
    pairs = raw["problem_configs"]
    name = parts[1]
    if name == "*":
        return [["problem_configs", key, *parts[2:]] for key in pairs]
    if name in pairs:
        return [parts]
    by_name = [key for key, pair in pairs.items() if isinstance(pair, dict) and pair.get("problem_name") == name]
    if by_name:
        return [["problem_configs", by_name[0], *parts[2:]]]
    names = [f"{key} ({pair.get('problem_name')})" if isinstance(pair, dict) and pair.get("problem_name") not in
             (None, key) else key for key, pair in pairs.items()]
    raise ConfigError(f"{where}: problem_configs has no pair {key_text(name)}; its pairs: {', '.join(names)} "
                      f"(a key, a problem_name or * for all)")


def _set(raw: dict, parts: list[str], value, where: str) -> None:
    node = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                raise ConfigError(f"{where}: {key_text('.'.join(parts[:i + 1]))} is not a mapping")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def whole_run_overrides(rounds: int | None, eval_every: int | None) -> list[str]:
    """``--rounds N`` and ``--eval-every N`` as overrides of every pair (a scaling sweep's one ``problem`` too)."""
    prefix = "problem_configs.*"
    out = []
    if rounds is not None:
        out.append(f"{prefix}.optimizer_config.outer_iterations={int(rounds)}")
    if eval_every is not None:
        out.append(f"{prefix}.metrics_config.evaluate_frequency={int(eval_every)}")
    return out


def add_whole_run_options(parser) -> None:
    """``--rounds`` and ``--eval-every`` on a driver's command line."""
    parser.add_argument("--rounds", type=_positive_int, metavar="N",
                        help="every pair's outer_iterations (as --set problem_configs.*.optimizer_config."
                             "outer_iterations=N)")
    parser.add_argument("--eval-every", type=_positive_int, metavar="N",
                        help="every pair's metrics_config.evaluate_frequency")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_output_folder(label: str, path: str | Path) -> None:
    """``path`` is a folder, or can be made one, and is writable; checked before anything is written."""
    try:
        path = Path(path).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{label}: {existing} is a file, not a folder; choose a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{label}: {clip(path, 200)} is not writable ({reason}); "
                          f"choose a folder you can write to") from None



ROUND_KEYS = ("outer_iterations",)  # what a resumed run may change: how long it trains


def _without_rounds(node):
    if isinstance(node, dict):
        return {k: _without_rounds(v) for k, v in node.items() if k not in ROUND_KEYS}
    if isinstance(node, list):
        return [_without_rounds(v) for v in node]
    return node


def config_hash(cfg: dict) -> str:
    """SHA-256 of a validated config, ``outer_iterations`` left out (a resumed run may train longer): what a
    run's manifest and its checkpoints record, so that a folder's config and checkpoints can be checked
    against the run that wrote them."""
    import hashlib
    import json

    text = json.dumps(_without_rounds(cfg), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_differences(old, new, prefix: str = "") -> list[str]:
    """Every dotted key whose value differs between two configs, ``outer_iterations`` left out."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            if key in ROUND_KEYS:
                continue
            found += config_differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return found
    return [] if old == new else [prefix or "config"]
