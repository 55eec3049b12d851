"""Does the radio simulator predict a real network? A team of robot processes under packet loss from the kernel,
beside the one-process run with simulated message loss of the same rate.

    venv/bin/python experiments/real_radio.py CONFIG.yaml --output-dir DIR [--set KEY=VALUE ...] [--pairs a,b]
    venv/bin/python experiments/real_radio.py --resume DIR

The config is an experiment config with a top-level ``real_radio: {packet_loss: [0.0, 0.1, 0.3]}`` block. For
every loss p and every pair: ``team.py`` runs the pair as robot processes over Zenoh inside a network namespace
whose kernel drops a share p of the packets on their way in (``experiments/netns.py``: root, iproute2 and
nftables), and ``run.py`` runs it in one process with ``experiment.links: {model: independent, drop_prob: p}``.
``DIR/real_radio.csv`` has one row per (loss, pair, where): final top-1 (node mean and worst), rounds per second,
the bytes the kernel saw on the team's loopback against the bytes the framework counts, and the team's messages by
what became of them (used fresh, held rows used, missing at the deadline, dropped by cause); ``real_radio.png``
draws final top-1 against the loss. Runs that completed are kept on ``--resume``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from experiments.config import (
    add_whole_run_options,
    apply_overrides,
    check_output_folder,
    load_yaml,
    validate_config,
    whole_run_overrides,
)
from foundation import results_io
from foundation.log import LOG
from foundation.log import configure as configure_logging
from foundation.schema import ConfigError, excerpt
from problems.metrics import TOP1_ACCURACY

HERE = Path(__file__).resolve().parent
STUDY_KEY = "real_radio"
ROW_KEYS = ("packet_loss", "problem_name", "where", "status", "top1_mean", "top1_worst", "rounds", "seconds",
            "rounds_per_second", "mb_counted_per_robot", "mb_on_wire_per_robot", "kernel_packets_dropped",
            "messages_sent", "used_fresh", "used_held", "missing", "dropped")


def study_plan(raw: dict) -> tuple[list[float], dict]:
    """The loss rates and the validated experiment config (raises ConfigError with one line)."""
    block = raw.get(STUDY_KEY) if isinstance(raw, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("packet_loss"), list) or not block["packet_loss"]:
        raise ConfigError(f"{STUDY_KEY}.packet_loss: a real radio study needs a list of loss rates in [0, 1), "
                          f"e.g. {STUDY_KEY}: {{packet_loss: [0.0, 0.1, 0.3]}}")
    unknown = sorted(set(block) - {"packet_loss"})
    if unknown:
        raise ConfigError(f"{STUDY_KEY}.{unknown[0]}: unknown key; allowed: packet_loss")
    losses = []
    for value in block["packet_loss"]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"{STUDY_KEY}.packet_loss: {excerpt(value)} is not a loss rate in [0, 1)")
        losses.append(float(value))
    if len(set(losses)) != len(losses):
        raise ConfigError(f"{STUDY_KEY}.packet_loss: a rate is given twice")
    cfg = validate_config({k: v for k, v in raw.items() if k != STUDY_KEY})
    from experiments.team_run import team_unsupported

    reason = team_unsupported(cfg["experiment"], cfg)
    if reason is not None:
        raise ConfigError(reason)
    return losses, cfg


def tag(loss: float) -> str:
    return f"loss{round(loss * 100):02d}" if abs(loss * 100 - round(loss * 100)) < 1e-9 else f"loss{loss:g}"


def completed(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def run_team(config: Path, folder: Path, pair: str, loss: float, quiet: bool) -> dict:
    """The pair as a team of robot processes in a namespace that drops ``loss`` of the packets; the kernel's counts."""
    from experiments.netns import LossyNamespace, unavailable

    command = [sys.executable, str(HERE / "team.py")]
    command += ["--resume", str(folder)] if (folder / "config.yaml").is_file() else [
        str(config), "--output-dir", str(folder), "--pairs", pair]
    command += ["--quiet"]
    reason = unavailable()
    if reason is not None:
        if loss > 0:
            raise ConfigError(f"{STUDY_KEY}.packet_loss {loss:g}: {reason}")
        LOG.warning(f"note: {reason}; the lossless team runs on this machine's loopback")
        subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet else None)
        return {}
    with LossyNamespace(loss) as namespace:
        subprocess.run(namespace.command(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet else None)
        return namespace.counters()


def run_simulated(config: Path, folder: Path, pair: str, loss: float, quiet: bool) -> None:
    command = [sys.executable, str(HERE / "run.py")]
    if (folder / "manifest.json").is_file():
        command += ["--resume", str(folder)]
    else:
        command += [str(config), "--output-dir", str(folder), "--pairs", pair,
                    "--set", f"experiment.links={{model: independent, drop_prob: {loss}, seed: 0}}"]
    subprocess.run(command + ["--quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL if quiet else None)


def pair_row(folder: Path, pair: str, loss: float, where: str, robots: int, kernel: dict | None) -> dict:
    import torch

    row: dict = {"packet_loss": loss, "problem_name": pair, "where": where}
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = next(p for p in manifest["pairs"] if p["problem_name"] == pair)
    except (OSError, ValueError, StopIteration):
        return {**row, "status": "missing"}
    row["status"] = entry["status"]
    results = folder / f"{pair}_results.pt"
    if results.is_file():
        history = torch.load(results, weights_only=True)
        if history.get(TOP1_ACCURACY):
            final = torch.as_tensor(history[TOP1_ACCURACY][-1], dtype=torch.float64)
            final = final[~final.isnan()]
            row.update(top1_mean=round(float(final.mean()), 4), top1_worst=round(float(final.min()), 4))
    rounds, seconds = entry.get("rounds_completed", 0), entry.get("seconds", 0.0)
    row.update(rounds=rounds, seconds=round(seconds, 1),
               rounds_per_second=round(rounds / seconds, 2) if seconds else None,
               mb_counted_per_robot=round(entry.get("bytes_sent_total", 0.0) / robots / 1e6, 2))
    if kernel:
        row.update(mb_on_wire_per_robot=round((kernel["passed_bytes"] + kernel["dropped_bytes"]) / robots / 1e6, 2),
                   kernel_packets_dropped=kernel["dropped_packets"])
    team = entry.get("team") or {}
    if team:
        row.update(messages_sent=team.get("sent", 0), used_fresh=team.get("used_fresh", 0),
                   used_held=team.get("used_held", 0), missing=team.get("missing", 0),
                   dropped=", ".join(f"{k[len('dropped_'):]} {int(v)}" for k, v in sorted(team.items())
                                     if k.startswith("dropped_") and v) or "none")
    return row


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["problem_name"] for r in rows))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 3.6), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        for where, style in (("team", "o-"), ("simulated", "s--")):
            points = sorted((r["packet_loss"], r["top1_mean"], r["top1_worst"]) for r in rows
                            if r["problem_name"] == pair and r["where"] == where and r.get("top1_mean") is not None)
            if not points:
                continue
            loss, mean, worst = zip(*points)
            label = "robot processes, kernel packet loss" if where == "team" else "one process, simulated message loss"
            line, = ax.plot([100 * x for x in loss], mean, style, label=f"{label} (mean)")
            ax.plot([100 * x for x in loss], worst, style, color=line.get_color(), alpha=0.45, label=f"{label} (worst)")
        ax.set_title(pair)
        ax.set_xlabel("loss rate (%)")
        ax.set_ylabel("final top-1 accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    results_io.save_figure(fig, path, dpi=130)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="real_radio.py", description="A team of robot processes under real packet "
                                     "loss beside the one-process run with simulated loss of the same rate.")
    parser.add_argument("config", nargs="?", help="study YAML (with a real_radio block)")
    parser.add_argument("--output-dir", help="the study's folder (new or empty)")
    parser.add_argument("--resume", metavar="DIR", help="continue a study: completed runs are kept")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pairs", metavar="NAMES", help="only these pairs, comma-separated problem_names")
    parser.add_argument("--quiet", action="store_true")
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
    try:
        out_dir, raw = prepare(args)
        losses, cfg = study_plan(raw)
        from experiments.runner import parse_selection

        selection = parse_selection(args.pairs, cfg)
        pairs = [pc["problem_name"] for pc in cfg["problem_configs"].values()
                 if selection is None or pc["problem_name"] in selection]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    results_io.write_text(out_dir / "study.yaml", yaml.safe_dump(raw, sort_keys=False))
    config = out_dir / "config.yaml"
    results_io.write_text(config, yaml.safe_dump(cfg, sort_keys=False))
    robots = cfg["experiment"]["graph"]["num_nodes"]
    rows = []
    counters_path = out_dir / "kernel_counters.json"
    counters = json.loads(counters_path.read_text()) if counters_path.is_file() else {}
    try:
        for loss in losses:
            for pair in pairs:
                team = out_dir / f"team_{tag(loss)}_{pair}"
                if not completed(team):
                    LOG.info(f"{pair}, packet loss {loss:g}: robot processes")
                    counters[team.name] = run_team(config, team, pair, loss, args.quiet)
                    results_io.write_json(counters_path, counters)
                simulated = out_dir / f"simulated_{tag(loss)}_{pair}"
                if not completed(simulated):
                    LOG.info(f"{pair}, message loss {loss:g}: one process")
                    run_simulated(config, simulated, pair, loss, args.quiet)
                rows.append(pair_row(team, pair, loss, "team", robots, counters.get(team.name)))
                rows.append(pair_row(simulated, pair, loss, "simulated", robots, None))
    except KeyboardInterrupt:
        print(f"interrupted: continue with --resume {out_dir}", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results_io.write_csv(out_dir / "real_radio.csv", rows, fieldnames=list(ROW_KEYS))
    draw(rows, out_dir / "real_radio.png")
    print_rows(rows)
    print(f"\nresults: {out_dir / 'real_radio.csv'}\nfigure: {out_dir / 'real_radio.png'}")
    return 0 if all(r["status"] == "completed" for r in rows) else 1


def print_rows(rows: list[dict]) -> None:
    shown = [k for k in ROW_KEYS if any(r.get(k) is not None for r in rows)]
    cells = [shown] + [["-" if r.get(k) is None else str(r[k]) for k in shown] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(shown))]
    for i, cell in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(cell, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def prepare(args) -> tuple[Path, dict]:
    if bool(args.config) == bool(args.resume):
        raise ConfigError("give a CONFIG file (with --output-dir) or --resume DIR")
    if args.resume:
        out_dir = Path(args.resume).resolve()
        if not (out_dir / "study.yaml").is_file():
            raise ConfigError(f"--resume {out_dir}: not a real radio study's folder (needs study.yaml)")
        if args.overrides:
            raise ConfigError("--set, --rounds, --eval-every: not with --resume (the study's study.yaml is used)")
        return out_dir, load_yaml(out_dir / "study.yaml") or {}
    if not args.output_dir:
        raise ConfigError("--output-dir: required with a CONFIG file")
    check_output_folder("--output-dir", args.output_dir)
    out_dir = Path(args.output_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--output-dir {out_dir} exists and is not empty; choose a new folder")
    return out_dir, apply_overrides(copy.deepcopy(load_yaml(args.config) or {}), args.overrides)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
