"""How optimizers talk to the other nodes.

An optimizer only ever holds the rows of the node stack that live in its process and asks the
network for graph-shaped products of them. Every call is one *exchange*: each node sends one
message (its row of ``x``) to every neighbour, and gets back a combination of what it received:

- ``mix(x, channel, row_bytes, out=None)``: ``W x`` with Metropolis weights W,
- ``neighbor_sum(x, channel, row_bytes, out=None)``: ``A x`` with the adjacency matrix A.

Algorithms that keep one variable per edge end (relaxed ADMM) use two more calls:

- ``edge_exchange(messages, channel, row_bytes)``: one message per directed edge, ``messages[e]`` from the
  local robot ``in_edges()[e]`` back to the neighbour whose edge e is; returns, for every edge e into a local
  robot, the message that neighbour sent over it and whether it arrived (a lost one is simply not there),
- ``edge_rows(channel, like)`` / ``keep_edge_rows(channel, rows)``: rows the receiving end of each edge keeps
  across rounds (and checkpoints), aligned with ``in_edges()``; a row never kept before comes back flagged
  as fresh.

``out`` (optional, shaped like ``x`` and not overlapping it) receives the result: an optimizer that
keeps its own buffers saves allocating (and page-faulting) a new stack-sized tensor every exchange.

``row_bytes`` is what one message really costs on the radio (a number, or one number per node):
a dense float row by default (n * element size); a compressed message says its own size (see
``optimizers/comm/compressors.py``). ``bytes_sent[i]`` adds degree_i * row_bytes_i per exchange; a
dropped message was still transmitted and still counts. ``channel`` names the quantity being
exchanged (e.g. "theta", "tracker"): a receiver keeps one last-received row per neighbour and
channel.

In one process these are matrix products over the whole stack. A distributed backend answers the
same calls by sending each local row (and its byte size) to the processes that host the
neighbours and combining what arrives, so optimizer code never changes. The receiving side of a
lossy link is the same for both: ``lossy_combine`` works from (source, destination) rows.

Lossy links (``set_link_model(model)``, a model of :mod:`optimizers.comm.link_models`; ``set_links(drop_prob,
seed)`` for independent losses): the model decides, counter-based on (seed, exchange, src, dst, channel),
which directed messages are lost, so the same messages are lost however the robots are spread over
processes. A receiver then uses the last row it received from that neighbour on that channel, or its own
current row if none has arrived yet; so losing every message makes every node train alone (W x = x,
A x = d x), and no model takes the exact, lossless path. ``set_graph`` changes the graph between rounds; the last-received rows of an edge
survive while it is absent.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import networkx as nx
import numpy as np
import torch

from foundation import state
from optimizers.comm.aggregation import combine
from optimizers.comm.asynchrony import deliver
from optimizers.comm.graphs import metropolis_weights
from optimizers.comm.link_models import IndependentLoss, join_link_states

# Above this many nodes a sparse product beats a dense one for sparse graphs.
_SPARSE_MIN_NODES = 32
_SPARSE_MAX_DENSITY = 0.25
# A sparse product over a stack larger than this goes in column blocks of about this size: each block of
# x stays in cache while every output row gathers its neighbours' rows from it (a whole 1,000 x 30k stack
# does not, and one product over it streams neighbour rows from memory). Same sums in the same order.
_BLOCK_BYTES = 4 << 20


def _into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return result if out is None else out.copy_(result)


class HeldRows:
    """What the receivers of lossy links hold: per channel, the last row each directed edge delivered."""

    def __init__(self):
        self.edge_ids: dict[tuple[int, int], int] = {}  # directed edge (src, dst), global ids -> buffer row
        self.last_rows: dict[str, torch.Tensor] = {}     # channel -> (edges seen, n) last received rows
        self.arrived: dict[str, torch.Tensor] = {}       # channel -> (edges seen,) anything received yet

    def ids(self, edges) -> list[int]:
        return [self.edge_ids.setdefault(edge, len(self.edge_ids)) for edge in edges]

    def buffers(self, channel: str, x: torch.Tensor):
        rows = self.last_rows.get(channel)
        grow = len(self.edge_ids) - (0 if rows is None else len(rows))
        if grow > 0:
            new_rows = x.new_zeros((grow,) + x.shape[1:])
            new_flags = torch.zeros(grow, dtype=torch.bool, device=x.device)
            self.last_rows[channel] = new_rows if rows is None else torch.cat([rows, new_rows])
            self.arrived[channel] = new_flags if rows is None else torch.cat([self.arrived[channel], new_flags])
        return self.last_rows[channel], self.arrived[channel]

    def state_dict(self) -> dict:
        directed = torch.tensor(list(self.edge_ids), dtype=torch.long).reshape(-1, 2)
        return {"edge_ids": directed, **state.capture(self, ("last_rows", "arrived"))}

    def load_state_dict(self, saved: dict) -> None:
        self.edge_ids = {tuple(e): i for i, e in enumerate(saved["edge_ids"].tolist())}
        state.restore(self, {k: saved[k] for k in ("last_rows", "arrived")})


def join_held(parts: list[dict]) -> dict:
    """The held rows of every block (each holds the edges into its own robots) as one ``HeldRows`` state."""
    edges = [p["edge_ids"] for p in parts]
    joined: dict[str, Any] = {"edge_ids": torch.cat(edges) if edges else torch.zeros(0, 2, dtype=torch.long),
              "last_rows": {}, "arrived": {}}
    for channel in dict.fromkeys(c for p in parts for c in p["last_rows"]):
        kept = [p for p in parts if channel in p["last_rows"]]
        rows = [p["last_rows"][channel] for p in kept]
        flags = [p["arrived"][channel] for p in kept]
        width = rows[0].shape[1:]
        # a block that has not used the channel yet holds none of its edges' rows: nothing arrived there
        full_rows, full_flags = [], []
        for p in parts:
            count = len(p["edge_ids"])
            if channel in p["last_rows"]:
                r, f = p["last_rows"][channel], p["arrived"][channel]
                full_rows.append(torch.cat([r, r.new_zeros((count - len(r),) + width)]))
                full_flags.append(torch.cat([f, f.new_zeros(count - len(f))]))
            else:
                full_rows.append(rows[0].new_zeros((count,) + width))
                full_flags.append(flags[0].new_zeros(count))
        joined["last_rows"][channel] = torch.cat(full_rows)
        joined["arrived"][channel] = torch.cat(full_flags)
    return joined


def held_state(network: dict) -> dict:
    """The held rows of a saved network state; checkpoints of earlier versions kept them at its top level."""
    if "held" in network:
        return network["held"]
    return {"edge_ids": network.get("edge_ids", torch.zeros(0, 2, dtype=torch.long)),
            "last_rows": network.get("last_rows", {}), "arrived": network.get("arrived", {})}


def team_network_state(parts: list[tuple[int, int, dict]]) -> dict:
    """One network state for the team from every block's ``state_dict()`` (per-robot byte counters in
    robot order, every block's held rows and link memory; the exchange count and the graph are the same in
    every block)."""
    parts = sorted(parts, key=lambda p: p[0])
    first = parts[0][2]
    joined = {**first, "bytes_sent": torch.cat([p[2]["bytes_sent"] for p in parts]),
              "held": join_held([held_state(p[2]) for p in parts]),
              "link_model": join_link_states([p[2].get("link_model", {}) for p in parts])}
    if all("tallies" in p[2] for p in parts):
        joined["tallies"] = {key: torch.cat([p[2]["tallies"][key] for p in parts]) for key in ("dropped", "clipped")}
    return joined


def block_network_state(network: dict, start: int, stop: int) -> dict:
    """The per-robot counters of a team network state cut to robots start..stop-1."""
    network = dict(network)
    network["bytes_sent"] = network["bytes_sent"][start:stop].clone()
    if "tallies" in network:
        network["tallies"] = {key: value[start:stop].clone() for key, value in network["tallies"].items()}
    return network


def link_state(model, held: HeldRows) -> dict:
    """What ``model`` remembers per link, numbered like ``held``'s rows ({} without a model)."""
    return {} if model is None else model.state(len(held.edge_ids))


