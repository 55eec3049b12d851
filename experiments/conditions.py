"""Every pair of a config under several radio conditions, one ordinary run each, and one table.

    venv/bin/python experiments/conditions.py CONFIG.yaml --output-dir DIR [--set KEY=VALUE ...] [--only a,b]
    venv/bin/python experiments/conditions.py --resume DIR [--only a,b]
    venv/bin/python experiments/conditions.py --combine DIR_OR_CSV [DIR_OR_CSV ...] --output-dir OUT [--only a,b]

A conditions config is an experiment config with a top-level ``conditions`` block: condition name -> the
``experiment`` keys that condition changes (``links``, ``asynchrony``, ``graph_schedule``, ``seed``...):

    conditions:
      lossless: {}
      independent_30: {links: {model: independent, drop_prob: 0.3}}
      asynchronous: {asynchrony: {activation: 0.8, max_delay: 5}}

Every condition's config is validated before anything runs. Each runs with ``run.py``'s machinery into
``DIR/<condition>/`` (the condition's config in ``DIR/configs/<condition>.yaml``); ``--resume DIR`` skips
the completed conditions and resumes the others from their checkpoints. ``DIR/conditions.csv`` has one row
per (condition, pair): status, the final node mean and worst robot of ``--metric`` (top-1 accuracy; e.g.
``map_balanced_accuracy`` for density maps), rounds and megabytes per robot until the node mean first reaches
``--target`` (default: the metric's own level, 0.9 for accuracies, 1e-6 for optimality gaps), megabytes sent; ``DIR/conditions.png`` draws the final node mean of every pair under
every condition. ``--combine`` joins the tables of conditions run in separate folders (on separate machines,
say, each with its own ``--only``) into one ``OUT/conditions.csv`` and ``OUT/conditions.png``; ``--only``
then picks the conditions and their order.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

from experiments.config import (  # noqa: E402
    add_whole_run_options,
    apply_overrides,
    check_output_folder,
    load_yaml,
    validate_config,
    whole_run_overrides,
)
from foundation.log import LOG
from foundation.log import configure as configure_logging
from foundation.schema import NAME_RULE, SAFE_NAME, ConfigError, excerpt  # noqa: E402
from problems.metrics import TOP1_ACCURACY

ROW_KEYS = ("condition", "problem_name", "alg_name", "status", "metric", "final_mean", "final_worst",
            "rounds_to_target", "mb_per_robot_to_target", "mb_per_robot_sent")


def condition_configs(raw: dict | None) -> dict[str, dict]:
    """Each condition's whole raw config (validated), in the order given; raises ConfigError."""
    if not isinstance(raw, dict) or not isinstance(raw.get("conditions"), dict) or not raw["conditions"]:
        raise ConfigError("conditions: a conditions config needs a top-level conditions block (name -> experiment "
                          "keys it changes), see experiments/conditions.py")
    base = {k: v for k, v in raw.items() if k != "conditions"}
    out = {}
    for name, changes in raw["conditions"].items():
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise ConfigError(f"conditions.{excerpt(name)}: a condition name must be {NAME_RULE}")
        if changes is None:
            changes = {}
        if not isinstance(changes, dict):
            raise ConfigError(f"conditions.{name}: expected a mapping of experiment keys, got {excerpt(changes)}")
        cfg = copy.deepcopy(base)
        cfg.setdefault("experiment", {})
        merge(cfg["experiment"], changes)
        try:
            validate_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"conditions.{name}: {exc}") from None
        out[name] = cfg
    return out


