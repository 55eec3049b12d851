"""How a receiver combines what its neighbours sent (``experiment.aggregation``): a property of the radio layer, so
every optimizer that mixes (``mix``: W x) or sums its neighbours' rows (``neighbor_sum``: A x) meets it unchanged.

Receiver i holds its own row x_i and, from each neighbour j, the row h_ij it last received (non-finite rows are
dropped as lost messages before any rule sees them). With the weights w_ij (Metropolis for ``mix``, 1 for
``neighbor_sum``):

- ``mean``: W x = x_i + sum_j w_ij (h_ij - x_i), A x = sum_j h_ij (the plain, exact products when nothing is lost).
- ``clip`` (self-centred clipping, "ClippedGossip", He, Karimireddy and Jaggi 2022): every difference h_ij - x_i is
  clipped to the radius tau_i before it is used: mix x_i + sum_j w_ij clip(h_ij - x_i, tau_i), neighbour sum
  d_i x_i + sum_j clip(h_ij - x_i, tau_i). tau_i is ``radius`` when given, else adaptive: the (b + 1)-th largest
  ||h_ij - x_i|| of robot i's neighbours (b = ``assumed_byzantine``), so that at most b rows are shortened, each to
  the length of the largest one left as it is.
- ``trimmed_mean`` (coordinate-wise): per entry, the ``trim`` largest and ``trim`` smallest values of the set
  {x_i, h_ij} (mix) or {h_ij} (neighbour sum, times d_i) are dropped and the rest averaged.
- ``median`` (coordinate-wise): the median of the same sets (the mean of the two middle values of an even set).

At consensus (every h_ij = x_i) every rule returns the mean's value: consensus stays a fixed point. Off consensus the
robust rules are not averages with fixed weights: see docs/algorithms.md for what each does to each method.
"""

from __future__ import annotations

from typing import Any

import torch

from foundation.schema import OPTIONAL, POSITIVE, Choice, ConfigError, Float, Int, Range, excerpt, validate_mapping

RULES = ("mean", "clip", "trimmed_mean", "median")

AGGREGATION_SCHEMA = {
    "rule": (Choice(RULES), "mean"),
    "radius": (Float, OPTIONAL, POSITIVE),  # clip: a fixed radius (default: adaptive)
    "assumed_byzantine": (Int, 1, Range(0, 1_000_000)),  # clip, adaptive: neighbours whose rows may be shortened
    "trim": (Int, 1, Range(0, 1_000_000)),  # trimmed_mean: values dropped at each end, per entry
}


def check_aggregation(aggregation: dict, min_degree: int, key: str = "experiment.aggregation") -> None:
    """The rule's parameters fit the smallest neighbourhood of the graph."""
    rule = aggregation["rule"]
    if rule == "trimmed_mean" and 2 * aggregation["trim"] >= min_degree:
        raise ConfigError(f"{key}.trim: {aggregation['trim']} at each end needs more than "
                          f"{2 * aggregation['trim']} neighbours; the smallest neighbourhood has {min_degree}, so "
                          f"use at most {max(0, (min_degree - 1) // 2)}")
    if rule == "clip" and aggregation["radius"] is None and aggregation["assumed_byzantine"] >= min_degree:
        raise ConfigError(f"{key}.assumed_byzantine: {aggregation['assumed_byzantine']} of a smallest neighbourhood "
                          f"of {min_degree} leaves no neighbour to set the clipping radius; use at most "
                          f"{max(0, min_degree - 1)} (or a fixed radius)")


def describe(aggregation: dict | None) -> str:
    if not aggregation or aggregation["rule"] == "mean":
        return "mean"
    rule = aggregation["rule"]
    if rule == "clip":
        return f"clip (radius {aggregation['radius']})" if aggregation["radius"] is not None else \
            f"clip (adaptive, {aggregation['assumed_byzantine']} assumed Byzantine)"
    return f"trimmed_mean (trim {aggregation['trim']})" if rule == "trimmed_mean" else rule


def validate(key: str, value: Any) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping like {{rule: clip}}, got {excerpt(value)}")
    return validate_mapping(key, AGGREGATION_SCHEMA, value)


class Neighbourhoods:
    """The edges into each local receiver as slots of a padded (receivers, max degree) table (edges are listed by
    receiver, then sender)."""

    def __init__(self, dst_local: torch.Tensor, receivers: int):
        counts = torch.bincount(dst_local, minlength=receivers)
        starts = torch.cumsum(counts, 0) - counts
        self.slot = torch.arange(len(dst_local), device=dst_local.device) - starts[dst_local]
        self.counts = counts
        self.width = int(counts.max()) if len(counts) else 0


