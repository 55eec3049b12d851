"""Push-sum over one-way links: what the push-sum optimizers (SGP, Push-DIGing) share.

The radio graph stays undirected (who can hear whom); in each round every robot pushes to some of its
neighbours only, its *out-neighbours* (``out_neighbors`` in the optimizer's config):

- ``"all"``: every neighbour;
- ``"ring"``: robot i to robot (i + 1) mod N only, a directed ring (the graph must hold every edge
  i - (i + 1) mod N, e.g. a cycle);
- an integer k: k of its neighbours drawn afresh every round (all of them when it has fewer), a
  counter-based draw of (seed, round, robot, neighbour): the same whatever the processes.

A push is column-stochastic: robot i keeps the share x_i / (d_i + 1) and sends the same share to each of
its d_i out-neighbours, so the team's sum of x is kept exactly; the push-sum weights w (pushed the same
way, starting at 1) stay positive and sum to N, and x_i / w_i is robot i's estimate.

Lost messages (any ``experiment.links`` model): robust push-sum with running sums (Hadjicostis,
Dominguez-Garcia and Charalambous, 2016). Robot i keeps, for each out-edge, the running sum sigma_ij of
every share it has ever pushed over it and sends that sum; the receiver keeps the last sum rho_ji it got
and adds the difference. A lost message only delays its mass to the next one that arrives, so the sum of
x over the robots plus what is in flight is kept. Running sums grow with the rounds, so they are kept and
sent as float64 (8 bytes a value on the radio); without losses the plain shares are sent, in the stack's
own precision.
"""

from __future__ import annotations

import torch

from foundation import counters
from foundation.schema import SEED_RANGE, ConfigError, Custom, excerpt

_DIRECTION = counters.code("push-sum out-neighbours")


def check_out_neighbors(key: str, value):
    if value in ("all", "ring") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{key}: {excerpt(value)} is not allowed; allowed: 'all', 'ring' or a whole number >= 1 "
                      f"(out-neighbours drawn each round)")


OUT_NEIGHBORS = Custom(check_out_neighbors)


def out_edges(graph, num_nodes: int, rule, seed: int, round_index: int) -> torch.Tensor:
    """(N, N) booleans: [i, j] when robot i pushes to robot j in this round."""
    pushes = torch.zeros(num_nodes, num_nodes, dtype=torch.bool)
    edges = torch.tensor([(i, j) for i, j in graph.edges() if i != j], dtype=torch.long).reshape(-1, 2)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    if rule == "all":
        pushes[src, dst] = True
    elif rule == "ring":
        ahead = torch.arange(num_nodes)
        missing = [i for i in range(num_nodes) if not graph.has_edge(i, (i + 1) % num_nodes)]
        if num_nodes > 1 and missing:
            raise ValueError(f"out_neighbors 'ring': the graph has no edge {missing[0]} - "
                             f"{(missing[0] + 1) % num_nodes}; a directed ring needs a cycle through 0, 1, ..., N-1")
        pushes[ahead, (ahead + 1) % num_nodes] = num_nodes > 1
    else:  # k random neighbours: the k smallest draws among each robot's neighbours
        draws = torch.full((num_nodes, num_nodes), 2.0, dtype=torch.float64)
        draws[src, dst] = counters.uniform(seed, _DIRECTION, round_index, src, dst)
        keep = torch.argsort(draws, dim=1)[:, :int(rule)]
        pushes.scatter_(1, keep, True)
        pushes &= draws < 2.0
    return pushes


class PushSum:
    """The push-sum exchange of one optimizer: ``push(rows, round)`` returns every local robot's new rows."""

    def __init__(self, optimizer, channel: str):
        self.optimizer, self.channel = optimizer, channel
        config = optimizer.config
        self.rule, self.seed = config["out_neighbors"], int(config["direction_seed"])
        network = optimizer.network
        out_edges(network.graph, _team_size(network), self.rule, self.seed, 1)  # refuse a ring the graph lacks

    def push(self, rows: torch.Tensor, round_index: int) -> torch.Tensor:
        net = self.optimizer.network
        src, dst = net.in_edge_ends()  # edge e: src -> dst, dst a local robot (row net.in_edges()[e])
        receiver = net.in_edges()
        pushes = out_edges(net.graph, _team_size(net), self.rule, self.seed, round_index)
        sends_back = pushes[dst, src].to(rows.device)  # does the local robot push over e, reversed?
        local_ids = net.robot_ids()
        out_degree = pushes[local_ids].sum(dim=1).to(rows.device, rows.dtype)
        share = rows / (out_degree + 1).unsqueeze(1)
        lossy = net.link_model is not None
        wire = torch.float64 if lossy else rows.dtype
        sent = share[receiver].to(wire) * sends_back.unsqueeze(1)
        if lossy:  # running sums: sigma_ij += share when i pushes to j
            total, _ = net.edge_rows(self.channel + "_sent", sent)
            sent = total + sent
            net.keep_edge_rows(self.channel + "_sent", sent)
        row_bytes = (rows.shape[1] * torch.finfo(wire).bits // 8) * out_degree.cpu().double() / \
            net.degrees.cpu().double().clamp(min=1)
        received, arrived = net.edge_exchange(sent, self.channel, row_bytes=row_bytes)
        if lossy:  # add what arrived beyond the last sum heard on that edge
            heard, _ = net.edge_rows(self.channel + "_heard", received)
            arrived = arrived.unsqueeze(1)
            received, heard = torch.where(arrived, received - heard, 0.0), torch.where(arrived, received, heard)
            net.keep_edge_rows(self.channel + "_heard", heard)
        incoming = received.new_zeros(rows.shape).index_add_(0, receiver, received)
        return (share.to(wire) + incoming).to(rows.dtype)


def _team_size(network) -> int:
    return network.graph.number_of_nodes()


PUSH_SUM_SCHEMA = {"out_neighbors": (OUT_NEIGHBORS, "all"), "direction_seed": (int, 0, SEED_RANGE)}