def lossy_combine(held: HeldRows, channel: str, exchange: int, link_model, graph: nx.Graph, x_local: torch.Tensor,
                  sources: torch.Tensor, links: dict, weight: torch.Tensor, relative: bool, faults=None,
                  aggregation: dict | None = None, tallies: "Tallies | None" = None) -> torch.Tensor:
    """The receiving side of lossy, faulty or robustly combined links, for the local robots' rows ``x_local``:
    ``aggregation``'s combination (:mod:`optimizers.comm.aggregation`; default the mean: sum_j weight_ij h_ij, or,
    ``relative``, x_i + sum_j weight_ij (h_ij - x_i), = W x when every row is fresh and exactly x_i when none is)
    of the rows h_ij robot i holds from j. What j sent is first changed by its fault (``faults``,
    :mod:`optimizers.comm.faults`), then lost or delivered by the link model; a row with a NaN or an infinity is
    dropped like a lost message (counted in ``tallies.dropped`` per receiver). h_ij of a lost message is the last
    row received from j, or x_i itself before any arrived or when the model leaves failed edges out of the exchange
    (symmetric links). ``links`` lists the directed edges into local robots: "src"/"dst" global ids, "source" the
    row of ``sources`` holding src's message, "dst_local" the local row of dst, "ids" their buffer rows."""
    ids, source, dst = links["ids"], links["source"], links["dst_local"]
    rows, arrived = held.buffers(channel, x_local)
    if faults is None and link_model is None and bool(torch.isfinite(sources).all()):
        # every message arrives as sent: written straight into the held rows (robust rules on clean links)
        if in_order(ids, rows):
            torch.index_select(sources, 0, source, out=rows)
            arrived.fill_(True)
            return combine(aggregation, x_local, dst, weight, rows, relative,
                           clipped=None if tallies is None else tallies.clipped)
    messages = sources[source]
    sent = None
    if faults is not None:
        messages, sent = faults.transform(held, exchange, channel, links, messages, x_local, weight)
    if link_model is not None:
        delivered, messages = deliver(link_model, exchange, links["src"], links["dst"], ids, channel, graph, messages)
    else:
        delivered = torch.ones(len(ids), dtype=torch.bool, device=messages.device)
    if sent is not None:
        delivered = delivered & sent
    if faults is None and link_model is None:  # a row is non-finite on every edge it goes out on: check it once
        finite = torch.isfinite(sources).all(dim=1)[source]
    else:
        finite = torch.isfinite(messages).all(dim=1)
    if not bool(finite.all()):
        dropped = delivered & ~finite
        if tallies is not None:
            tallies.dropped += torch.bincount(dst[dropped].cpu(), minlength=len(x_local)).to(torch.float64)
        delivered = delivered & finite
    if in_order(ids, rows):  # the held rows are the edges' rows in order: replace them in one pass
        lost = ~delivered
        if bool(lost.any()):
            messages[lost] = rows[lost]  # (messages is this call's own copy)
        rows.copy_(messages)
        arrived |= delivered
    else:
        rows[ids[delivered]] = messages[delivered]
        arrived[ids[delivered]] = True
    absent = link_model is not None and link_model.absent_when_lost
    fallback = delivered if absent else arrived[ids]  # the edge left out, or held rows
    if bool(fallback.all()):
        held_rows = rows if in_order(ids, rows) else rows[ids]
    else:
        held_rows = torch.where(fallback.unsqueeze(1), rows[ids], x_local[dst])
    return combine(aggregation, x_local, dst, weight, held_rows, relative,
                   clipped=None if tallies is None else tallies.clipped)


