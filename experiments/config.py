"""Experiment configuration: loading, ``--set`` overrides and validation.

The schema is the original research code's YAML schema plus a few keys (``experiment.problem``,
``dtype``, ``dataset``, ``centralized``, engine settings). Validation runs before anything else and
raises :class:`ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import reprlib
import tempfile
from pathlib import Path
from typing import Any

import yaml

from optimizers import OPTIMIZERS

from optimizers.compressors import COMPRESSOR_SCHEMAS
from optimizers.base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, REQUIRED, UNIT_INTERVAL, Range, schema_entry
from optimizers.graphs import GRAPH_TYPES
from problems.mnist_data import DATASET_CHOICES, SPLIT_TYPES


class ConfigError(ValueError):
    """A bad configuration or command line: one line saying which key and what is allowed."""


class Choice(tuple):
    """Allowed string values of a key."""


class ListOf:
    def __init__(self, item):
        self.item = item


class Name(str):
    """Kind of a string that becomes a file or folder name."""


Float, Int, Bool, Str = float, int, bool, str
OPTIONAL = None
SEED_RANGE = Range(0, 2**32 - 1)
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
MAX_DEPTH = 50  # nesting levels of a config file (the schema needs 5)
MAX_CONFIG_BYTES = 1 << 20

_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxstring, _EXCERPT.maxother = 2, 40, 40
_EXCERPT.maxlist = _EXCERPT.maxdict = _EXCERPT.maxtuple = 4


def excerpt(value, limit: int = 60) -> str:
    """A short, one-line repr of ``value`` for error messages, however large or deep the value is."""
    text = _EXCERPT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip(text: str, limit: int = 160) -> str:
    """``text`` as one short line (for error messages that quote text from files or the system)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _key(key) -> str:
    """A config key as printed in messages: as is when plain, else a short repr."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w.-]{1,60}", key) else excerpt(key)

PROBLEM_KINDS = ("mnist", "density", "online_density")
MNIST_METRICS = ("forward_pass_count", "validation_loss", "consensus_error", "top1_accuracy",
                 "current_epoch", "validation_as_vector", "train_loss_moving_average")
DENSITY_METRICS = ("forward_pass_count", "validation_loss", "consensus_error", "current_epoch",
                   "train_loss_moving_average", "mesh_grid_density", "current_position", "current_graph")

GRAPH_SCHEMA = {
    "num_nodes": (Int, REQUIRED, AT_LEAST_ONE),
    "type": (Choice(GRAPH_TYPES), REQUIRED),
    "p": (Float, OPTIONAL, UNIT_INTERVAL),
    "gen_attempts": (Int, 100, AT_LEAST_ONE),
    "radius": (Float, OPTIONAL, POSITIVE),
    "target_fiedler": (Float, OPTIONAL, POSITIVE),
}

INDIVIDUAL_SCHEMA = {
    "train_solo": (Bool, False),
    "optimizer": (Choice(("adam", "adamw", "sgd")), "adam"),
    "lr": (Float, 0.005, POSITIVE),
    "epochs": (Int, 1, AT_LEAST_ONE),
    "train_batch_size": (Int, 64, AT_LEAST_ONE),
    "val_batch_size": (Int, 128, AT_LEAST_ONE),
    "verbose": (Bool, True),
}

COMMON_EXPERIMENT = {
    "name": (Name, REQUIRED),
    "problem": (Choice(PROBLEM_KINDS), OPTIONAL),
    "data_dir": (Str, OPTIONAL),
    "output_metadir": (Str, OPTIONAL),
    "writeout": (Bool, True),
    "use_cuda": (Bool, False),
    "seed": (Int, 0, SEED_RANGE),
    "dtype": (Choice(("float32", "float64")), "float32"),
    "centralized": (Bool, False),
    "execution": (Choice(("auto", "grouped", "vmap", "loop")), "auto"),
    "node_chunk_size": (Int, OPTIONAL, AT_LEAST_ONE),
    "checkpoint_every": (Int, OPTIONAL, AT_LEAST_ONE),
    "individual_training": (INDIVIDUAL_SCHEMA, {}),
    # lossy and time-varying communication (optimizers/links.py)
    "links": ({"drop_prob": (Float, 0.0, UNIT_INTERVAL), "seed": (Int, 0, SEED_RANGE)}, {}),
    "graph_schedule": ({"graphs": (ListOf(GRAPH_SCHEMA), OPTIONAL),
                        "random_edges_per_round": (Int, OPTIONAL, AT_LEAST_ONE),
                        "seed": (Int, 0, SEED_RANGE)}, {}),
    # under torchrun (experiments/distributed_run.py): process-group backend and peer timeout
    "backend": (Choice(("auto", "gloo", "nccl")), "auto"),
    "dist_timeout_s": (Float, 60.0, POSITIVE),
}

MNIST_EXPERIMENT = {
    **COMMON_EXPERIMENT,
    "dataset": (Choice(DATASET_CHOICES), "mnist"),
    "download": (Bool, False),
    "data_split_type": (Choice(SPLIT_TYPES), "random"),
    "dirichlet_alpha": (Float, 0.5, POSITIVE),
    "validation_size": (Int, OPTIONAL, AT_LEAST_ONE),
    "loss": (Choice(("NLL",)), "NLL"),
    "graph": (GRAPH_SCHEMA, REQUIRED),
    "model": ({"num_filters": (Int, 3, AT_LEAST_ONE), "kernel_size": (Int, 5, AT_LEAST_ONE),
               "linear_width": (Int, 64, AT_LEAST_ONE)}, {}),
}

METRICS_CONFIG = {
    "evaluate_frequency": (Int, 20, AT_LEAST_ONE),
    "tloss_decay": (Float, 0.2, UNIT_INTERVAL),
    "mesh_only_at_end": (Bool, False),
    "eval_nodes": (Int, OPTIONAL, AT_LEAST_ONE),
}

def problem_schema(metrics: tuple[str, ...], default_metrics: list[str], train_batch_size: int,
                   val_batch_size: int, metrics_config: dict = METRICS_CONFIG, **extra) -> dict:
    """Schema of one entry of ``problem_configs``; ``extra`` adds domain keys before optimizer_config."""
    return {
        "problem_name": (Name, REQUIRED),
        "train_batch_size": (Int, train_batch_size, AT_LEAST_ONE),
        "val_batch_size": (Int, val_batch_size, AT_LEAST_ONE),
        "verbose_evals": (Bool, False),
        "metrics": (ListOf(Choice(metrics)), default_metrics),
        "metrics_config": (metrics_config, {}),
        "save_models": (Bool, False),
        **extra,
        "optimizer_config": ("optimizer", REQUIRED),
    }


MNIST_PROBLEM = problem_schema(MNIST_METRICS, ["forward_pass_count", "validation_loss", "consensus_error",
                                               "top1_accuracy", "current_epoch"], 64, 128)

# Problem kinds register their schemas here: kind -> (experiment schema, problem schema).
SCHEMAS: dict[str, tuple[dict, dict]] = {"mnist": (MNIST_EXPERIMENT, MNIST_PROBLEM)}


def _did_you_mean(word, options) -> str:
    if not isinstance(word, str) or len(word) > 100:
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(kind) -> str:
    if isinstance(kind, Choice):
        return "one of " + ", ".join(kind)
    if isinstance(kind, ListOf):
        return "a list"
    if isinstance(kind, dict):
        return "a mapping"
    return {Float: "a number", Int: "an integer", Bool: "true or false", Str: "a string", Name: "a name"}[kind]


def _check_value(key: str, kind, value):
    if isinstance(kind, Choice):
        if value not in kind:
            raise ConfigError(f"{key}: {excerpt(value)} is not allowed{_did_you_mean(value, kind)}; "
                              f"allowed: {', '.join(kind)}")
        return value
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {excerpt(value)}")
        return [_check_value(f"{key}[{i}]", kind.item, v) for i, v in enumerate(value)]
    if isinstance(kind, dict):
        return validate_mapping(key, kind, value)
    if kind is Bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {excerpt(value)}")
        return value
    if kind is Int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {excerpt(value)}")
        return value
    if kind is Float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {excerpt(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {excerpt(value)}")
        return float(value)
    if kind is Name:
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
            raise ConfigError(f"{key}: {excerpt(value)} cannot name a file; use {NAME_RULE}")
        return value
    if kind is Str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {excerpt(value)}")
        if "\0" in value:
            raise ConfigError(f"{key}: {excerpt(value)} contains a NUL character")
        return value
    raise TypeError(kind)


def validate_mapping(prefix: str, schema: dict, data: Any) -> dict:
    """Check ``data`` against ``schema`` (key -> (kind, default)); return it with defaults filled in."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {excerpt(data)}")
    out = {}
    for key, value in data.items():
        if key not in schema:
            raise ConfigError(f"{prefix}.{_key(key)}: unknown key{_did_you_mean(key, schema)}; "
                              f"allowed: {', '.join(schema)}")
    for key, spec in schema.items():
        kind, default, bounds = schema_entry(spec)
        full = f"{prefix}.{key}"
        if key in data and data[key] is not None:
            if kind == "optimizer":
                out[key] = validate_optimizer(full, data[key])
            elif kind == "compressor":
                out[key] = validate_compressor(full, data[key])
            else:
                out[key] = _check_value(full, kind, data[key])
                if bounds is not None and not bounds.contains(out[key]):
                    raise ConfigError(f"{full}: must be {bounds.describe()}, got {excerpt(out[key])}")
        elif default is REQUIRED:
            raise ConfigError(f"{full}: required key is missing")
        elif isinstance(kind, dict):
            out[key] = validate_mapping(full, kind, default)
        else:
            out[key] = copy.deepcopy(default)
    return out


