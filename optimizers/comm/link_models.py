"""How radio links lose messages (``experiment.links.model``).

Every model decides, for each directed message src -> dst of exchange k on a channel, whether it is
lost, as a counter-based function of (seed, k, src, dst, ...) (:mod:`foundation.counters`): the same
messages are lost whether the robots live in one process or in many.

- ``independent`` (``drop_prob`` p): each message is lost with probability p on its own.
- ``symmetric`` (``drop_prob`` p): an acknowledged link. In each exchange an edge delivers in both
  directions or in neither (one draw per undirected edge), each with probability p of losing both; an
  edge that failed is not used in that exchange at all (each end takes its own row in place of the
  other's), so what the two ends add stays antisymmetric: DiNNO's and Prox-PDA's duals keep summing to
  zero.
- ``bursty``: the Gilbert-Elliott model, one two-state Markov chain per directed link that moves once per
  exchange: from good to bad with probability ``enter_bad``, from bad to good with ``leave_bad``; a message
  is lost with ``loss_good`` in the good state and ``loss_bad`` in the bad one. The long-run loss is
  (leave_bad loss_good + enter_bad loss_bad) / (enter_bad + leave_bad); losses come in runs whose length
  grows as ``leave_bad`` shrinks. Every chain starts in the good state.
- ``distance`` (robots with positions, e.g. online density): a message between robots d apart is lost with
  probability ``max_loss`` (d / R)^``power``, R the communication radius (``radius``, else the disk graph's):
  0 next to each other, rising smoothly to ``max_loss`` at the edge of the radius.

A model's ``lost(exchange, src, dst, ids, channel, graph)`` returns a boolean tensor over the listed
directed messages (``ids``: the network's stable numbers of those directed links); ``state(count)`` /
``load_state`` keep what it remembers per link (the bursty chains), aligned with the network's link
numbers, so that a run resumes on any number of processes.

Each model carries its config schema: ``top_schema`` (keys of ``experiment.links`` itself, e.g. ``drop_prob``)
and ``block_schema`` (keys of its own block ``experiment.links.<name>``), and builds itself from a validated
block with ``from_config`` (the :class:`LinkModel` protocol). ``LINK_MODELS`` is the registry and
``links_schema()`` the schema of ``experiment.links`` it makes: a new model is one class and one registry entry.
"""

from __future__ import annotations

from typing import Protocol

import networkx as nx
import torch

from foundation import counters
from foundation.schema import (
    OPTIONAL,
    POSITIVE,
    SEED_RANGE,
    UNIT_INTERVAL,
    Choice,
    ConfigError,
    Custom,
    Float,
    Int,
    did_you_mean,
    validate_mapping,
)

_STATE = counters.code("link state")


class LinkModel(Protocol):
    """What the networks ask of a link model (every entry of ``LINK_MODELS`` provides it)."""

    name: str
    absent_when_lost: bool  # a lost message leaves the edge out (True) or the held row in use (False)
    top_schema: dict  # its keys in ``experiment.links`` itself
    block_schema: dict  # its keys in its own block ``experiment.links.<name>``

    @classmethod
    def from_config(cls, links: dict) -> "LinkModel | None": ...  # None: it loses nothing with these settings

    def describe(self) -> str: ...

    def lost(self, exchange: int, src: torch.Tensor, dst: torch.Tensor, ids: torch.Tensor, channel: str,
             graph: nx.Graph) -> torch.Tensor: ...  # which of the listed directed messages are lost

    def state(self, count: int) -> dict: ...  # what it remembers per link, for ``count`` links

    def load_state(self, saved: dict) -> None: ...


