"""Asynchronous robots with delayed messages (``experiment.asynchrony``), for every optimizer.

- ``activation`` p: in round k robot i is awake with probability p, a counter-based draw of (seed, k, i).
  An asleep robot does nothing that round: every row of the optimizer's state that belongs to it
  (parameters, duals, trackers, push-sum weights, held rows of its in-edges, bytes sent) is as it was before
  the round, it sends nothing and hears nothing (those messages are lost). Its neighbours go on with what
  they last heard from it (the lossy-link rules of ``optimizers/comm/network.py``).
- ``max_delay`` D: a message sent in round s arrives in round s + d, d drawn uniformly from 0..D
  (counter-based on (seed, s, src, dst, channel)); a receiver uses the newest message (by the round it was
  sent) that has arrived, and an older one arriving later is dropped. Rounds count the exchanges of each
  channel (every optimizer exchanges each of its channels once a round).
- Any ``experiment.links`` model still loses messages on top (a lost message never arrives).

In one process only (under torchrun the run is refused with one line). A robot asleep still draws its batch
for that round from its stream (so its later batches are the ones it would have had awake: none is
skipped), and a shared schedule (DiNNO's rho, learning rates) advances with the rounds, not per robot.
"""

from __future__ import annotations

import torch

from foundation import counters

_WAKE = counters.code("asynchrony wake")
_DELAY = counters.code("asynchrony delay")


class Asynchrony:
    """Which robots are awake in the current round, and the per-round hook that says so."""

    def __init__(self, network, activation: float, max_delay: int, seed: int, inner=None):
        self.network, self.activation, self.max_delay, self.seed = network, float(activation), int(max_delay), int(seed)
        self.links = DelayedLinks(self, inner)
        network.set_link_model(self.links)
        self.awake = torch.ones(network.num_nodes, dtype=torch.bool)

    def __call__(self, k: int) -> None:  # before round k
        ids = torch.arange(self.network.num_nodes)
        self.awake = counters.uniform(self.seed, _WAKE, k, ids) < self.activation

    def state_dict(self) -> dict:
        return {"awake": self.awake.clone()}

    def load_state_dict(self, saved: dict) -> None:
        self.awake = saved["awake"].clone()

    def run_round(self, optimizer, k: int) -> None:
        """``optimizer.round(k)`` with the asleep robots' rows put back as they were."""
        asleep = (~self.awake[optimizer.network.robot_ids()]).nonzero().flatten()
        if len(asleep) == 0:
            optimizer.round(k)
            return
        net = optimizer.network
        into_asleep = torch.isin(net.in_edge_ends()[1], net.robot_ids()[asleep])
        edge_ids = net._links["ids"][into_asleep.to(net._links["ids"].device)]
        kept = {name: rows[asleep].clone() for name, rows in robot_rows(optimizer).items()}
        held = {channel: (rows[edge_ids].clone(), net.held.arrived[channel][edge_ids].clone())
                for channel, rows in net.held.last_rows.items() if len(rows) > (int(edge_ids.max()) if len(edge_ids) else -1)}
        sent = net.bytes_sent[asleep.cpu()].clone()
        optimizer.round(k)
        now = robot_rows(optimizer)
        for name, rows in kept.items():
            now[name][asleep] = rows
        for channel in net.held.last_rows:  # a channel first used in this round: as if never kept
            rows, arrived = held.get(channel, (0.0, False))
            net.held.last_rows[channel][edge_ids] = rows
            net.held.arrived[channel][edge_ids] = arrived
        net.bytes_sent[asleep.cpu()] = sent


def robot_rows(optimizer) -> dict[str, torch.Tensor]:
    """Every tensor of the optimizer's state with one row per local robot (parameters included), by name;
    torch optimizers' per-parameter state too (Adam's moments)."""
    count = optimizer.problem.theta.shape[0]
    found = {"problem.theta": optimizer.problem.theta}
    for name, value in vars(optimizer).items():
        if name in optimizer._not_state or name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == count:
            found[name] = value
        elif isinstance(value, torch.optim.Optimizer):
            for i, param_state in enumerate(value.state.values()):
                for key, tensor in param_state.items():
                    if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.shape[0] == count:
                        found[f"{name}.state{i}.{key}"] = tensor
    return found


