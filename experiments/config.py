"""Experiment configuration: loading, ``--set`` overrides and validation.

The schema is the original research code's YAML schema plus a few keys (``experiment.problem``,
``dtype``, ``dataset``, ``centralized``, engine settings). Validation runs before anything else and
raises :class:`ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from optimizers import OPTIMIZERS
import math

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


Float, Int, Bool, Str = float, int, bool, str
OPTIONAL = None
SEED_RANGE = Range(0, 2**32 - 1)

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
    "name": (Str, REQUIRED),
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
    "individual_training": (INDIVIDUAL_SCHEMA, {}),
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
                   val_batch_size: int, **extra) -> dict:
    """Schema of one entry of ``problem_configs``; ``extra`` adds domain keys before optimizer_config."""
    return {
        "problem_name": (Str, REQUIRED),
        "train_batch_size": (Int, train_batch_size, AT_LEAST_ONE),
        "val_batch_size": (Int, val_batch_size, AT_LEAST_ONE),
        "verbose_evals": (Bool, False),
        "metrics": (ListOf(Choice(metrics)), default_metrics),
        "metrics_config": (METRICS_CONFIG, {}),
        "save_models": (Bool, False),
        **extra,
        "optimizer_config": ("optimizer", REQUIRED),
    }


MNIST_PROBLEM = problem_schema(MNIST_METRICS, ["forward_pass_count", "validation_loss", "consensus_error",
                                               "top1_accuracy", "current_epoch"], 64, 128)

# Problem kinds register their schemas here: kind -> (experiment schema, problem schema).
SCHEMAS: dict[str, tuple[dict, dict]] = {"mnist": (MNIST_EXPERIMENT, MNIST_PROBLEM)}


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(kind) -> str:
    if isinstance(kind, Choice):
        return "one of " + ", ".join(kind)
    if isinstance(kind, ListOf):
        return "a list"
    if isinstance(kind, dict):
        return "a mapping"
    return {Float: "a number", Int: "an integer", Bool: "true or false", Str: "a string"}[kind]


def _check_value(key: str, kind, value):
    if isinstance(kind, Choice):
        if value not in kind:
            raise ConfigError(f"{key}: {value!r} is not allowed{_did_you_mean(value, kind)}; "
                              f"allowed: {', '.join(kind)}")
        return value
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(f"{key}[{i}]", kind.item, v) for i, v in enumerate(value)]
    if isinstance(kind, dict):
        return validate_mapping(key, kind, value)
    if kind is Bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is Int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is Float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if kind is Str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(kind)


def validate_mapping(prefix: str, schema: dict, data: Any) -> dict:
    """Check ``data`` against ``schema`` (key -> (kind, default)); return it with defaults filled in."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    out = {}
    for key, value in data.items():
        if key not in schema:
            raise ConfigError(f"{prefix}.{key}: unknown key{_did_you_mean(key, schema)}; "
                              f"allowed: {', '.join(schema)}")
    for key, spec in schema.items():
        kind, default, bounds = schema_entry(spec)
        full = f"{prefix}.{key}"
        if key in data and data[key] is not None:
            if kind == "optimizer":
                out[key] = validate_optimizer(full, data[key])
            else:
                out[key] = _check_value(full, kind, data[key])
                if bounds is not None and not bounds.contains(out[key]):
                    raise ConfigError(f"{full}: must be {bounds.describe()}, got {out[key]!r}")
        elif default is REQUIRED:
            raise ConfigError(f"{full}: required key is missing")
        elif isinstance(kind, dict):
            out[key] = validate_mapping(full, kind, default)
        else:
            out[key] = copy.deepcopy(default)
    return out


def validate_optimizer(prefix: str, data: Any) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    name = data.get("alg_name")
    if name is None:
        raise ConfigError(f"{prefix}.alg_name: required key is missing; allowed: {', '.join(OPTIMIZERS)}")
    if name not in OPTIMIZERS:
        raise ConfigError(f"{prefix}.alg_name: {name!r} is not allowed{_did_you_mean(name, OPTIMIZERS)}; "
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
        if kind not in PROBLEM_KINDS:
            raise ConfigError(f"experiment.problem: {kind!r} is not allowed{_did_you_mean(kind, PROBLEM_KINDS)}; "
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
            raise ConfigError(f"{key}: unknown top-level key{hint}; allowed: experiment, problem_configs")
    experiment = raw.get("experiment")
    if not isinstance(experiment, dict):
        raise ConfigError("experiment: required mapping is missing")
    kind = infer_problem_kind(experiment)
    if kind not in SCHEMAS:
        raise ConfigError(f"experiment.problem: {kind!r} is not available in this installation; "
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
        prefix = f"problem_configs.{key}"
        pc = validate_mapping(prefix, problem_schema, value)
        if pc["problem_name"] in names or pc["problem_name"] in ("individual", "centralized"):
            raise ConfigError(f"{prefix}.problem_name: {pc['problem_name']!r} is used twice or reserved "
                              f"(individual, centralized); every problem needs its own name")
        names.add(pc["problem_name"])
        validated[key] = pc
    cfg = {"experiment": exp, "problem_configs": validated}
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


def _check_mnist(cfg: dict) -> None:
    exp = cfg["experiment"]
    n = exp["graph"]["num_nodes"]
    if exp["data_split_type"] == "hetero" and n > 10:
        raise ConfigError(f"experiment.data_split_type: hetero gives each node whole digit classes, "
                          f"so at most 10 nodes (got graph.num_nodes = {n}); use sorted, random or dirichlet")
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
        for low, high in (("min_N", "max_N"),):
            if scaling[low] > scaling[high]:
                raise ConfigError(f"experiment.scaling.{low}: {scaling[low]} is above {high} = {scaling[high]}")
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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML."""
    raw = copy.deepcopy(raw) if raw is not None else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


from experiments.density_config import register as _register_density  # noqa: E402

_register_density(SCHEMAS, CROSS_CHECKS)