class IndependentLoss:
    name = "independent"
    absent_when_lost = False  # a receiver falls back on the last row it received from that neighbour
    top_schema = {"drop_prob": (Float, 0.0, UNIT_INTERVAL)}
    block_schema: dict = {}

    def __init__(self, seed: int, drop_prob: float):
        self.seed, self.drop_prob = int(seed), float(drop_prob)

    @classmethod
    def from_config(cls, links: dict):
        """The model of a validated ``experiment.links`` (None: it loses nothing)."""
        return cls(links["seed"], links["drop_prob"]) if links["drop_prob"] else None

    def describe(self) -> str:
        return f"{self.name} ({self.drop_prob:g})"

    def lost(self, exchange: int, src: torch.Tensor, dst: torch.Tensor, ids: torch.Tensor, channel: str,
             graph: nx.Graph) -> torch.Tensor:
        return counters.uniform(self.seed, exchange, src, dst, counters.code(channel)) < self.drop_prob

    def state(self, count: int) -> dict:
        return {}

    def load_state(self, saved: dict) -> None:
        pass


class SymmetricLoss(IndependentLoss):
    name = "symmetric"
    absent_when_lost = True  # a failed edge is left out of the exchange at both ends

    def lost(self, exchange, src, dst, ids, channel, graph):
        low, high = torch.minimum(src, dst), torch.maximum(src, dst)  # one draw per undirected edge
        return counters.uniform(self.seed, exchange, low, high, counters.code(channel)) < self.drop_prob


class BurstyLoss:
    """Gilbert-Elliott chains, one per directed link, advanced to the current exchange when asked."""

    name = "bursty"
    absent_when_lost = False
    top_schema: dict = {}
    # the defaults lose 30% of the messages in the long run, in bursts
    block_schema = {"enter_bad": (Float, 0.1, UNIT_INTERVAL), "leave_bad": (Float, 0.2, UNIT_INTERVAL),
                    "loss_good": (Float, 0.05, UNIT_INTERVAL), "loss_bad": (Float, 0.8, UNIT_INTERVAL)}

    @classmethod
    def from_config(cls, links: dict):
        b = links["bursty"]
        return cls(links["seed"], b["enter_bad"], b["leave_bad"], b["loss_good"], b["loss_bad"])

    def describe(self) -> str:
        return f"bursty (long-run loss {self.mean_loss():.3f})"

    def __init__(self, seed: int, enter_bad: float, leave_bad: float, loss_good: float, loss_bad: float):
        self.seed = int(seed)
        self.enter_bad, self.leave_bad = float(enter_bad), float(leave_bad)
        self.loss_good, self.loss_bad = float(loss_good), float(loss_bad)
        self.reached = torch.zeros(0, dtype=torch.long)  # per link number: the exchange its chain is at
        self.bad = torch.zeros(0, dtype=torch.bool)      # per link number: in the bad state

    def mean_loss(self) -> float:
        return (self.leave_bad * self.loss_good + self.enter_bad * self.loss_bad) / (self.enter_bad + self.leave_bad)

    def _grow(self, count: int) -> None:
        missing = count - len(self.reached)
        if missing > 0:  # a new link starts good, at exchange 0
            self.reached = torch.cat([self.reached, torch.zeros(missing, dtype=torch.long)])
            self.bad = torch.cat([self.bad, torch.zeros(missing, dtype=torch.bool)])

    def lost(self, exchange, src, dst, ids, channel, graph):
        ids = ids.cpu()
        self._grow(int(ids.max()) + 1 if len(ids) else 0)
        reached, bad = self.reached[ids], self.bad[ids]
        while bool((reached < exchange).any()):  # usually one step: the links were used last exchange
            moving = reached < exchange
            step = reached + 1
            u = counters.uniform(self.seed, step, src, dst, _STATE)
            moved = torch.where(bad, u >= self.leave_bad, u < self.enter_bad)
            bad = torch.where(moving, moved, bad)
            reached = torch.where(moving, step, reached)
        self.reached[ids], self.bad[ids] = reached, bad
        loss = torch.where(bad, torch.tensor(self.loss_bad, dtype=torch.float64),
                           torch.tensor(self.loss_good, dtype=torch.float64))
        return counters.uniform(self.seed, exchange, src, dst, counters.code(channel)) < loss

    def state(self, count: int) -> dict:
        self._grow(count)
        return {"reached": self.reached[:count].clone(), "bad": self.bad[:count].clone()}

    def load_state(self, saved: dict) -> None:
        self.reached, self.bad = saved["reached"].clone(), saved["bad"].clone()