class DelayedLinks:
    """A link model that delivers late: messages of asleep robots and lost ones (``inner``) never arrive, the
    others after their delay; ``deliver`` returns, for each listed edge, whether a newer message arrived
    and which."""

    name = "asynchrony"

    def __init__(self, asynchrony: Asynchrony, inner=None):
        self.asynchrony, self.inner = asynchrony, inner
        self.absent_when_lost = bool(getattr(inner, "absent_when_lost", False))
        self.lines: dict[str, dict[str, torch.Tensor]] = {}  # channel -> the messages on their way

    def lost(self, exchange, src, dst, ids, channel, graph) -> torch.Tensor:
        awake = self.asynchrony.awake
        lost = ~(awake[src] & awake[dst])
        if self.inner is not None:
            lost |= self.inner.lost(exchange, src, dst, ids, channel, graph)
        return lost

    def deliver(self, exchange, src, dst, ids, channel, graph, messages: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        sent = ~self.lost(exchange, src, dst, ids, channel, graph).to(messages.device)
        depth = self.asynchrony.max_delay + 1
        line = self._line(channel, messages, int(ids.max()) + 1 if len(ids) else 0, depth)
        line["calls"] += 1
        now = int(line["calls"])
        slot = now % depth
        delay = (counters.uniform(self.asynchrony.seed, _DELAY, now, src, dst, counters.code(channel))
                 * depth).long().clamp(max=depth - 1).to(messages.device)
        line["rows"][slot, ids[sent]] = messages[sent]
        line["sent"][slot, ids] = torch.where(sent, now, -1)
        line["due"][slot, ids] = now + delay
        sent_at, due = line["sent"][:, ids], line["due"][:, ids]
        ready = (sent_at >= 0) & (due <= now) & (sent_at > line["newest"][ids])
        newest = torch.where(ready, sent_at, -1).max(dim=0)
        delivered = newest.values >= 0
        edges = torch.arange(len(ids), device=messages.device)
        rows = line["rows"][newest.indices, ids[edges]]
        line["newest"][ids[delivered]] = newest.values[delivered]
        return delivered, rows

    def _line(self, channel, like, count, depth) -> dict:
        line = self.lines.get(channel)
        grow = count - (0 if line is None else line["newest"].shape[0])
        if line is None:
            line = self.lines[channel] = {"calls": torch.zeros((), dtype=torch.long),
                                          "rows": like.new_zeros((depth, 0) + like.shape[1:]),
                                          "sent": torch.zeros(depth, 0, dtype=torch.long, device=like.device),
                                          "due": torch.zeros(depth, 0, dtype=torch.long, device=like.device),
                                          "newest": torch.zeros(0, dtype=torch.long, device=like.device)}
        if grow > 0:
            line["rows"] = torch.cat([line["rows"], like.new_zeros((depth, grow) + like.shape[1:])], dim=1)
            line["sent"] = torch.cat([line["sent"], line["sent"].new_full((depth, grow), -1)], dim=1)
            line["due"] = torch.cat([line["due"], line["due"].new_zeros(depth, grow)], dim=1)
            line["newest"] = torch.cat([line["newest"], line["newest"].new_full((grow,), -1)])
        return line

    def state(self, count: int) -> dict:
        inner = self.inner.state(count) if self.inner is not None else {}
        return {"inner": inner, "lines": {c: {k: v.clone() for k, v in line.items()} for c, line in self.lines.items()}}

    def load_state(self, saved: dict) -> None:
        if self.inner is not None:
            self.inner.load_state(saved["inner"])
        self.lines = {c: {k: v.clone() for k, v in line.items()} for c, line in saved["lines"].items()}


def deliver(model, exchange, src, dst, ids, channel, graph, messages) -> tuple[torch.Tensor, torch.Tensor]:
    """(which listed messages arrive, the rows that arrive) under a link model: late ones when it delays
    (``DelayedLinks``), else the messages themselves where they are not lost."""
    if hasattr(model, "deliver"):
        return model.deliver(exchange, src, dst, ids, channel, graph, messages)
    return ~model.lost(exchange, src, dst, ids, channel, graph).to(messages.device), messages