def merge(into: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def run_condition(name: str, cfg: dict, out_dir: Path, quiet: bool = False) -> int:
    """Run (or resume) one condition; its ``run.py`` exit status (with its notes and progress unless ``quiet``)."""
    import yaml

    from experiments import runner
    from foundation.results_io import atomic_path

    folder = out_dir / name
    manifest = folder / "manifest.json"
    quiet_flag = ["--quiet"] if quiet else []
    if manifest.is_file():
        status = json.loads(manifest.read_text()).get("status")
        if status == "completed":
            return 0
        return runner.main(["--resume", str(folder), *quiet_flag])
    config_path = out_dir / "configs" / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(config_path) as partial:
        Path(partial).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return runner.main([str(config_path), "--output-dir", str(folder), *quiet_flag])


def pair_rows(name: str, folder: Path, metric: str, target: float) -> list[dict]:
    """One row per pair of a condition's run folder; with faulty robots, the numbers are the honest robots'."""
    import torch

    from problems.metrics import METRICS

    lower_is_better = metric in METRICS and METRICS[metric].better == "lower"
    manifest = json.loads((folder / "manifest.json").read_text())
    rows = []
    for pair in manifest.get("pairs", []):
        if pair.get("alg_name") in ("individual", "centralized") or pair.get("problem_name") in ("individual",
                                                                                                 "centralized"):
            continue
        results = folder / f"{pair['problem_name']}_results.pt"
        history = torch.load(results, weights_only=True) if results.is_file() else {}
        row = {"condition": name, "problem_name": pair["problem_name"], "alg_name": pair.get("alg_name"),
               "status": pair.get("status"), "metric": metric, "final_mean": math.nan, "final_worst": math.nan,
               "rounds_to_target": math.nan, "mb_per_robot_to_target": math.nan, "mb_per_robot_sent": math.nan}
        accuracy, sent = history.get(metric, []), history.get("bytes_sent", [])
        faulty = pair.get("faulty_robots") or []

        def honest(values, per_robot: bool = True) -> torch.Tensor:
            """A round's per-robot values without the faulty robots' (the team's numbers are the honest ones');
            a team metric's one value as it is."""
            values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
            if per_robot and faulty and values.numel() > max(faulty):
                keep = torch.ones(values.numel(), dtype=torch.bool)
                keep[faulty] = False
                values = values[keep]
            return values

        by_robot = metric not in METRICS or METRICS[metric].per_robot
        if accuracy:
            last = honest(accuracy[-1], by_robot)
            last = last[~torch.isnan(last)]
            if last.numel():
                row["final_mean"] = float(last.mean())
                row["final_worst"] = float(last.max() if lower_is_better else last.min())
        if sent:
            row["mb_per_robot_sent"] = float(honest(sent[-1]).mean()) / 1e6
        for k, acc, bytes_then in zip(history.get("round", []), accuracy, sent or [None] * len(accuracy)):
            mean = float(honest(acc, by_robot).nanmean())
            if (mean <= target) if lower_is_better else (mean >= target):
                row["rounds_to_target"] = float(k)
                if bytes_then is not None:
                    row["mb_per_robot_to_target"] = float(honest(bytes_then).mean()) / 1e6
                break
        rows.append(row)
    return rows


def write_table(out_dir: Path, names: list[str], metric: str, target: float) -> list[dict]:
    rows = [r for name in names if (out_dir / name / "manifest.json").is_file()
            for r in pair_rows(name, out_dir / name, metric, target)]
    save_table(out_dir, rows, names, metric)
    return rows


def save_table(out_dir: Path, rows: list[dict], names: list[str], metric: str) -> None:
    import csv

    from foundation.results_io import atomic_path

    with atomic_path(out_dir / "conditions.csv") as partial:
        with open(partial, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=ROW_KEYS)
            writer.writeheader()
            writer.writerows(rows)
    if rows:
        draw(rows, names, metric, out_dir / "conditions.png")


def read_table(source: str) -> list[dict]:
    """The rows of a conditions.csv (``source`` is the file or its folder), numbers as floats."""
    import csv

    path = Path(source)
    if path.is_dir():
        path = path / "conditions.csv"
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != ROW_KEYS:
                raise ConfigError(f"--combine {excerpt(source)}: not a conditions table (its columns must be "
                                  f"{', '.join(ROW_KEYS)})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"--combine {excerpt(source)}: cannot read a conditions table ({exc})") from None
    numbers = ROW_KEYS[ROW_KEYS.index("final_mean"):]
    for row in rows:
        try:
            row.update({key: float(row[key]) if row[key] != "" else math.nan for key in numbers})
        except (TypeError, ValueError):
            raise ConfigError(f"--combine {excerpt(source)}: row {row.get('condition')}/{row.get('problem_name')} "
                              f"has a value that is not a number") from None
    return rows


def combined_rows(args) -> tuple[Path, list[dict], list[str]]:
    """The output folder, the rows of every --combine table (--only: these conditions, in this order) and
    the condition names; refuses a (condition, pair) that two chosen rows give, mixed metrics and a used --output-dir."""
    if args.config is not None or args.resume is not None or args.overrides:
        raise ConfigError("--combine: give only tables (folders or conditions.csv files), no CONFIG, --resume or --set")
    out_dir = new_output_dir(args.output_dir, "with --combine (the folder the joined table goes to)", "")
    given = [(row, source) for source in args.combine for row in read_table(source)]
    names = list(dict.fromkeys(row["condition"] for row, _ in given))
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ConfigError(f"--only: {excerpt(unknown[0])} is in no table; allowed: {', '.join(names)}")
        names = wanted
        given = [(row, source) for n in names for row, source in given if row["condition"] == n]
    rows: list[dict] = []
    origin: dict = {}
    for row, source in given:
        key = (row["condition"], row["problem_name"])
        if key in origin:
            raise ConfigError(f"--combine: condition {excerpt(key[0])}, pair {excerpt(key[1])} is in both "
                              f"{excerpt(origin[key])} and {excerpt(source)}; give each once (or leave one "
                              f"out with --only)")
        origin[key] = source
        rows.append(row)
    if not rows:
        raise ConfigError("--combine: the tables hold no rows")
    metrics = sorted({r["metric"] for r in rows})
    if len(metrics) > 1:
        raise ConfigError(f"--combine: the tables report different metrics ({', '.join(metrics)}); join one metric")
    notes = base_config_differences(args.combine, args.allow_different)
    if notes:  # the allowed differences go into the condition names
        for row, source in given:
            if source in notes:
                row["condition"] = f"{row['condition']} ({notes[source]})"
        names = list(dict.fromkeys(row["condition"] for row in rows))
    return out_dir, rows, names


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def base_config_differences(sources: list[str], allowed: list[str]) -> dict[str, str]:
    """The base configs (conditions.yaml without its conditions) of the tables to join must agree, but for the keys
    in ``allowed``: refused with one line naming the keys that differ, else {source: "key=value, ..."} for the
    allowed differences (the tables' condition names then carry them). A table without its conditions.yaml beside
    it cannot be compared: one note says so."""
    bases = {}
    for source in sources:
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        path = folder / "conditions.yaml"
        if not path.is_file():
            LOG.warning(f"note: --combine {source}: no conditions.yaml beside it; its settings cannot be compared")
            continue
        raw = load_yaml(path) or {}
        raw.pop("conditions", None)
        bases[source] = _flat(raw)
    if len(bases) < 2:
        return {}
    first_source, first = next(iter(bases.items()))
    notes: dict[str, str] = {}
    for source, base in bases.items():
        differing = sorted(k for k in set(first) | set(base) if first.get(k) != base.get(k))
        refused = [k for k in differing if not any(k == a or k.startswith(f"{a}.") for a in allowed)]
        if refused:
            shown = ", ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
            raise ConfigError(f"--combine: {source} was run with other settings than {first_source} ({shown}); "
                              f"join runs of one base config, or name what may differ with --allow-different KEY")
        if differing:
            notes[source] = ", ".join(f"{k}={base.get(k)}" for k in differing)
            notes.setdefault(first_source, ", ".join(f"{k}={first.get(k)}" for k in differing))
    return notes


def draw(rows: list[dict], names: list[str], metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foundation.results_io import atomic_path

    pairs = list(dict.fromkeys(r["problem_name"] for r in rows))
    conditions = [n for n in names if any(r["condition"] == n for r in rows)]
    width = 0.8 / max(1, len(conditions))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(pairs) + 2), 4.2))
    # one colour per condition (beyond 10, the default cycle would repeat colours)
    palette = plt.get_cmap("tab10" if len(conditions) <= 10 else "turbo")
    for c, condition in enumerate(conditions):
        values = {r["problem_name"]: r["final_mean"] for r in rows if r["condition"] == condition}
        xs = [p + (c - (len(conditions) - 1) / 2) * width for p in range(len(pairs))]
        color = palette(c) if len(conditions) <= 10 else palette(c / max(1, len(conditions) - 1))
        ax.bar(xs, [values.get(p, math.nan) for p in pairs], width, label=condition, color=color)
    ax.set_xticks(range(len(pairs)), pairs, rotation=30, ha="right")
    ax.set_ylabel(f"final {metric} (node mean)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, ncol=min(len(conditions), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)  # above the axes, where it covers no bar
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=120, bbox_inches="tight")  # the legend above the axes included
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Every pair of a config under several conditions.")
    parser.add_argument("config", nargs="?", help="a conditions config (YAML)")
    parser.add_argument("--resume", metavar="DIR", help="continue a conditions folder")
    parser.add_argument("--allow-different", action="append", default=[], metavar="KEY",
                        help="with --combine: a dotted config key the joined runs may differ in (its values go into "
                             "the condition names); repeatable")
    parser.add_argument("--combine", nargs="+", metavar="DIR_OR_CSV",
                        help="join the conditions.csv tables of these folders (or files) into --output-dir")
    parser.add_argument("--output-dir", metavar="DIR", help="where the conditions' runs go (new or empty)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted), before the conditions apply")
    parser.add_argument("--only", help="comma-separated condition names to run (default: all)")
    parser.add_argument("--metric", default=TOP1_ACCURACY,
                        help="the recorded metric the table reports (default top1_accuracy)")
    parser.add_argument("--target", type=float, default=None,
                        help="the node mean of --metric the table counts rounds and MB to (default: the "
                             "metric's own target, e.g. 0.9 for top1_accuracy)")
    parser.add_argument("--check", action="store_true",
                        help="validate every condition's config (and --set) and print them; run nothing, write nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes (warnings and results only)")
    add_whole_run_options(parser)
    args = parser.parse_args(argv)
    args.overrides = whole_run_overrides(args.rounds, args.eval_every) + args.overrides
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if exc.code is not None else 2
    configure_logging(quiet=args.quiet)
    if args.check:
        try:
            if args.config is None:
                raise ConfigError("--check: give a conditions CONFIG file")
            configs = condition_configs(apply_overrides(load_yaml(args.config), args.overrides))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"config OK: {len(configs)} conditions: {', '.join(configs)}")
        return 0
    if args.combine is not None:
        try:
            out_dir, rows, names = combined_rows(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
        save_table(out_dir, rows, names, rows[0]["metric"])
        from problems.metrics import METRICS

        metric = rows[0]["metric"]
        target = args.target if args.target is not None else getattr(METRICS.get(metric), "target", None)
        print_table(rows, metric, math.nan if target is None else target)
        print(f"{len(rows)} rows: {out_dir / 'conditions.csv'}")
        return 0
    try:
        out_dir, configs = prepare(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = list(configs) if not args.only else args.only.split(",")
    status = 0
    for name in names:
        LOG.info(f"condition {name}: {out_dir / name}")
        code = run_condition(name, configs[name], out_dir, args.quiet)
        status = status or code
        if code == 130:
            break
    rows = write_table(out_dir, list(configs), args.metric, args.target)
    print_table(rows, args.metric, args.target)
    print(f"{len(rows)} rows: {out_dir / 'conditions.csv'}")
    return status


def print_table(rows: list[dict], metric: str, target: float) -> None:
    """The combined table on stdout: every (condition, pair), final node mean and worst robot, rounds and megabytes
    per robot to ``target``."""
    fmt = lambda v, f: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)  # noqa: E731
    print(f"\n| condition | pair | status | final {metric} mean | worst robot | rounds to {target:g} | "
          f"MB/robot to {target:g} | MB/robot sent |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['condition']} | {r['problem_name']} | {r['status']} | {fmt(r['final_mean'], '{:.4g}')} | "
              f"{fmt(r['final_worst'], '{:.4g}')} | {fmt(r['rounds_to_target'], '{:.0f}')} | "
              f"{fmt(r['mb_per_robot_to_target'], '{:.2f}')} | {fmt(r['mb_per_robot_sent'], '{:.2f}')} |")


def new_output_dir(given: str | None, needed: str, hint: str) -> Path:
    """``--output-dir`` resolved, refused when missing, unwritable or not empty."""
    if not given:
        raise ConfigError(f"--output-dir: required {needed}")
    check_output_folder("--output-dir", given)
    out_dir = Path(given).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder{hint}")
    return out_dir


def prepare(args) -> tuple[Path, dict[str, dict]]:
    """The output folder and every condition's config; refuses bad input before anything is written."""
    from problems.metrics import METRICS

    if args.metric not in METRICS or not METRICS[args.metric].scalar:
        scalar = [m for m, info in METRICS.items() if info.scalar]
        raise ConfigError(f"--metric: {excerpt(args.metric)} is not a scalar metric; allowed: {', '.join(scalar)}")
    if args.target is None:  # the metric's own level (0.9 for accuracies, 1e-6 for optimality gaps, ...)
        if METRICS[args.metric].target is None:
            raise ConfigError(f"--target: {args.metric} has no default level; give one (e.g. --target 0.5)")
        args.target = METRICS[args.metric].target
    if not math.isfinite(args.target):
        raise ConfigError(f"--target: must be a finite number, got {args.target}")
    if (args.resume is None) == (args.config is None):
        raise ConfigError("give either a conditions CONFIG file or --resume DIR (not both, not neither)")
    if args.resume is not None:
        out_dir = Path(args.resume).resolve()
        if not (out_dir / "conditions.yaml").is_file():
            raise ConfigError(f"--resume {args.resume}: not a conditions folder (needs conditions.yaml)")
        if args.overrides:
            raise ConfigError("--resume: the folder's conditions.yaml is used; give no --set, --rounds or --eval-every")
        configs = condition_configs(load_yaml(out_dir / "conditions.yaml"))
    else:
        out_dir = new_output_dir(args.output_dir, "with a CONFIG (the folder the conditions' runs go to)",
                                 " (or --resume it)")
        raw = apply_overrides(load_yaml(args.config), args.overrides)
        configs = condition_configs(raw)
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in configs]
        if unknown:
            raise ConfigError(f"--only: {excerpt(unknown[0])} is not a condition; allowed: {', '.join(configs)}")
    if args.resume is None:
        import yaml

        from foundation.results_io import atomic_path

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "conditions.yaml") as partial:
            Path(partial).write_text(yaml.safe_dump(raw, sort_keys=False))
    return out_dir, configs


if __name__ == "__main__":
    from experiments.checkout import warn_if_elsewhere

    warn_if_elsewhere(__file__)
    sys.exit(main())
