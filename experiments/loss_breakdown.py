"""Where a density map's validation loss comes from: the validation points by their distance to the nearest
wall, with each group's share of the points, its mean loss and its share of the total loss.

    venv/bin/python -m experiments.loss_breakdown OUTPUT_DIR [--pair dinno] [--robot 0] [--blurred-plan 2,4,8]
    venv/bin/python -m experiments.loss_breakdown CONFIG.yaml --blurred-plan 1,2,4,8,16,32

Reads the run's config (the validation scans are drawn again, seeded as in the run) and the pair's final
parameters. Prints a markdown table, then the mean loss per point and the original research code's way of
reporting it (a sum of the means of the validation batches of 10,000 points).

``--blurred-plan`` adds the reference maps: the floor plan itself blurred by a Gaussian of sigma pixels, taken
as the map (clipped to [1e-4, 1 - 1e-4]), and a blank map (the wall share everywhere), on the same validation
points: what a calibrated map of a given sharpness scores. Given a config file instead of a folder, only these.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

BANDS = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, float("inf")))


def breakdown(folder: Path, pair: str, robot: int) -> tuple[list[dict], float, int]:
    """(rows, mean loss per point, validation points) of ``robot``'s final map of ``pair``."""
    from scipy import ndimage

    from experiments.config import load_yaml, validate_config
    from lidar.coords import lidar_to_pixel
    from problems.base import per_node_loss
    from problems.node_stack import NodeStack

    cfg = validate_config(load_yaml(folder / "config.yaml"))
    setup = _validation_setup(cfg)
    theta = torch.load(folder / f"{pair}_final_params.pt", weights_only=True)[robot:robot + 1]
    stack = NodeStack(setup.base_model, 1, dtype=theta.dtype)
    x, y = setup.val_x.to(theta.dtype), setup.val_y.to(theta.dtype)
    with torch.no_grad():
        out = torch.cat([stack.forward(theta, x[i:i + 50_000], shared_input=True)[0]
                         for i in range(0, len(x), 50_000)])
    losses = per_node_loss(cfg["experiment"]["loss"], out.unsqueeze(0), y.unsqueeze(0))[0].double().numpy()
    free = setup.image < 0.5
    to_wall = ndimage.distance_transform_edt(free)
    pixels = np.round(lidar_to_pixel(x.double().numpy(), setup.image.shape)).astype(int)
    rows_px = np.clip(pixels[:, 0], 0, free.shape[0] - 1)
    cols_px = np.clip(pixels[:, 1], 0, free.shape[1] - 1)
    distance = to_wall[rows_px, cols_px]
    wall = y.reshape(-1).numpy() >= 0.5
    total = losses.sum()
    rows = [{"points": "wall", "share": wall.mean(), "mean_loss": losses[wall].mean(),
             "loss_share": losses[wall].sum() / total}]
    for low, high in BANDS:
        pick = ~wall & (distance >= low) & (distance < high)
        if pick.any():
            rows.append({"points": f"free, {low:g}-{high:g} px from a wall", "share": pick.mean(),
                         "mean_loss": losses[pick].mean(), "loss_share": losses[pick].sum() / total})
    return rows, float(losses.mean()), len(losses)


def _validation_setup(cfg: dict):
    from experiments.kinds import KINDS

    return KINDS[cfg["experiment"]["problem"]].setup(cfg, torch.device("cpu"))


def blurred_plan_losses(cfg: dict, sigmas) -> tuple[float, list[tuple[float, float]], int]:
    """(blank map's loss, [(sigma, loss of the plan blurred by sigma px)], validation points), mean BCE per
    point on the validation points of ``cfg``."""
    from scipy import ndimage

    from lidar.coords import lidar_to_pixel

    setup = _validation_setup(cfg)
    x = setup.val_x.double().numpy()
    y = setup.val_y.double().numpy().reshape(-1)
    image = np.asarray(setup.image, dtype=np.float64)
    pixel = lidar_to_pixel(x, image.shape).T  # continuous (row, col) of every point

    def bce(p):
        p = np.clip(p, 1e-4, 1.0 - 1e-4)
        return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())

    blank = bce(np.full_like(y, y.mean()))
    rows = [(float(s), bce(ndimage.map_coordinates(ndimage.gaussian_filter(image, float(s)), pixel, order=1,
                                                   mode="nearest")))
            for s in sigmas]
    return blank, rows, len(y)


def _sigmas(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blurred-plan: comma-separated widths in pixels, got {text!r}") from None
    if not values or any(not (0.0 <= v <= 1000.0) for v in values):
        raise argparse.ArgumentTypeError(f"--blurred-plan: widths between 0 and 1000 px, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.loss_breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an output folder of a density run")
    parser.add_argument("--pair", default="dinno")
    parser.add_argument("--robot", type=int, default=0)
    parser.add_argument("--blurred-plan", type=_sigmas, default=None, metavar="SIGMAS",
                        help="also score the floor plan blurred by these Gaussian widths (px), e.g. 2,4,8")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if folder.is_file():
        if args.blurred_plan is None:
            print(f"error: {folder}: a config file gives only the reference maps; add --blurred-plan", file=sys.stderr)
            return 2
        from experiments.config import ConfigError, load_yaml, validate_config

        try:
            raw = load_yaml(folder)
            if raw is not None:  # an empty file: validate_config says what a config needs
                raw.pop("tune", None)
            cfg = validate_config(raw)
            if cfg["experiment"]["problem"] not in ("density", "online_density"):
                raise ConfigError(f"experiment.problem: a density config is needed, got {cfg['experiment']['problem']!r}")
        except ConfigError as exc:
            print(f"error: {folder}: {exc}", file=sys.stderr)
            return 2
        _print_blurred(cfg, args.blurred_plan)
        return 0
    if not (folder / f"{args.pair}_final_params.pt").is_file():
        print(f"error: {folder}: no {args.pair}_final_params.pt (a finished density run's folder?)", file=sys.stderr)
        return 2
    rows, mean, count = breakdown(folder, args.pair, args.robot)
    print(f"{args.pair}, robot {args.robot}: {count:,} validation points, mean BCE {mean:.4f} per point; as the original "
          f"reports it (sum over {count // 10_000} batch means of 10,000 points): {mean * (count // 10_000):.2f}\n")
    print("| validation points | share of points | mean loss | share of the loss |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['points']} | {r['share']:.3f} | {r['mean_loss']:.3f} | {r['loss_share']:.3f} |")
    if args.blurred_plan is not None:
        from experiments.config import load_yaml, validate_config

        print()
        _print_blurred(validate_config(load_yaml(folder / "config.yaml")), args.blurred_plan)
    return 0


def _print_blurred(cfg: dict, sigmas) -> None:
    blank, rows, count = blurred_plan_losses(cfg, sigmas)
    batches = max(count // 10_000, 1)
    print(f"reference maps on the same {count:,} validation points (mean BCE per point; x {batches} as the original "
          f"reports it):\n")
    print("| map | mean loss | as the original reports it |")
    print("|---|---|---|")
    print(f"| blank (the wall share everywhere) | {blank:.4f} | {blank * batches:.2f} |")
    for sigma, loss in rows:
        print(f"| floor plan blurred by sigma = {sigma:g} px | {loss:.4f} | {loss * batches:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
