"""Figures of experiment results, shared by the runner and the notebooks.

``load_results(folder)`` reads an output folder; the ``plot_*`` functions draw one metric of every
pair on one axis (mean over nodes, with the min-max range of the nodes shaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from foundation.results_io import atomic_path, save_figure  # noqa: E402
from problems.metrics import METRICS, TOP1_ACCURACY, VALIDATION_LOSS, figure_metrics, label  # noqa: E402


def load_results(folder: str | Path) -> dict[str, dict]:
    """problem_name -> results dict (metric -> list of per-evaluation values), in run order."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    results = {}
    for pair in manifest["pairs"]:
        path = folder / f"{pair['problem_name']}_results.pt"
        if path.exists():
            results[pair["problem_name"]] = torch.load(path, weights_only=True)
    return results


def latest_output(problems: tuple[str, ...], base: str | Path, kind: str = "run", say: bool = True) -> str:
    """The most recently written *completed* output folder under ``base`` whose manifest says it is a ``kind`` of one
    of ``problems`` ("" when there is none). ``kind``: "run" (experiments/run.py: a manifest without a kind),
    "scaling" or "tuning"; a folder whose manifest cannot be read is skipped. With ``say``, one line names the folder
    chosen and the newer ones skipped (a crashed, interrupted or still running run has nothing whole to draw)."""
    found = []
    for manifest in Path(base).glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind", "run") == kind and data.get("problem") in problems:
            found.append((manifest.stat().st_mtime, manifest.parent, data.get("status")))
    found.sort(key=lambda f: f[0], reverse=True)
    skipped: list[str] = []
    for _, folder, status in found:
        if status == "completed":
            if say:
                reason = f" (newer but not completed: {', '.join(skipped)})" if skipped else ""
                print(f"results: {folder}{reason}")
            return str(folder)
        skipped.append(f"{folder.name} {status or 'without a status'}")
    if say and skipped:
        print(f"no completed run under {base} (not completed: {', '.join(skipped)})")
    return ""


def load_graph(folder: str | Path) -> nx.Graph:
    from foundation.graph_files import graph_from_json
    return graph_from_json(json.loads((Path(folder) / "graph.json").read_text()))


def megabytes_per_node(res: dict) -> torch.Tensor | None:
    """Mean over nodes of the megabytes each node has sent, at every evaluation (None: nothing sent)."""
    if not res.get("bytes_sent"):
        return None
    sent = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in res["bytes_sent"]])
    return sent.mean(1) / 1e6 if bool((sent > 0).any()) else None