class DistanceLoss(IndependentLoss):
    name = "distance"
    top_schema: dict = {}
    # radius defaults to the disk graph's
    block_schema = {"radius": (Float, OPTIONAL, POSITIVE), "power": (Float, 4.0, POSITIVE),
                    "max_loss": (Float, 1.0, UNIT_INTERVAL)}

    @classmethod
    def from_config(cls, links: dict):
        d = links["distance"]
        return cls(links["seed"], d["radius"], d["power"], d["max_loss"])

    def describe(self) -> str:
        return f"distance (max loss {self.max_loss:g}, power {self.power:g})"

    def __init__(self, seed: int, radius: float | None, power: float, max_loss: float):
        self.seed, self.radius, self.power, self.max_loss = int(seed), radius, float(power), float(max_loss)

    def probability(self, distance: torch.Tensor, radius: float) -> torch.Tensor:
        return self.max_loss * (distance / radius).clamp(0, 1) ** self.power

    def lost(self, exchange, src, dst, ids, channel, graph):
        positions = nx.get_node_attributes(graph, "pos")
        if len(positions) < graph.number_of_nodes():
            raise ValueError("links.model distance needs the robots' positions on the graph's nodes")
        radius = self.radius if self.radius is not None else graph.graph.get("radius")
        if radius is None:
            raise ValueError("links.model distance needs links.distance.radius (the graph has no radius)")
        pos = torch.tensor([positions[i] for i in range(graph.number_of_nodes())], dtype=torch.float64)
        distance = (pos[src] - pos[dst]).norm(dim=1)
        return counters.uniform(self.seed, exchange, src, dst, counters.code(channel)) < self.probability(distance,
                                                                                                          float(radius))


def join_link_states(parts: list[dict]) -> dict:
    """The link model's memory of every block (each holds the links into its own robots, numbered like the
    network's held rows) as one state, in the order the held rows are joined."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    if len(parts) == 1:  # one process (the only layout delayed links run in)
        return parts[0]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


LINK_MODELS: dict[str, type[LinkModel]] = {cls.name: cls for cls in (IndependentLoss, SymmetricLoss, BurstyLoss,
                                                                      DistanceLoss)}


def links_schema() -> dict:
    """The schema of ``experiment.links`` from the registry: the model, its seed, every model's top-level keys,
    and one block per model with its own keys."""
    schema: dict[str, tuple] = {"model": (Choice(tuple(LINK_MODELS)), "independent"), "seed": (Int, 0, SEED_RANGE)}
    for model in LINK_MODELS.values():
        schema.update(model.top_schema)
        if model.block_schema:
            schema[model.name] = (model.block_schema, {})
    return schema


def validate_links(prefix: str, data) -> dict:
    if isinstance(data, dict) and isinstance(data.get("model"), str) and data["model"] not in LINK_MODELS:
        raise ConfigError(f"{prefix}.model: {data['model']!r} is not allowed{did_you_mean(data['model'], LINK_MODELS)}; "
                          f"allowed: {', '.join(LINK_MODELS)}")
    return validate_mapping(prefix, links_schema(), data)


LINKS = Custom(validate_links)  # the schema kind of ``experiment.links``


def make_link_model(links: dict) -> LinkModel | None:
    """The model a validated ``experiment.links`` block describes (None: every message arrives)."""
    return LINK_MODELS[links.get("model", "independent")].from_config(links)


def describe(model) -> str:
    return "lossless" if model is None else model.describe()