def in_order(ids: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether the edges' buffer rows ``ids`` are every held row, in order (one process's fixed graph)."""
    return len(ids) == len(rows) and bool((ids == torch.arange(len(ids), device=ids.device)).all())


class Tallies:
    """Per local robot: messages it dropped as non-finite and rows its robust rule clipped, so far."""

    def __init__(self, count: int):
        self.dropped = torch.zeros(count, dtype=torch.float64)
        self.clipped = torch.zeros(count, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {"dropped": self.dropped.clone(), "clipped": self.clipped.clone()}

    def load_state_dict(self, saved: dict) -> None:
        self.dropped.copy_(saved["dropped"])
        self.clipped.copy_(saved["clipped"])


def edge_slots(adjacency: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each directed edge src -> dst: dst's place among src's neighbours in ascending id order."""
    places = np.cumsum(adjacency != 0, axis=1) - 1
    return places[src, dst]


class EdgeExchange:
    """Per-edge messages and per-edge rows, for a network that lists the directed edges into its robots in
    ``_links`` (sorted by receiver, then sender) and sends rows with ``_send(rows, row_bytes)``."""

    # what the network that mixes this in provides (InProcessNetwork, TorchDistributedNetwork)
    _links: dict[str, torch.Tensor]
    _send: Callable[[torch.Tensor, Any], torch.Tensor]
    set_graph: Callable[[nx.Graph], None]
    device: torch.device
    graph: nx.Graph
    bytes_sent: torch.Tensor
    exchanges: int
    link_model: Any  # None: every message arrives
    held: HeldRows
    faults: Any = None  # optimizers.comm.faults.Faults: robots that send wrong messages (None: every robot is honest)
    aggregation: dict | None = None  # optimizers.comm.aggregation: how a receiver combines (None: the mean)
    tallies: Tallies

    def close(self) -> None:
        """The pair is over (a network of processes tells its peers; here nothing to do)."""

    def set_faults(self, faults) -> None:
        """Robots misbehave as ``faults`` (:class:`optimizers.comm.faults.Faults`) says from now on (None: none)."""
        self.faults = faults

    def set_aggregation(self, aggregation: dict | None) -> None:
        """Receivers combine their neighbours' rows by this rule (:mod:`optimizers.comm.aggregation`; None: mean)."""
        self.aggregation = None if not aggregation or aggregation["rule"] == "mean" else dict(aggregation)

    def _plain(self, sources: torch.Tensor) -> bool:
        """Whether an exchange can take the exact product: no lossy link, no misbehaving robot this round, the
        plain mean, and every row finite (a NaN or an infinity is dropped on the receiving side instead)."""
        if self.link_model is not None or self.aggregation is not None:
            return False
        if self.faults is not None and bool(self.faults.active(self._links["src"]).any()):
            return False
        return bool(torch.isfinite(sources).all())

    def _set_edge_slots(self, adjacency: np.ndarray) -> None:
        links, src, dst = self._links, self._links["src"].numpy(), self._links["dst"].numpy()
        as_index = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        links["slot_back"] = as_index(edge_slots(adjacency, dst, src))  # where dst packs its message to src
        links["slot_from"] = as_index(edge_slots(adjacency, src, dst))  # where src packed its message to dst
        self._max_degree = max(1, int((adjacency != 0).sum(axis=1).max(initial=0)))

    def in_edges(self) -> torch.Tensor:
        """The local row of the receiving robot of every directed edge into a local robot."""
        return self._links["dst_local"]

    def in_edge_ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ids (sender, receiver) of every directed edge into a local robot, aligned with ``in_edges()``."""
        return self._links["src"], self._links["dst"]

    def edge_exchange(self, messages: torch.Tensor, channel: str, row_bytes=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each robot sends every neighbour its own message (one row per edge and direction; a robot's
        messages travel packed in one row per robot, in its neighbours' id order)."""
        links, n = self._links, messages.shape[1]
        packed = messages.new_zeros((len(self.bytes_sent), self._max_degree, n))
        packed[links["dst_local"], links["slot_back"]] = messages
        if row_bytes is None:
            row_bytes = n * messages.element_size()
        sources = self._send(packed.reshape(len(packed), -1), row_bytes).reshape(-1, self._max_degree, n)
        received = sources[links["source"], links["slot_from"]]
        arrived = torch.ones(len(received), dtype=torch.bool, device=received.device)
        if self.faults is not None:  # a receiver's own row: the mean of what its honest neighbours sent it
            honest = ~self.faults.faulty[links["src"]].to(received.device)
            count = torch.zeros(len(self.bytes_sent), dtype=received.dtype, device=received.device).index_add_(
                0, links["dst_local"][honest], torch.ones_like(received[honest, 0]))
            own = torch.zeros((len(self.bytes_sent), n), dtype=received.dtype, device=received.device).index_add_(
                0, links["dst_local"][honest], received[honest]) / count.clamp_min(1).unsqueeze(1)
            received, sent = self.faults.transform(self.held, self.exchanges, channel, links, received, own,
                                                   torch.ones(len(received), dtype=received.dtype,
                                                              device=received.device))
            arrived &= sent
        if self.link_model is not None:
            delivered, received = deliver(self.link_model, self.exchanges, links["src"], links["dst"], links["ids"],
                                          channel, self.graph, received)
            arrived &= delivered
        finite = torch.isfinite(received).all(dim=1)
        if not bool(finite.all()):  # dropped like a lost message
            self.tallies.dropped += torch.bincount(links["dst_local"][arrived & ~finite].cpu(),
                                                   minlength=len(self.bytes_sent)).to(torch.float64)
            arrived &= finite
            received = torch.where(finite.unsqueeze(1), received, torch.zeros_like(received))
        return received, arrived

    def edge_rows(self, channel: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows kept on ``channel`` at the receiving end of every edge into a local robot (rows shaped
        like ``like``'s), and which of them were never kept (zeros)."""
        rows, kept = self.held.buffers(channel, like)
        ids = self._links["ids"]
        return rows[ids], ~kept[ids]

    def keep_edge_rows(self, channel: str, rows: torch.Tensor) -> None:
        held, kept = self.held.buffers(channel, rows)
        ids = self._links["ids"]
        held[ids] = rows
        kept[ids] = True

    def state_dict(self) -> dict:
        """The local robots' byte counters, the exchange count (lost messages are a function of it), the
        graph in use (it changes when the graph is dynamic) and, with lossy links, the last rows each local
        robot received and what the link model remembers."""
        edges = torch.tensor(sorted(self.graph.edges()), dtype=torch.long).reshape(-1, 2)
        return {"bytes_sent": self.bytes_sent.clone(), "exchanges": self.exchanges, "edges": edges,
                "held": self.held.state_dict(), "link_model": link_state(self.link_model, self.held),
                "tallies": self.tallies.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        self.held.load_state_dict(held_state(saved))
        if self.link_model is not None and saved.get("link_model"):
            self.link_model.load_state(saved["link_model"])
        graph = nx.Graph()
        graph.add_nodes_from(self.graph.nodes(data=True))
        graph.add_edges_from(saved["edges"].tolist())
        graph.graph.update(self.graph.graph)
        self.set_graph(graph)
        self.bytes_sent.copy_(saved["bytes_sent"])
        self.exchanges = int(saved["exchanges"])
        if "tallies" in saved:  # a checkpoint without tallies: none counted yet
            self.tallies.load_state_dict(saved["tallies"])


def graph_product(operator: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``operator @ x`` into ``out`` (allocated when None), for a dense or sparse CSR ``operator``.

    Bit-identical to ``operator @ x``: a column block of a product is the product of the column block.
    """
    if operator.layout != torch.sparse_csr or x.dim() != 2 or x.device.type != "cpu":
        return _into(operator @ x, out)
    if out is None:
        out = torch.empty_like(x)
    rows, cols = x.shape
    block = max(64, _BLOCK_BYTES // max(1, rows * x.element_size()))
    if cols <= block:
        return torch.mm(operator, x, out=out)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        torch.mm(operator, x[:, start:stop], out=out[:, start:stop])
    return out


# Up to this many terms per row (a node and its neighbours), small graphs sum rows term by term.
_ORDERED_MAX_TERMS = 16


class OrderedRowSums:
    """``M @ x`` for a matrix with few nonzeros per row: each row of the result is summed one term at
    a time in increasing column order, every multiply and add a separate, exactly rounded operation.
    A row's bits therefore depend only on its own terms, never on the other rows in the call (a GEMM's
    rounding changes with the shapes), so a process that holds a block of the rows computes exactly
    what one process holding all of them does, in float32 too."""

    def __init__(self, matrix: np.ndarray, device, dtype):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        terms = [np.flatnonzero(row) for row in self.matrix]
        width = max([1] + [len(t) for t in terms])
        index = np.zeros((len(terms), width), dtype=np.int64)
        weight = np.zeros((len(terms), width))
        for i, t in enumerate(terms):  # padding: weight 0 on column 0, which adds (+-)0
            index[i, :len(t)], weight[i, :len(t)] = t, self.matrix[i, t]
        self.index = torch.as_tensor(index, device=device)
        self.weight = torch.as_tensor(weight, device=device, dtype=dtype).unsqueeze(-1)
        self.layout = "ordered"

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        out = flat.index_select(0, self.index[:, 0]).mul_(self.weight[:, 0])
        term = torch.empty_like(out)
        for d in range(1, self.index.shape[1]):
            torch.index_select(flat, 0, self.index[:, d], out=term)
            out.add_(term.mul_(self.weight[:, d]))
        return out.reshape(self.index.shape[0], *x.shape[1:])

    def to_dense(self) -> torch.Tensor:
        return torch.as_tensor(self.matrix, device=self.index.device, dtype=self.weight.dtype)


def operator_kind(matrix: np.ndarray) -> str:
    """How ``M @ x`` is computed for a square matrix M: "sparse" (CSR) for large sparse graphs,
    "ordered" (:class:`OrderedRowSums`) when every row has few terms, else "dense"."""
    n = matrix.shape[0]
    nonzero = matrix != 0
    if n >= _SPARSE_MIN_NODES and np.count_nonzero(nonzero) / max(1, n * n) <= _SPARSE_MAX_DENSITY:
        return "sparse"
    return "ordered" if nonzero.sum(axis=1).max(initial=0) <= _ORDERED_MAX_TERMS else "dense"


def make_operator(kind: str, matrix: np.ndarray, device, dtype):
    """``matrix`` (or some of its rows and columns) as the operator of ``kind``."""
    if kind == "ordered":
        return OrderedRowSums(matrix, device, dtype)
    dense = torch.as_tensor(matrix, device=device, dtype=dtype)
    if kind == "sparse":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            return dense.to_sparse_csr()
    return dense


def _as_operator(matrix: np.ndarray, device, dtype):
    return make_operator(operator_kind(matrix), matrix, device, dtype)


class InProcessNetwork(EdgeExchange):
    """All nodes in this process; communication is a product with a graph-shaped matrix."""

    def __init__(self, graph: nx.Graph, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_nodes = graph.number_of_nodes()
        self.local_nodes = slice(0, self.num_nodes)
        self.bytes_sent = torch.zeros(self.num_nodes, dtype=torch.float64)
        self.exchanges = 0
        self.link_model = None  # None: every message arrives
        self.held = HeldRows()
        self.tallies = Tallies(self.num_nodes)
        self.set_graph(graph)

    def robot_ids(self) -> torch.Tensor:
        """Global ids of the robots whose rows this network's calls take (all of them here)."""
        return torch.arange(self.num_nodes)

    def set_link_model(self, model) -> None:
        """Lose messages as ``model`` (:mod:`optimizers.comm.link_models`) says from now on (None: none)."""
        self.link_model = model

    def set_links(self, drop_prob: float, seed: int) -> None:
        """Drop each directed message independently with probability ``drop_prob`` from now on."""
        self.set_link_model(IndependentLoss(seed, drop_prob) if drop_prob > 0 else None)

    def set_graph(self, graph: nx.Graph) -> None:
        """Use a new communication graph (same node set) from now on."""
        if graph.number_of_nodes() != self.num_nodes:
            raise ValueError(f"graph has {graph.number_of_nodes()} nodes, network has {self.num_nodes}")
        nodes = list(range(self.num_nodes))
        self.graph = graph
        adjacency = nx.to_numpy_array(graph, nodelist=nodes, dtype=np.float64)
        np.fill_diagonal(adjacency, 0.0)
        mixing = metropolis_weights(graph)
        self._adjacency = _as_operator(adjacency, self.device, self.dtype)
        self._mixing = _as_operator(mixing, self.device, self.dtype)
        self.degrees = torch.as_tensor(adjacency.sum(axis=1), device=self.device, dtype=self.dtype)
        self._degrees_cpu = torch.as_tensor(adjacency.sum(axis=1), dtype=torch.float64)
        self.is_connected = self.num_nodes == 1 or nx.is_connected(graph)
        dst, src = np.nonzero(adjacency)  # message src -> dst
        as_index = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        self._links = {"src": torch.as_tensor(src, dtype=torch.long), "dst": torch.as_tensor(dst, dtype=torch.long),
                       "source": as_index(src), "dst_local": as_index(dst),
                       "ids": as_index(self.held.ids(zip(src.tolist(), dst.tolist())))}
        self._edge_weight = torch.as_tensor(mixing[dst, src], device=self.device, dtype=self.dtype)
        self._set_edge_slots(adjacency)

    def _count(self, x: torch.Tensor, row_bytes) -> None:
        if row_bytes is None:
            row_bytes = x[0].numel() * x.element_size()
        self.bytes_sent += self._degrees_cpu * torch.as_tensor(row_bytes, dtype=torch.float64)
        self.exchanges += 1

    def _send(self, rows: torch.Tensor, row_bytes) -> torch.Tensor:
        self._count(rows, row_bytes)
        return rows

    def anywhere(self, flag: bool) -> bool:
        """True when ``flag`` is true in any process hosting robots (here: this one)."""
        return bool(flag)

    def total(self, count: int) -> int:
        """The sum of ``count`` over the processes hosting robots (here: this one)."""
        return int(count)

    def mix(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
        """``W x``: Metropolis-weighted average of each node's and its neighbours' rows."""
        self._count(x, row_bytes)
        if not self._plain(x):
            return _into(self._lossy(x, channel, self._edge_weight, relative=True), out)
        return graph_product(self._mixing, x, out)

    def neighbor_sum(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """``A x``: sum of the neighbours' rows for each node."""
        self._count(x, row_bytes)
        if not self._plain(x):
            return _into(self._lossy(x, channel, torch.ones_like(self._edge_weight), relative=False), out)
        return graph_product(self._adjacency, x, out)

    def _lossy(self, x, channel, edge_weight, relative: bool) -> torch.Tensor:
        return lossy_combine(self.held, channel, self.exchanges, self.link_model, self.graph, x, x, self._links,
                             edge_weight, relative, self.faults, self.aggregation, self.tallies)

    def mixing_matrix(self) -> torch.Tensor:
        m = self._mixing
        return m if isinstance(m, torch.Tensor) and m.layout == torch.strided else m.to_dense()