def plot_metric(results: dict[str, dict], metric: str, ax=None, log_scale: bool | None = None,
                x: str = "round"):
    """One line per pair: node mean vs round (``x="megabytes"``: vs megabytes sent per node, pairs that
    sent nothing left out), shaded between node min and max."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    drawn, positive = 0, False
    palette = plt.cm.tab20(np.linspace(0, 1, 20)) if len(results) > 10 else plt.cm.tab10(np.arange(10))
    for index, (name, res) in enumerate(results.items()):
        if metric not in res or not res[metric]:
            continue
        rounds = torch.as_tensor(res["round"][:len(res[metric])], dtype=torch.float64)
        if x == "megabytes":  # a log axis, so that messages 50x smaller are not squeezed against zero
            megabytes = megabytes_per_node(res)
            if megabytes is None:
                continue
            rounds = megabytes[:len(res[metric])]
            keep = rounds > 0
            rounds, res = rounds[keep], {**res, metric: [v for v, k in zip(res[metric], keep.tolist()) if k]}
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in res[metric]])
        missing = torch.isnan(values)  # nodes left out of an evaluation (metrics_config.eval_nodes)
        mean = values.nanmean(1)
        low = values.masked_fill(missing, float("inf")).min(1).values
        high = values.masked_fill(missing, float("-inf")).max(1).values
        line, = ax.plot(rounds, mean, label=name, lw=1.8, color=palette[index % len(palette)])
        if values.shape[1] > 1:
            ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.18, lw=0)
        drawn += 1
        positive = positive or bool((values[~missing] > 0).any())
    ax.set_xlabel("megabytes sent per node (mean over nodes)" if x == "megabytes" else "round")
    if x == "megabytes" and drawn:
        ax.set_xscale("log")
    ax.set_ylabel(label(metric))
    wants_log = log_scale or (log_scale is None and metric in METRICS and METRICS[metric].log_scale)
    if wants_log and positive:  # a log axis needs a positive value to show (a diverged pair may have none)
        ax.set_yscale("log")
    if drawn:
        ax.legend(title="mean over nodes; band = min-max", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_graph(graph: nx.Graph, ax=None, title: str | None = None):
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    pos = nx.get_node_attributes(graph, "pos") or nx.circular_layout(graph)
    nx.draw_networkx(graph, pos=pos, ax=ax, node_color="#4c72b0", font_color="white", node_size=320,
                     font_size=8, edge_color="#777777")
    ax.set_title(title or f"communication graph: {graph.number_of_nodes()} nodes, "
                          f"{graph.number_of_edges()} edges")
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def save_standard_figures(folder: str | Path, metrics=None) -> list[Path]:
    """Write figures/<metric>.png for each metric any pair recorded, and figures/graph.png."""
    folder = Path(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    results = load_results(folder)
    written = []
    for metric in figure_metrics() if metrics is None else metrics:
        if not any(metric in res and res[metric] for res in results.values()):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        plot_metric(results, metric, ax)
        ax.set_title(label(metric) + " vs round")
        fig.tight_layout()
        path = out / f"{metric}.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    for metric, name in ((TOP1_ACCURACY, "top1"), ("optimality_gap", "optimality_gap")):
        if not any(res.get(metric) and megabytes_per_node(res) is not None for res in results.values()):
            continue
        fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(13, 4.4))
        plot_metric(results, metric, by_round)
        by_round.set_title(f"{label(metric)} vs round")
        plot_metric(results, metric, by_bytes, x="megabytes")
        by_bytes.set_title(f"{label(metric)} vs megabytes sent per node")
        fig.tight_layout()
        path = out / f"{name}_vs_round_and_megabytes.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    if any(res.get("map_balanced_accuracy") for res in results.values()):
        written.append(save_map_quality_figure(results, out / "map_quality.png"))
    if (folder / "graph.json").exists():
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        plot_graph(load_graph(folder), ax)
        fig.tight_layout()
        path = out / "graph.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def save_map_quality_figure(results: dict[str, dict], path: Path) -> Path:
    """Map balanced accuracy and wall IoU against round for every pair (node mean, min-max band)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for ax, metric in zip(axes, ("map_balanced_accuracy", "map_wall_iou")):
        plot_metric(results, metric, ax)
        ax.set_title(label(metric) + " vs round")
    axes[0].axhline(0.5, color="0.4", lw=0.8, ls=":")  # what a map without walls scores
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def save_density_maps(folder: str | Path, image, paths: list) -> Path:
    """figures/density_maps.png, laid out like the original paper's figure: the floor plan with every
    robot's path, each method's final map (robot 0's for the distributed methods) with its validation
    loss and map quality, then three robots trained alone (the first, a middle and the last robot)."""
    import math

    import numpy as np

    folder = Path(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    results = load_results(folder)
    panels, alone = [], []  # (title, mesh (H', W'), results, node)
    for name, res in results.items():
        if not res.get("mesh_grid_density"):
            continue
        mesh = torch.as_tensor(res["mesh_grid_density"][-1])
        if name == "individual":
            robots = sorted({0, mesh.shape[0] // 2, mesh.shape[0] - 1})
            alone += [(f"robot {i} alone", mesh[i], res, i) for i in robots]
        else:
            panels.append((f"{name}: robot 0's map" if mesh.shape[0] > 1 else f"{name}: map", mesh[0], res, 0))
    panels += alone
    ny, nx_ = image.shape
    extent = (-nx_ / 2, nx_ / 2, ny / 2, -ny / 2)
    count = 1 + len(panels)
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    aspect = ny / nx_
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, (4.2 * aspect + 0.8) * rows), squeeze=False)
    ax = axes[0][0]
    ax.imshow(image, cmap="gray", extent=extent, vmin=0, vmax=1)
    colors = plt.cm.tab10(np.arange(len(paths)) % 10)
    for i, path in enumerate(paths):
        ax.plot(path[:, 0], path[:, 1], color=colors[i], lw=1.2, label=f"robot {i}")
        ax.plot(path[0, 0], path[0, 1], "o", color=colors[i], ms=4)
    ax.set_title("ground truth and robot paths", fontsize=9)
    ax.legend(fontsize=6, loc="upper right", ncol=2)
    for idx, (title, mesh, res, node) in enumerate(panels, start=1):
        ax = axes[idx // cols][idx % cols]
        ax.imshow(mesh.numpy(), cmap="gray", extent=extent, vmin=0, vmax=1)
        val = res.get(VALIDATION_LOSS)
        if val:
            title += f"\nval. loss {float(torch.as_tensor(val[-1]).reshape(-1)[node]):.4f}"
        if res.get("map_balanced_accuracy"):
            acc = float(torch.as_tensor(res["map_balanced_accuracy"][-1]).reshape(-1)[node])
            iou = float(torch.as_tensor(res["map_wall_iou"][-1]).reshape(-1)[node])
            title += f"\nmap bal. acc. {acc:.3f}, wall IoU {iou:.3f}"
        ax.set_title(title, fontsize=9)
    for idx in range(count, rows * cols):
        axes[idx // cols][idx % cols].axis("off")
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = out / "density_maps.png"
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def mesh_history(res: dict) -> list[tuple[int, torch.Tensor]]:
    """(round, maps (N, H', W')) of every evaluation that kept the mesh, in order."""
    meshes = res.get("mesh_grid_density") or []
    rounds = res.get("mesh_round") or res.get("round", [])
    return [(int(torch.as_tensor(k)), torch.as_tensor(m)) for k, m in zip(rounds, meshes)]


def milestone_rounds(last: int) -> list[int]:
    """The rounds a map strip shows: an eighth, a quarter and half of the run, and its end (4,000 rounds:
    500, 1,000, 2,000, 4,000)."""
    return sorted({max(1, last // 8), max(1, last // 4), max(1, last // 2), last})


def _draw_plan(ax, image, paths, extent, legend: bool = False):
    ax.imshow(image, cmap="gray", extent=extent, vmin=0, vmax=1)
    colors = plt.cm.tab10(np.arange(len(paths)) % 10)
    for i, path in enumerate(paths):
        ax.plot(path[:, 0], path[:, 1], color=colors[i], lw=1.0, label=f"robot {i}")
        ax.plot(path[0, 0], path[0, 1], "o", color=colors[i], ms=3)
    if legend:
        ax.legend(fontsize=5, loc="upper right", ncol=2)
    return colors


def save_map_strips(folder: str | Path, image, paths: list, rounds: list[int] | None = None) -> Path | None:
    """figures/density_map_strips.png: one strip per pair (ground truth with every robot's path, then robot 0's
    map at each of ``rounds``, by default :func:`milestone_rounds` of the first pair's run), each map titled with
    robot 0's map quality then. The map of each round is the one kept at that round, or the last kept before
    it (a panel that would repeat the previous one is left empty). None when no pair kept its map at more than
    one evaluation."""
    folder = Path(folder)
    full = load_results(folder)
    results = {name: mesh_history(res) for name, res in full.items()}
    results = {name: hist for name, hist in results.items() if len(hist) > 1}
    if not results:
        return None
    rounds = rounds or milestone_rounds(next(iter(results.values()))[-1][0])
    ny, nx_ = image.shape
    extent = (-nx_ / 2, nx_ / 2, ny / 2, -ny / 2)
    cols = 1 + len(rounds)
    fig, axes = plt.subplots(len(results), cols, figsize=(3.0 * cols, (3.0 * ny / nx_ + 0.6) * len(results)),
                             squeeze=False)
    for index, (row, (name, hist)) in enumerate(zip(axes, results.items())):
        _draw_plan(row[0], image, paths, extent, legend=index == 0)
        row[0].set_title(f"{name}\nground truth and paths", fontsize=8)
        res = full[name]
        evaluated = [int(torch.as_tensor(k)) for k in res.get("round", [])]
        shown = None
        for ax, wanted in zip(row[1:], rounds):
            kept = [(k, m) for k, m in hist if k <= wanted]
            if not kept or kept[-1][0] == shown:
                ax.axis("off")
                continue
            k, mesh = kept[-1]
            shown = k
            ax.imshow(mesh[0].numpy(), cmap="gray", extent=extent, vmin=0, vmax=1)
            title = f"round {k}" + (": robot 0" if mesh.shape[0] > 1 else "")
            if res.get("map_balanced_accuracy") and k in evaluated:
                e = evaluated.index(k)
                acc = float(torch.as_tensor(res["map_balanced_accuracy"][e]).reshape(-1)[0])
                iou = float(torch.as_tensor(res["map_wall_iou"][e]).reshape(-1)[0])
                title += f"\nbal. acc. {acc:.3f}, wall IoU {iou:.3f}"
            ax.set_title(title, fontsize=8)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = folder / "figures" / "density_map_strips.png"
    path.parent.mkdir(exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_density_animation(folder: str | Path, image, paths: list, pair: str | None = None,
                           path: str | Path | None = None, fps: int = 4) -> Path | None:
    """A GIF of the robots driving (their positions at each evaluation that kept a map, or their paths' mean
    positions where positions were not recorded) with their communication links (the recorded graph, else
    the run's ``graph.json``), beside robot 0's map of ``pair`` (default: the first pair that kept its map
    more than once) forming. Default file: figures/density_animation.gif. None when no pair has frames."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    folder = Path(folder)
    results = load_results(folder)
    if pair is None:
        pair = next((n for n, r in results.items() if len(mesh_history(r)) > 1), None)
    if pair is None or pair not in results or len(mesh_history(results[pair])) < 2:
        return None
    res = results[pair]
    frames = mesh_history(res)
    evaluated = [int(torch.as_tensor(k)) for k in res.get("round", [])]
    num_robots = len(paths)
    fixed = np.zeros((num_robots, num_robots), dtype=bool)
    if (folder / "graph.json").exists():
        for i, j in load_graph(folder).edges():
            if i < num_robots and j < num_robots:
                fixed[i, j] = fixed[j, i] = True
    centres = np.stack([np.asarray(p).mean(axis=0) for p in paths])

    def at(key, k, default):
        values = res.get(key)
        if not values or k not in evaluated or evaluated.index(k) >= len(values):
            return default
        return torch.as_tensor(values[evaluated.index(k)]).numpy()

    ny, nx_ = image.shape
    extent = (-nx_ / 2, nx_ / 2, ny / 2, -ny / 2)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5 * ny / nx_ + 0.8))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    colors = _draw_plan(axes[0], image, paths, extent)
    for line in axes[0].lines:
        line.set_alpha(0.35)
    dots = axes[0].scatter(centres[:, 0], centres[:, 1], c=colors[:num_robots], s=40, zorder=3,
                           edgecolors="white", linewidths=0.8)
    links: list = []
    shown = axes[1].imshow(frames[0][1][0].numpy(), cmap="gray", extent=extent, vmin=0, vmax=1)
    left = axes[0].set_title("")
    right = axes[1].set_title("")

    def draw(f):
        k, mesh = frames[f]
        where = at("current_position", k, centres)
        adjacency = at("current_graph", k, fixed)
        dots.set_offsets(where)
        for line in links:
            line.remove()
        links.clear()
        for i in range(num_robots):
            for j in range(i + 1, num_robots):
                if adjacency[i, j]:
                    links.extend(axes[0].plot(where[[i, j], 0], where[[i, j], 1], color="tab:cyan", lw=1.2))
        shown.set_data(mesh[0].numpy())
        left.set_text(f"round {k}: robots and their links")
        acc = at("map_balanced_accuracy", k, None)
        right.set_text(f"{pair}: robot 0's map" + (f" (bal. acc. {float(acc.reshape(-1)[0]):.3f})"
                                                   if acc is not None else ""))
        return [dots, shown, left, right, *links]

    fig.tight_layout()
    animation = FuncAnimation(fig, draw, frames=len(frames), blit=False)
    path = Path(path) if path is not None else folder / "figures" / "density_animation.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        animation.save(str(partial), writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path


def save_tuning_figures(folder: str | Path, rows: list[dict], tune: dict) -> list[Path]:
    """figures/tune_<pair>.png for a tuning folder: the objective of every finished trial against its
    number (the best so far as a line) and against each tuned parameter (pruned and failed trials apart)."""
    import math

    folder = Path(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    written = []
    objective = tune["objective"]
    maximize = objective["direction"] == "maximize"
    for pair in dict.fromkeys(r["pair"] for r in rows):
        trials = [r for r in rows if r["pair"] == pair]
        params = [k for k in dict.fromkeys(k for r in trials for k in r) if k.startswith("params_")]
        fig, axes = plt.subplots(1, 1 + len(params), figsize=(4.2 * (1 + len(params)), 3.6), squeeze=False)
        done = [r for r in trials if r["state"] == "complete" and not math.isnan(r["objective"])]
        ax = axes[0][0]
        ax.plot([r["trial"] for r in done], [r["objective"] for r in done], "o", ms=4, label="complete")
        best, line = None, []
        for r in done:
            if best is None or (r["objective"] > best if maximize else r["objective"] < best):
                best = r["objective"]
            line.append((r["trial"], best))
        if line:
            ax.step(*zip(*line), where="post", color="k", lw=1, label="best so far")
        others = [r for r in trials if r["state"] != "complete"]
        if others:
            ax.plot([r["trial"] for r in others], [ax.get_ylim()[0]] * len(others), "x", color="0.5",
                    label="pruned / failed")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{objective['summary']} of {label(objective['metric'])}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        for ax, name in zip(axes[0][1:], params):
            xs = [r[name] for r in done if name in r]
            ax.plot(xs, [r["objective"] for r in done if name in r], "o", ms=4)
            key = name[len("params_"):]
            bounds: dict = next((b for b in tune["space"].values() if key in b), {}).get(key, {})
            if "log_uniform" in bounds:
                from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # labels even inside one decade
                ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(key)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{pair}: {len(done)} complete of {len(trials)} trials", fontsize=10)
        fig.tight_layout()
        path = out / f"tune_{pair}.png"
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def accuracy_table(results: dict[str, dict], threshold: float = 0.9) -> list[dict]:
    """Per pair: final mean / min top-1 over nodes, and the first evaluated round (and megabytes sent
    per node by then) at which the mean top-1 reached ``threshold`` (None: not reached)."""
    rows = []
    for name, res in results.items():
        if not res.get(TOP1_ACCURACY):
            continue
        top1 = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in res[TOP1_ACCURACY]])
        mb = megabytes_per_node(res)
        reached = (top1.mean(1) >= threshold).nonzero()
        first = int(reached[0]) if len(reached) else None
        rows.append({"pair": name, "final_mean": float(top1[-1].mean()), "final_min": float(top1[-1].min()),
                     "rounds_to_threshold": None if first is None else int(res["round"][first]),
                     "mb_to_threshold": None if first is None or mb is None else float(mb[first]),
                     "mb_total": None if mb is None else float(mb[-1])})
    return rows


def print_accuracy_table(folders: list[str], threshold: float = 0.9) -> None:
    """Markdown rows of ``accuracy_table`` for each output folder (e.g. a lossless and a lossy run)."""
    fmt = lambda v, f="{:.3f}": "not reached" if v is None else f.format(v)  # noqa: E731
    print(f"| run | pair | final top-1 mean / min | rounds to mean {threshold} | MB/node to mean {threshold} "
          f"| MB/node total |")
    print("|---|---|---|---|---|---|")
    for folder in folders:
        for r in accuracy_table(load_results(folder), threshold):
            silent = r["mb_total"] is None  # a pair that sends nothing (the baselines): no megabytes to count
            print(f"| {Path(folder).name} | {r['pair']} | {r['final_mean']:.3f} / {r['final_min']:.3f} | "
                  f"{fmt(r['rounds_to_threshold'], '{}')} | "
                  f"{'-' if silent else fmt(r['mb_to_threshold'], '{:.2f}')} | "
                  f"{'-' if silent else fmt(r['mb_total'], '{:.2f}')} |")


def last_quarter_accuracy(res: dict) -> tuple[float, float] | None:
    """Top-1 averaged over the evaluations in the last quarter of the rounds: (node mean, worst node)."""
    if not res.get(TOP1_ACCURACY):
        return None
    rounds = torch.as_tensor(res["round"], dtype=torch.float64)
    top1 = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in res[TOP1_ACCURACY]])
    late = top1[rounds > 0.75 * float(rounds[-1])]
    return float(late.mean(1).mean()), float(late.min(1).values.mean())


def pair_statuses(folder: str | Path) -> dict[str, str]:
    """problem_name -> status of summary.csv ('completed', 'diverged', ...); empty without the file."""
    import csv
    path = Path(folder) / "summary.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {row["problem_name"]: row.get("status", "") for row in csv.DictReader(f)}


def seed_table(folders: list[str], threshold: float = 0.9) -> list[dict]:
    """Per pair, one entry per folder (seed) that holds it: the ``accuracy_table`` figures, the
    last-quarter top-1 (node mean, worst node) and whether the run diverged."""
    per_pair: dict[str, dict] = {}
    for folder in folders:
        results = load_results(folder)
        statuses = pair_statuses(folder)
        for row in accuracy_table(results, threshold):
            entry = per_pair.setdefault(row["pair"], {"pair": row["pair"], "runs": []})
            entry["runs"].append({**row, "last_quarter": last_quarter_accuracy(results[row["pair"]]),
                                  "diverged": statuses.get(row["pair"]) == "diverged"})
    return list(per_pair.values())


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """'mean (min-max)', or the value alone when all print alike."""
    if fmt.format(min(values)) == fmt.format(max(values)):
        return fmt.format(sum(values) / len(values))
    return f"{fmt.format(sum(values) / len(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _reached(values: list, fmt: str) -> str:
    """Mean over the runs that reached the threshold, with 'k/n' when not all did; '-' when none did."""
    hit = [v for v in values if v is not None]
    if not hit:
        return "-"
    cell = fmt.format(sum(hit) / len(hit))
    return cell if len(hit) == len(values) else f"{cell} ({len(hit)}/{len(values)})"


def print_seed_table(folders: list[str], threshold: float = 0.9) -> None:
    """Markdown rows over seeds (one folder per seed): final top-1 node mean and worst node, and the
    last-quarter top-1 (node mean / worst node), each as mean (min-max); rounds and MB per node to a mean
    top-1 of ``threshold`` averaged over the seeds that reached it; MB per node sent in all."""
    print(f"| pair | seeds | final top-1 mean | final top-1 worst robot | last quarter mean / worst robot | "
          f"rounds to mean {threshold} | MB/robot to mean {threshold} | MB/robot sent |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in seed_table(folders, threshold):
        runs = entry["runs"]
        quarters = [r["last_quarter"] for r in runs]
        diverged = sum(r["diverged"] for r in runs)
        name = entry["pair"] + (f" (diverged in {diverged}/{len(runs)})" if diverged else "")
        sent = [r["mb_total"] for r in runs if r["mb_total"] is not None]
        print(f"| {name} | {len(runs)} | {_spread([r['final_mean'] for r in runs])} | "
              f"{_spread([r['final_min'] for r in runs])} | {_spread([q[0] for q in quarters])} / "
              f"{_spread([q[1] for q in quarters])} | {_reached([r['rounds_to_threshold'] for r in runs], '{:.0f}')} | "
              f"{_reached([r['mb_to_threshold'] for r in runs], '{:.1f}')} | "
              f"{_spread(sent, '{:.1f}') if sent else '-'} |")


def seed_curves(folders: list[str], metric: str = TOP1_ACCURACY) -> dict[str, dict]:
    """Per pair, a results dict whose "nodes" are the folders (seeds): at every evaluation round, each
    seed's node mean of ``metric`` and its megabytes sent per node, so that ``plot_metric`` draws the mean
    over seeds with the seeds' min-max band. A run that stopped early (diverged) counts until it stopped."""
    runs: dict[str, list[dict]] = {}
    for folder in folders:
        for name, res in load_results(folder).items():
            if res.get(metric):
                runs.setdefault(name, []).append(res)
    curves = {}
    for name, group in runs.items():
        longest = max(group, key=lambda r: len(r[metric]))
        evaluations = len(longest[metric])
        values = torch.full((evaluations, len(group)), float("nan"), dtype=torch.float64)
        sent = torch.full_like(values, float("nan"))
        for seed, res in enumerate(group):
            for e, v in enumerate(res[metric]):
                values[e, seed] = torch.as_tensor(v, dtype=torch.float64).nanmean()
            mb = megabytes_per_node(res)
            if mb is not None:
                sent[:len(mb), seed] = mb[:evaluations] * 1e6
        filled = sent.nanmean(1, keepdim=True).expand_as(sent)  # a stopped seed's bytes: the others' mean
        sent = torch.where(torch.isnan(sent), filled, sent)
        curves[name] = {"round": longest["round"][:evaluations], metric: list(values)}
        if not bool(torch.isnan(sent).all()):
            curves[name]["bytes_sent"] = list(sent)
    return curves


def save_seed_figure(folders: list[str], path: str | Path, metric: str = TOP1_ACCURACY) -> Path:
    """``metric`` against round and against megabytes sent per node (log axis): the mean over the
    folders (seeds) of the node mean, shaded between the seeds' lowest and highest."""
    curves = seed_curves(folders, metric)
    seeds = max((len(c[metric][0]) for c in curves.values()), default=0)
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(14.5, 4.6))
    plot_metric(curves, metric, by_round)
    by_round.set_title(f"{label(metric)} vs round")
    plot_metric(curves, metric, by_bytes, x="megabytes")
    by_bytes.set_title(f"{label(metric)} vs megabytes sent per node")
    handles, labels = by_round.get_legend_handles_labels()
    for ax in (by_round, by_bytes):
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.tight_layout(rect=(0, 0, 0.87, 1))  # the legend beside the axes, where it hides no curve
    fig.legend(handles, labels, loc="center right", fontsize=8, title_fontsize=8,
               title=f"node mean: mean over\n{seeds} seeds, band =\nthe seeds' min-max")
    save_figure(fig, Path(path), dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------ scaling study
SCALING_FIGURES = {
    "scaling_accuracy.png": ("final_top1_mean", "final top-1 accuracy (node mean; dashed: worst node)"),
    "scaling_rounds_to_target.png": ("rounds_to_target", "rounds to reach the target accuracy"),
    "scaling_seconds_per_round.png": ("seconds_per_round", "seconds per round (incl. evaluations)"),
}


def load_scaling(folder: str | Path) -> list[dict]:
    """Rows of a sweep's scaling.csv, numbers as floats (empty cells and 'nan' as NaN)."""
    import csv

    with open(Path(folder) / "scaling.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, value in row.items():
            if key not in ("problem_name", "alg_name", "status"):
                row[key] = float(value) if value not in ("", None) else float("nan")
    return rows


def plot_scaling(rows: list[dict], column: str, ax=None, label: str | None = None):
    """One line per pair: ``column`` against N (N sweeps) or the measured Fiedler value (Fiedler sweeps)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.2))
    by_n = len({r["num_nodes"] for r in rows}) > 1
    x_key = "num_nodes" if by_n else "fiedler"
    for name in dict.fromkeys(r["problem_name"] for r in rows):
        mine = sorted((r for r in rows if r["problem_name"] == name), key=lambda r: r[x_key])
        line, = ax.plot([r[x_key] for r in mine], [r[column] for r in mine], "o-", label=name, lw=1.8)
        missed = [r for r in mine if r[column] != r[column]]  # NaN: never reached within the run
        if column == "rounds_to_target" and missed:
            ax.plot([r[x_key] for r in missed], [r["rounds"] for r in missed], "x", color=line.get_color(),
                    ms=9, label=f"{name}: not reached in the run (drawn at its last round)")
        if column == "final_top1_mean":
            ax.plot([r[x_key] for r in mine], [r["final_top1_min"] for r in mine], "--", color=line.get_color(),
                    lw=1)
    ax.set_xlabel("number of robots N" if by_n else "measured Fiedler value")
    if by_n:  # robots are counted: ticks at the sizes the sweep ran, never at 12.5 robots
        sizes = sorted({int(r["num_nodes"]) for r in rows})
        if sizes[-1] / sizes[0] >= 20:
            ax.set_xscale("log")
            from matplotlib.ticker import NullFormatter
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_ylabel(label or column)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def save_scaling_figures(folder: str | Path) -> list[Path]:
    """figures/scaling_*.png of a sweep folder (see SCALING_FIGURES)."""
    folder = Path(folder)
    if not (folder / "scaling.csv").exists():
        return []
    rows = load_scaling(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    written = []
    for name, (column, axis_label) in SCALING_FIGURES.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        plot_scaling(rows, column, ax, axis_label)
        ax.set_title(axis_label)
        fig.tight_layout()
        save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Markdown tables of output folders: final top-1, rounds and MB "
                                                 "to a threshold, or (--seeds) the spread over seeds")
    parser.add_argument("folders", nargs="+", help="output folders of experiments/run.py")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seeds", action="store_true",
                        help="instead: one row per pair over the folders (one per seed): final and last-quarter "
                             "top-1 as mean (min-max), rounds and MB to the threshold")
    parser.add_argument("--figure", metavar="PNG", help="with --seeds: also draw top-1 against round and "
                                                          "megabytes, mean over the seeds with their range")
    args = parser.parse_args()
    if args.figure and not args.seeds:
        parser.error("--figure goes with --seeds")
    if args.seeds:
        print_seed_table(args.folders, args.threshold)
        if args.figure:
            print(f"figure: {save_seed_figure(args.folders, args.figure)}")
    else:
        print_accuracy_table(args.folders, args.threshold)