def validate_compressor(prefix: str, data: Any) -> dict:
    """``{name: ..., <that compressor's keys>}``, checked against the compressor's own schema."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping such as {{name: top_k, fraction: 0.01}}, got {data!r}")
    name = data.get("name")
    if name not in COMPRESSOR_SCHEMAS:
        raise ConfigError(f"{prefix}.name: {name!r} is not allowed{_did_you_mean(name, COMPRESSOR_SCHEMAS)}; "
                          f"allowed: {', '.join(COMPRESSOR_SCHEMAS)}")
    return validate_mapping(prefix, {"name": (Str, REQUIRED), **COMPRESSOR_SCHEMAS[name]}, data)


def validate_optimizer(prefix: str, data: Any) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {excerpt(data)}")
    name = data.get("alg_name")
    if name is None:
        raise ConfigError(f"{prefix}.alg_name: required key is missing; allowed: {', '.join(OPTIMIZERS)}")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(f"{prefix}.alg_name: {excerpt(name)} is not allowed{_did_you_mean(name, OPTIMIZERS)}; "
                          f"allowed: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    schema = {"alg_name": (Str, REQUIRED)}
    for key, spec in cls.config_schema.items():
        kind, default, bounds = schema_entry(spec)
        kind = Choice(kind) if isinstance(kind, tuple) else kind
        schema[key] = (kind, default, bounds)
    out = validate_mapping(prefix, schema, data)
    if name == "dinno":
        if out.get("primal_lr_start") is None and out.get("primal_lr") is None:
            raise ConfigError(f"{prefix}.primal_lr_start: required for dinno (or the constant primal_lr)")
        if out.get("lr_decay_type") != "constant" and out.get("primal_lr_finish") is None:
            raise ConfigError(f"{prefix}.primal_lr_finish: required when lr_decay_type is "
                              f"{out['lr_decay_type']}")
    return out


def infer_problem_kind(experiment: dict) -> str:
    kind = experiment.get("problem")
    if kind is not None:
        if not isinstance(kind, str) or kind not in PROBLEM_KINDS:
            raise ConfigError(f"experiment.problem: {excerpt(kind)} is not allowed{_did_you_mean(kind, PROBLEM_KINDS)}; "
                              f"allowed: {', '.join(PROBLEM_KINDS)}")
        return kind
    data = experiment.get("data")
    if isinstance(data, dict):
        return "online_density" if "num_scans_in_window" in data else "density"
    return "mnist"


def validate_config(raw: Any) -> dict:
    """The validated, default-filled configuration (raises ConfigError)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping with keys 'experiment' and 'problem_configs'")
    for key in raw:
        if key not in ("experiment", "problem_configs"):
            hint = _did_you_mean(key, ("experiment", "problem_configs"))
            raise ConfigError(f"{_key(key)}: unknown top-level key{hint}; allowed: experiment, problem_configs")
    experiment = raw.get("experiment")
    if not isinstance(experiment, dict):
        raise ConfigError("experiment: required mapping is missing")
    kind = infer_problem_kind(experiment)
    if kind not in SCHEMAS:
        raise ConfigError(f"experiment.problem: {excerpt(kind)} is not available in this installation; "
                          f"allowed: {', '.join(SCHEMAS)}")
    exp_schema, problem_schema = SCHEMAS[kind]
    exp = validate_mapping("experiment", exp_schema, experiment)
    exp["problem"] = kind

    problems = raw.get("problem_configs")
    if not isinstance(problems, dict) or not problems:
        raise ConfigError("problem_configs: expected a mapping with at least one problem, "
                          "e.g. problem1: {problem_name: dinno, optimizer_config: {alg_name: dinno, ...}}")
    validated = {}
    names = set()
    for key, value in problems.items():
        prefix = f"problem_configs.{_key(key)}"
        if _key(key) != key:
            raise ConfigError(f"{prefix}: a problem key must be 1 to 60 letters, digits, '.', '_' or '-'")
        pc = validate_mapping(prefix, problem_schema, value)
        if pc["problem_name"] in names or pc["problem_name"] in ("individual", "centralized"):
            raise ConfigError(f"{prefix}.problem_name: {pc['problem_name']!r} is used twice or reserved "
                              f"(individual, centralized); every problem needs its own name")
        names.add(pc["problem_name"])
        validated[key] = pc
    cfg = {"experiment": exp, "problem_configs": validated}
    check_graph_schedule(exp)
    CROSS_CHECKS[kind](cfg)
    return cfg


