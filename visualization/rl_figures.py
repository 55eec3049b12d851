"""Figures of multi-robot reinforcement learning runs (the ``rl_tag`` kind): the team's episode reward against
timesteps and the robots' agreement, for one run or over seeds (mean with the min-max band over the runs, as the
original's ``RL_reward.svg``), and an animation of a trained team catching the evader beside an untrained one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from foundation.results_io import atomic_path, save_figure  # noqa: E402
from problems.metrics import CONSENSUS_ERROR
from visualization.plotting import load_results  # noqa: E402

BLOCK = 10  # batches per point of a reward curve (the original's committed curves: blocks of 10 batches)
METHOD_COLORS = {"centralized": "tab:purple", "dinno": "tab:red", "dsgt": "tab:blue", "dsgd": "tab:green",
                 "individual": "tab:gray"}


def batch_curve(res: dict, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray] | None:
    """(timesteps at the end of each block of ``block`` batches, the block's mean episode reward) of one pair."""
    steps, rewards = res.get("batch_timesteps"), res.get("batch_episode_reward")
    if not steps or not rewards:
        return None
    count = min(len(steps), len(rewards)) // block * block
    if count == 0:
        return np.asarray(steps[-1:], dtype=float), np.asarray([np.mean(rewards)])
    steps = np.asarray(steps[:count], dtype=float).reshape(-1, block)[:, -1]
    rewards = np.asarray(rewards[:count], dtype=float).reshape(-1, block).mean(1)
    return steps, rewards


def agreement_curve(res: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(timesteps, mean over robots of the distance to the mean unit parameters) at every evaluation."""
    errors, steps = res.get(CONSENSUS_ERROR), res.get("timesteps")
    if not errors or not steps:
        return None
    x = np.asarray([float(torch.as_tensor(v).reshape(-1)[0]) for v in steps])
    y = np.asarray([float(torch.as_tensor(v, dtype=torch.float64).reshape(-1).mean()) for v in errors])
    return x[: len(y)], y[: len(x)]


def method_of(name: str) -> str:
    """The method a pair name stands for (``dinno_seed2`` -> ``dinno``)."""
    return name.split("_")[0]


def _color(name: str, index: int) -> str:
    return METHOD_COLORS.get(method_of(name), f"C{index % 10}")


def save_run_figures(folder: str | Path) -> list[Path]:
    """figures/rl_reward.png (episode reward against timesteps, blocks of 10 batches) and figures/rl_agreement.png
    (the robots' distance to their mean parameters) of one output folder."""
    folder = Path(folder)
    results = load_results(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    written = []
    curves = {name: batch_curve(res) for name, res in results.items()}
    if any(c is not None for c in curves.values()):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for index, (name, curve) in enumerate(curves.items()):
            if curve is not None:
                ax.plot(*curve, label=name, color=_color(name, index), lw=1.6)
        _reward_axes(ax, "team episode reward (training episodes, blocks of 10 batches)")
        fig.tight_layout()
        save_figure(fig, out / "rl_reward.png", dpi=110)
        plt.close(fig)
        written.append(out / "rl_reward.png")
    agreements = {name: agreement_curve(res) for name, res in results.items()}
    if any(c is not None for c in agreements.values()):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for index, (name, curve) in enumerate(agreements.items()):
            if curve is not None:
                ax.plot(*curve, label=name, color=_color(name, index), lw=1.6)
        _agreement_axes(ax)
        fig.tight_layout()
        save_figure(fig, out / "rl_agreement.png", dpi=110)
        plt.close(fig)
        written.append(out / "rl_agreement.png")
    return written


def _reward_axes(ax, title: str) -> None:
    ax.set_xlabel("timesteps")
    ax.set_ylabel("average episode reward of the team")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _agreement_axes(ax) -> None:
    ax.set_xlabel("timesteps")
    ax.set_ylabel("distance to the mean unit parameters")
    ax.set_yscale("log")
    ax.set_title("agreement: each robot's normalized parameters to their mean (mean over robots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def runs_by_method(folders: list[str | Path]) -> dict[str, list[dict]]:
    """method -> the results of that method's pair in each folder (pairs named ``<method>`` or ``<method>_...``)."""
    found: dict[str, list[dict]] = {}
    for folder in folders:
        for name, res in load_results(folder).items():
            found.setdefault(method_of(name), []).append(res)
    return found


def seed_bands(folders: list[str | Path], block: int = BLOCK) -> dict[str, dict]:
    """method -> timesteps, mean, min, max over its runs of the block-mean episode reward (runs cut to the
    shortest)."""
    bands = {}
    for method, runs in runs_by_method(folders).items():
        curves = [c for c in (batch_curve(res, block) for res in runs) if c is not None]
        if not curves:
            continue
        length = min(len(c[1]) for c in curves)
        values = np.stack([c[1][:length] for c in curves])
        bands[method] = {"timesteps": curves[0][0][:length], "mean": values.mean(0), "min": values.min(0),
                         "max": values.max(0), "runs": len(curves)}
    return bands


def original_bands(path: str | Path) -> dict[str, dict]:
    """The original's committed curves (columns timesteps, method, runs, mean, min, max), per method."""
    rows: dict[str, list[dict]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["method"], []).append(row)
    return {method: {key: np.asarray([float(r[key]) for r in entries]) for key in ("timesteps", "mean", "min", "max")}
            | {"runs": int(entries[0]["runs"])} for method, entries in rows.items()}


def save_reward_figure(folders: list[str | Path], path: str | Path, original: str | Path | None = None,
                       block: int = BLOCK) -> Path:
    """The team's episode reward against timesteps per method, mean over the runs (one folder per seed) with the
    min-max band; with ``original`` (the original's curves as numbers) a second panel shows those."""
    bands = seed_bands(folders, block)
    panels = 2 if original is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 4.4), sharey=True, squeeze=False)
    sources = [("this project", bands)] + ([("the original (its committed runs)", original_bands(original))]
                                           if original is not None else [])
    for ax, (title, found) in zip(axes[0], sources):
        for index, (method, band) in enumerate(found.items()):
            color = _color(method, index)
            ax.plot(band["timesteps"], band["mean"], color=color, lw=1.6, label=f"{method} ({band['runs']} runs)")
            ax.fill_between(band["timesteps"], band["min"], band["max"], color=color, alpha=0.2, lw=0)
        _reward_axes(ax, f"{title}: mean, band = min-max over runs")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def save_agreement_figure(folders: list[str | Path], path: str | Path) -> Path:
    """Each method's agreement curve (distance to the mean unit parameters), mean and min-max over the runs."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for index, (method, runs) in enumerate(runs_by_method(folders).items()):
        curves = [c for c in (agreement_curve(res) for res in runs) if c is not None]
        if not curves:
            continue
        length = min(len(c[1]) for c in curves)
        values = np.stack([c[1][:length] for c in curves])
        color = _color(method, index)
        ax.plot(curves[0][0][:length], values.mean(0), color=color, lw=1.6, label=f"{method} ({len(curves)} runs)")
        ax.fill_between(curves[0][0][:length], values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
    _agreement_axes(ax)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ animation
def team_episode(folder: str | Path, pair: str, seed: int = 0, trained: bool = True) -> dict:
    """One evaluation-style episode (mean actions) of a run's scene: every agent's positions (steps + 1, agents, 2)
    and the catches of each step, played by ``pair``'s final policies (``trained``) or by the untrained base model
    every robot started from."""
    import yaml

    from problems.node_stack import NodeStack
    from problems.tag import base_model_from_config, scene_from_config
    from problems.tag_env import ACTION_SIZE, TagEpisodes

    folder = Path(folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())  # the run's resolved config
    scene = scene_from_config(cfg["experiment"])
    stack = NodeStack(base_model_from_config(cfg["experiment"]), scene.num_robots, dtype=torch.float64,
                      execution="vmap")
    theta = stack.theta.clone()
    if trained:
        final = torch.load(folder / f"{pair}_final_params.pt", weights_only=True).to(torch.float64)
        theta = final.expand(scene.num_robots, -1) if final.shape[0] == 1 else final
    episodes = TagEpisodes.start(scene, 1, torch.Generator().manual_seed(seed), dtype=torch.float64)
    positions, catches = [episodes.position[0].clone()], []
    with torch.no_grad():
        for _ in range(cfg["experiment"]["episode_steps"]):
            out = stack.forward(theta, episodes.observe().transpose(0, 1)).transpose(0, 1)
            _, caught = episodes.step(out[..., :ACTION_SIZE])
            positions.append(episodes.position[0].clone())
            catches.append(int(caught))
    return {"positions": torch.stack(positions).numpy(), "catches": np.asarray(catches),
            "obstacles": np.asarray(scene.obstacles), "robot_size": scene.robot_size, "evader_size": scene.evader_size,
            "obstacle_size": scene.obstacle_size}


def save_tag_animation(folder: str | Path, pair: str, path: str | Path, seed: int = 0, fps: int = 8) -> Path:
    """A GIF: the untrained team (left) and ``pair``'s trained team (right) chasing the evader from the same start
    (robots red, the evader green, obstacles grey; the count of catches so far in each title)."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.patches import Circle

    episodes = [team_episode(folder, pair, seed, trained=False), team_episode(folder, pair, seed, trained=True)]
    titles = ["untrained team", f"trained team ({pair})"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.5))
    artists = []
    extent = max(2.0, *(float(np.abs(e["positions"]).max()) + 0.2 for e in episodes))  # every agent in view
    for ax, episode in zip(axes, episodes):
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for x, y in episode["obstacles"]:
            ax.add_patch(Circle((x, y), episode["obstacle_size"], color="0.35"))
        agents = episode["positions"].shape[1]
        circles = [ax.add_patch(Circle(tuple(episode["positions"][0, a]),
                                       episode["robot_size"] if a < agents - 1 else episode["evader_size"],
                                       color="tab:red" if a < agents - 1 else "tab:green", zorder=3))
                   for a in range(agents)]
        trails = [ax.plot([], [], color="tab:red" if a < agents - 1 else "tab:green", lw=0.8, alpha=0.5)[0]
                  for a in range(agents)]
        artists.append((circles, trails, ax.set_title("")))
    steps = episodes[0]["positions"].shape[0]

    def draw(t):
        drawn = []
        for (circles, trails, title), episode, name in zip(artists, episodes, titles):
            for a, (circle, trail) in enumerate(zip(circles, trails)):
                circle.center = tuple(episode["positions"][t, a])
                trail.set_data(episode["positions"][: t + 1, a, 0], episode["positions"][: t + 1, a, 1])
            title.set_text(f"{name}: step {t}, catches {int(episode['catches'][:t].sum())}")
            drawn += [*circles, *trails, title]
        return drawn

    fig.tight_layout()
    animation = FuncAnimation(fig, draw, frames=steps, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        animation.save(str(partial), writer=PillowWriter(fps=fps))
    plt.close(fig)
    return path


def final_rewards(folders: list[str | Path], last: int = 5) -> dict[str, list[float]]:
    """method -> per run, the mean episode reward of its last ``last`` batches (the original's summary figure)."""
    found: dict[str, list[float]] = {}
    for method, runs in runs_by_method(folders).items():
        for res in runs:
            rewards = res.get("batch_episode_reward") or []
            if rewards:
                found.setdefault(method, []).append(float(np.mean(rewards[-last:])))
    return found


def print_reward_table(folders: list[str | Path], last: int = 5) -> None:
    """A Markdown table: per method, the mean (min to max) over runs of the last batches' episode reward."""
    print(f"| method | runs | episode reward, last {last} batches: mean (min to max) |")
    print("|---|---|---|")
    for method, values in final_rewards(folders, last).items():
        print(f"| {method} | {len(values)} | {np.mean(values):.1f} ({min(values):.1f} to {max(values):.1f}) |")


def manifest_seconds(folder: str | Path) -> dict[str, float]:
    """pair -> training seconds, from a folder's manifest."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return {p["problem_name"]: float(p.get("seconds", 0.0)) for p in manifest["pairs"]}


def print_seconds_table(folders: list[str | Path]) -> None:
    """A Markdown table: per pair, its training minutes in each folder (one folder per seed)."""
    seconds = [manifest_seconds(folder) for folder in folders]
    pairs = list(dict.fromkeys(name for found in seconds for name in found))
    print("| pair | " + " | ".join(Path(folder).name for folder in folders) + " |")
    print("|---|" + "---|" * len(folders))
    for pair in pairs:
        cells = [f"{found[pair] / 60:.1f} min" if pair in found else "-" for found in seconds]
        print(f"| {pair} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    """The figures of the results page from runs of one config, one folder per seed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m visualization.rl_figures",
                                     description="Reward and agreement figures over seeds, an animation of a trained "
                                                 "team, and the tables of final rewards and training times.")
    parser.add_argument("folders", nargs="+", help="run folders of the rl_tag kind, one per seed")
    parser.add_argument("--figure-dir", required=True, help="where rl_reward.png, rl_agreement.png and the GIF go")
    parser.add_argument("--original", help="the original's curves as numbers (CSV: timesteps, method, runs, mean, "
                                           "min, max) for a second panel")
    parser.add_argument("--animate", default="dinno", help="the pair whose trained team the GIF shows (default dinno)")
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not (Path(f) / "manifest.json").is_file()]
    if missing:
        parser.error(f"{missing[0]}: not a run folder (no manifest.json)")
    pairs = [p.get("problem_name") for p in json.loads((Path(args.folders[0]) / "manifest.json").read_text())["pairs"]]
    if args.animate not in pairs:
        parser.error(f"--animate: {args.animate!r} is not a pair of {args.folders[0]}; its pairs: {', '.join(pairs)}")
    out = Path(args.figure_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(save_reward_figure(args.folders, out / "rl_reward.png", original=args.original))
    print(save_agreement_figure(args.folders, out / "rl_agreement.png"))
    print(save_tag_animation(args.folders[0], args.animate, out / f"rl_tag_{args.animate}.gif"))
    print_reward_table(args.folders)
    print_seconds_table(args.folders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