def combine(aggregation: dict | None, x_local: torch.Tensor, dst_local: torch.Tensor, weight: torch.Tensor,
            rows: torch.Tensor, relative: bool, clipped: torch.Tensor | None = None) -> torch.Tensor:
    """Every local robot's combination of its own row and the rows ``rows`` (one per edge into it, edge e into
    local robot ``dst_local[e]`` with weight ``weight[e]``); ``relative``: a mix (W x), else a neighbour sum (A x).
    ``clipped`` (per local robot) counts the rows the clip rule shortened."""
    rule = "mean" if not aggregation else aggregation["rule"]
    if rule == "mean":
        if relative:
            return x_local.clone().index_add_(0, dst_local, weight.unsqueeze(1) * (rows - x_local[dst_local]))
        return torch.zeros_like(x_local).index_add_(0, dst_local, weight.unsqueeze(1) * rows)
    assert aggregation is not None
    if rule == "clip":
        difference = rows - x_local[dst_local]
        length = difference.norm(dim=1)
        radius = _radius(aggregation, length, dst_local, len(x_local))
        scale = torch.clamp(radius[dst_local] / length.clamp_min(1e-30), max=1.0)
        if clipped is not None:
            clipped += torch.zeros(len(x_local), dtype=clipped.dtype).index_add_(
                0, dst_local.cpu(), (scale < 1.0).to(clipped.dtype).cpu())
        step = difference.mul_((weight * scale).unsqueeze(1))
        if relative:
            return x_local.clone().index_add_(0, dst_local, step)
        degree = torch.zeros(len(x_local), dtype=x_local.dtype, device=x_local.device).index_add_(0, dst_local, weight)
        return (x_local * degree.unsqueeze(1)).index_add_(0, dst_local, step)
    centre = _coordinate_centre(rule, aggregation.get("trim", 0), x_local, dst_local, rows, include_own=relative)
    if relative:
        return centre
    degree = torch.zeros(len(x_local), dtype=x_local.dtype, device=x_local.device).index_add_(
        0, dst_local, torch.ones_like(weight))
    return centre * degree.unsqueeze(1)


def _radius(aggregation: dict, length: torch.Tensor, dst_local: torch.Tensor, receivers: int) -> torch.Tensor:
    """Per local robot: the clipping radius (fixed, or the (b + 1)-th largest length of its neighbours' differences)."""
    if aggregation["radius"] is not None:
        return torch.full((receivers,), float(aggregation["radius"]), dtype=length.dtype, device=length.device)
    hood = Neighbourhoods(dst_local, receivers)
    table = torch.full((receivers, max(1, hood.width)), -1.0, dtype=length.dtype, device=length.device)
    table[dst_local, hood.slot] = length
    ordered = table.sort(dim=1, descending=True).values
    b = min(int(aggregation["assumed_byzantine"]), ordered.shape[1] - 1)
    return ordered[:, b].clamp_min(0.0)


def _coordinate_centre(rule: str, trim: int, x_local: torch.Tensor, dst_local: torch.Tensor, rows: torch.Tensor,
                       include_own: bool) -> torch.Tensor:
    """Per local robot and entry: the trimmed mean or the median of its neighbours' rows (and its own). Robots with
    the same number of values are done together on a dense (robots, values, entries) table."""
    receivers, width = x_local.shape
    hood = Neighbourhoods(dst_local, receivers)
    own = 1 if include_own else 0
    pool = torch.cat([x_local, rows]) if include_own else rows  # row r of x_local, then edge e at receivers + e
    slots = torch.full((receivers, hood.width + own), -1, dtype=torch.long, device=x_local.device)
    if include_own:
        slots[:, 0] = torch.arange(receivers, device=x_local.device)
    slots[dst_local, hood.slot + own] = torch.arange(len(dst_local), device=x_local.device) + own * receivers
    size = hood.counts.to(x_local.device) + own  # values per receiver
    centre = torch.zeros_like(x_local)  # no values (a robot without neighbours in a neighbour sum): nothing
    for count in torch.unique(size).tolist():
        if count == 0:
            continue
        members = (size == count).nonzero().squeeze(1)
        table = pool[slots[members, :count]]  # (robots, count, entries)
        centre[members] = _centre_of_equal_sets(rule, trim, table)
    return centre


def _centre_of_equal_sets(rule: str, trim: int, table: torch.Tensor) -> torch.Tensor:
    """The trimmed mean or the median over dim 1 of a (robots, values, entries) table."""
    count = table.shape[1]
    if rule == "trimmed_mean" and trim == 0:
        return table.mean(dim=1)
    if rule == "trimmed_mean" and trim == 1 and count > 2:  # the sum less the largest and the smallest value
        return (table.sum(dim=1) - table.amax(dim=1) - table.amin(dim=1)) / (count - 2)
    ordered = table.sort(dim=1).values
    if rule == "trimmed_mean":
        return ordered[:, trim:count - trim].mean(dim=1)
    return ordered[:, [(count - 1) // 2, count // 2]].mean(dim=1)