def check_graph_parameters(graph: dict) -> None:
    """The parameter each graph type needs."""
    needs = {"random": ("p", "edge probability in (0, 1]"), "disk": ("radius", "link distance"),
             "fiedler": ("target_fiedler", "algebraic connectivity to reach")}
    if graph["type"] in needs:
        key, what = needs[graph["type"]]
        if graph.get(key) is None:
            raise ConfigError(f"experiment.graph.{key}: required for graph type {graph['type']} ({what})")


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
        needs = {"random": "p", "disk": "radius", "fiedler": "target_fiedler"}.get(g["type"])
        if needs is not None and g.get(needs) is None:
            raise ConfigError(f"experiment.graph_schedule.graphs[{i}].{needs}: required for graph type {g['type']}")


def _check_mnist(cfg: dict) -> None:
    exp = cfg["experiment"]
    n = exp["graph"]["num_nodes"]
    if exp["data_split_type"] == "hetero" and n > 10:
        raise ConfigError(f"experiment.graph.num_nodes: {n} nodes but only 10 digits; data_split_type hetero "
                          f"gives each node whole digit classes, so use at most 10 nodes or split sorted, "
                          f"random or dirichlet")
    check_graph_parameters(exp["graph"])
    kernel = exp["model"]["kernel_size"]
    if kernel > 27:
        raise ConfigError(f"experiment.model.kernel_size: {kernel} leaves nothing of a 28x28 digit after the "
                          f"2x2 pooling; use at most 27")


CROSS_CHECKS = {"mnist": _check_mnist}

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
        first_line = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {_key(key)} appears twice (lines {first_line[key]} and {line}); "
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
        where = f"--set {excerpt(item, 80)}"
        if "=" not in item:
            raise ConfigError(f"{where}: expected dotted.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"{where}: empty key segment in {excerpt(key)}")
        value = parse_yaml(text, where)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    raise ConfigError(f"{where}: {_key('.'.join(parts[:i + 1]))} is not a mapping")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


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


from experiments.density_config import register as _register_density  # noqa: E402

_register_density(SCHEMAS, CROSS_CHECKS)
