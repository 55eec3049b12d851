"""Where a density map's validation loss comes from: the validation points by their distance to the nearest
wall, with each group's share of the points, its mean loss and its share of the total loss.

    venv/bin/python -m experiments.loss_breakdown OUTPUT_DIR [--pair dinno] [--robot 0]

Reads the run's config (the validation scans are drawn again, seeded as in the run) and the pair's final
parameters. Prints a markdown table, then the mean loss per point and the original research code's way of
reporting it (a sum of the means of the validation batches of 10,000 points).
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
    from experiments.kinds import KINDS
    from lidar.coords import lidar_to_pixel
    from problems.base import per_node_loss
    from problems.node_stack import NodeStack

    cfg = validate_config(load_yaml(folder / "config.yaml"))
    setup = KINDS[cfg["experiment"]["problem"]].setup(cfg, torch.device("cpu"))
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.loss_breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an output folder of a density run")
    parser.add_argument("--pair", default="dinno")
    parser.add_argument("--robot", type=int, default=0)
    args = parser.parse_args(argv)
    folder = Path(args.folder)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
