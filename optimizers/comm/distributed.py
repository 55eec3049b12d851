"""The network of ``optimizers.comm.network`` across processes, on ``torch.distributed``.

Rank r of K hosts the contiguous block ``robot_blocks(N, K)[r]`` of the N robots (blocks differ in
size by at most one; K > N is refused) and holds only those rows of every node-stack tensor. Every
rank is given the same whole communication graph (it is small: N nodes) and derives from it, for
each peer rank q, which of its own robots have a neighbour hosted by q (the rows it sends to q) and
which of q's robots neighbour its own (the rows it receives from q). One exchange is then one
``dist.batch_isend_irecv`` with, per peer that hosts a neighbour, one packed send and one packed
receive: a robot's row travels once to each rank that hosts at least one of its neighbours, never to
the others, and ranks with no edge between their blocks do not talk at all. The received rows land
in a "halo" tensor whose rows are the local block plus the received robots in global order, and
``mix`` / ``neighbor_sum`` are the local rows of W / A restricted to those columns times the halo
(the same operator as ``InProcessNetwork``: term-by-term row sums for small graphs, sparse CSR for
large sparse ones, a dense product otherwise), so each local row sums the same terms in the same
order as the one-process product: in the tests, results are bit-identical to it.

Point-to-point rather than a collective: an ``all_gather`` of the blocks moves every row to every
rank (K - 1 times the stack per exchange) whatever the graph, whereas a sparse graph (cycle, disk)
cut into contiguous blocks only has edges across the few block boundaries, so p2p sends a handful
of rows. On a dense graph the two move the same rows; p2p then costs one message per peer.

Byte counts: ``bytes_sent`` (float64, one entry per local robot) counts, like the one-process
network, one row per neighbour per exchange, the figure a robot radio would send. ``wire_bytes_sent``
counts the bytes this process actually handed to ``torch.distributed`` (rows sent once per peer
rank; zero for edges inside the block); ``wire_bytes_per_exchange`` is that per exchange.

A peer that dies or stops answering makes the waiting rank raise ``PeerLostError`` within the
process group's timeout (gloo: immediately when the peer's socket closes, after the timeout when it
hangs). The error names the rank(s) whose heartbeat in the job's store stopped (``start_heartbeat``;
a dead or hung process stops beating), else the peer it was waiting on (or "a peer" in a
collective): a rank that never exchanges with the lost one still names it.

Helpers for metrics across ranks: ``gather_rows`` (local rows to rank 0), ``consensus_error`` (each
robot's distance to the mean unit-normalized row, the mean from one all_reduce of block sums),
``any_rank`` (a flag every rank agrees on) and ``check_identical`` (a tensor is bit-identical on every
rank, compared by checksum). Starting the process group from torchrun's environment is
``optimizers.comm.dist_launch``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager

import networkx as nx
import numpy as np
import torch
import torch.distributed as dist

from optimizers.comm.graphs import metropolis_weights
from optimizers.comm.link_models import IndependentLoss
from optimizers.comm.network import EdgeExchange, HeldRows, Tallies, lossy_combine, make_operator, operator_kind


class PeerLostError(RuntimeError):
    """Another rank died or stopped answering during an exchange."""


HEARTBEAT_S = 1.0  # every rank bumps a counter in the job's store this often (``start_heartbeat``)


def _heartbeat_key(rank: int) -> str:
    return f"nndt/heartbeat/{rank}"


def start_heartbeat(stop: threading.Event | None = None) -> threading.Event:
    """Bump this rank's counter in the process group's store every ``HEARTBEAT_S`` seconds (a daemon
    thread; set the returned event to stop), so that after a failure the others can tell who went silent."""
    stop = stop or threading.Event()
    store, key = dist.distributed_c10d._get_default_store(), _heartbeat_key(dist.get_rank())

    def beat():
        while True:
            try:
                store.add(key, 1)
            except Exception:  # the store is gone: nothing left to tell
                return
            if stop.wait(HEARTBEAT_S):
                return

    threading.Thread(target=beat, name="rank-heartbeat", daemon=True).start()
    return stop


_LOST_KEY = "nndt/lost"


def silent_ranks(exclude: frozenset[int] | set[int] = frozenset()) -> list[int] | None:
    """Ranks whose heartbeat did not move for 2.5 beats (dead or hung), None when it cannot be told
    (no heartbeats, or the store itself is gone). Takes about 2.5 seconds; the first rank to find
    them records them in the store, and the others (whose peers may be exiting by then) read that."""
    try:
        store = dist.distributed_c10d._get_default_store()
        if store.check([_LOST_KEY]):
            return [int(r) for r in store.get(_LOST_KEY).decode().split(",")]
        others = [r for r in range(dist.get_world_size()) if r != dist.get_rank() and r not in exclude]
        if not all(store.check([_heartbeat_key(r)]) for r in others):
            return None
        before = [store.add(_heartbeat_key(r), 0) for r in others]
        deadline = time.monotonic() + 2.5 * HEARTBEAT_S
        while time.monotonic() < deadline:
            try:
                time.sleep(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:  # e.g. torchrun stopping the survivors: finish telling who is lost
                pass
        after = [store.add(_heartbeat_key(r), 0) for r in others]
        silent = [r for r, b, a in zip(others, before, after) if a == b]
        if silent:
            recorded = store.compare_set(_LOST_KEY, "", ",".join(map(str, silent))).decode()
            silent = [int(r) for r in recorded.split(",")]
    except Exception:
        return None
    return silent


def ranks_text(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _lost_message(rank: int, fallback: str, during: str, error: BaseException) -> str:
    """One line naming the silent rank(s) when the heartbeats tell, else ``fallback``."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first = first.split(". This is typically caused")[0]  # gloo's advice to read the other logs
    silent = silent_ranks()
    who = ranks_text(silent) if silent else fallback
    return f"rank {rank} lost {who} {during}: {first}"


def robot_blocks(num_robots: int, world_size: int) -> list[slice]:
    """Contiguous blocks of robots per rank; the first ``N % K`` ranks host one robot more."""
    if world_size < 1 or num_robots < 1:
        raise ValueError(f"need at least one robot and one rank (got N={num_robots}, K={world_size})")
    if world_size > num_robots:
        raise ValueError(f"world size {world_size} exceeds the {num_robots} robots: every rank must host "
                         f"at least one robot (use at most {num_robots} processes)")
    base, extra = divmod(num_robots, world_size)
    ends = np.cumsum([0] + [base + (r < extra) for r in range(world_size)])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def _operator(full: np.ndarray, rows: slice, columns: list, device, dtype):
    """``full[rows][:, columns]`` as the operator the one-process network uses for ``full`` (the
    choice is made on the whole matrix, so every rank and the one-process network choose alike)."""
    return make_operator(operator_kind(full), full[rows][:, columns], device, dtype)


def _comm_device() -> torch.device:
    """Where small collective tensors live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class TorchDistributedNetwork(EdgeExchange):
    """This rank's block of the robots; ``mix`` and ``neighbor_sum`` exchange rows with the ranks
    that host neighbours. Every rank must call every method in the same order (they are collective)."""

    def __init__(self, graph: nx.Graph, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, group=None):
        if not dist.is_initialized():
            raise RuntimeError("TorchDistributedNetwork needs an initialized process group "
                               "(optimizers.comm.dist_launch.init_distributed)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_nodes = graph.number_of_nodes()
        self.blocks = robot_blocks(self.num_nodes, self.world_size)
        self.local_nodes = self.blocks[self.rank]
        self.num_local = self.local_nodes.stop - self.local_nodes.start
        self.bytes_sent = torch.zeros(self.num_local, dtype=torch.float64)
        self.link_model = None  # None: every message arrives
        self.held = HeldRows()
        self.tallies = Tallies(self.num_local)
        self.wire_bytes_sent = 0
        self.wire_bytes_per_exchange = 0
        self.exchanges = 0
        # verify: the same graph everywhere, and every rank in the group once before the first p2p
        # exchange (NCCL requires the first call on a group to involve all ranks).
        self.set_graph(graph, verify=True)

    def robot_ids(self) -> torch.Tensor:
        """Global ids of this rank's robots (the rows its calls take)."""
        return torch.arange(self.local_nodes.start, self.local_nodes.stop)

    def set_link_model(self, model) -> None:
        """Lose messages as ``model`` says from now on (the same messages as in one process: the decisions
        are counter-based)."""
        self.link_model = model

    def set_links(self, drop_prob: float, seed: int) -> None:
        self.set_link_model(IndependentLoss(seed, drop_prob) if drop_prob > 0 else None)

    def state_dict(self) -> dict:
        """This rank's part (its robots' counters and held rows; the exchange count and the graph are the
        same on every rank), and the bytes this rank put on the wire."""
        return {**super().state_dict(), "wire_bytes_sent": self.wire_bytes_sent}

    def load_state_dict(self, saved: dict) -> None:
        """From a team state (:func:`optimizers.comm.network.team_network_state`) cut to this rank's robots."""
        super().load_state_dict(saved)
        self.wire_bytes_sent = int(saved.get("wire_bytes_sent", 0))

    def _global(self, rank: int) -> np.ndarray:
        return np.arange(self.blocks[rank].start, self.blocks[rank].stop)

    def _global_rank(self, rank: int) -> int:
        """P2POp names peers by their rank in the default group."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def set_graph(self, graph: nx.Graph, verify: bool = False) -> None:
        """Use a new communication graph (same node set; every rank must pass the same graph).
        ``verify`` checks that they did (one small all_gather; always done by the constructor)."""
        if graph.number_of_nodes() != self.num_nodes:
            raise ValueError(f"graph has {graph.number_of_nodes()} nodes, network has {self.num_nodes}")
        adjacency = nx.to_numpy_array(graph, nodelist=range(self.num_nodes), dtype=np.float64)
        if verify:
            check_identical(torch.as_tensor(adjacency), "communication graph", self.group)
        self.graph = graph
        np.fill_diagonal(adjacency, 0.0)
        mine = self.local_nodes
        linked = adjacency[mine] != 0  # (local, N): local robot i neighbours global robot j
        self._peers = []  # (group rank, global rank, local rows to send, halo slice to receive into)
        columns: list[int] = []
        for q in range(self.world_size):
            if q == self.rank:
                self._own = slice(len(columns), len(columns) + self.num_local)
                columns.extend(self._global(q))
                continue
            block = self.blocks[q]
            send = np.flatnonzero(linked[:, block].any(axis=1))
            receive = block.start + np.flatnonzero(linked[:, block].any(axis=0))
            if send.size:
                start = len(columns)
                columns.extend(receive)
                self._peers.append((q, self._global_rank(q), torch.as_tensor(send, device=self.device),
                                    slice(start, len(columns))))
        self._halo_rows = len(columns)
        self._rows_sent = sum(len(send) for _, _, send, _ in self._peers)
        self._adjacency = _operator(adjacency, mine, columns, self.device, self.dtype)
        mixing = metropolis_weights(graph)
        self._mixing = _operator(mixing, mine, columns, self.device, self.dtype)
        # the directed edges into this rank's robots, for lossy links (global ids, halo columns)
        column = {int(g): c for c, g in enumerate(columns)}
        dst_local, src = np.nonzero(adjacency[mine])
        dst = dst_local + mine.start
        as_index = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        self._links = {"src": torch.as_tensor(src, dtype=torch.long), "dst": torch.as_tensor(dst, dtype=torch.long),
                       "source": as_index([column[int(j)] for j in src]), "dst_local": as_index(dst_local),
                       "ids": as_index(self.held.ids(zip(src.tolist(), dst.tolist())))}
        self._edge_weight = torch.as_tensor(mixing[dst, src], device=self.device, dtype=self.dtype)
        self._set_edge_slots(adjacency)
        degrees = adjacency[mine].sum(axis=1)
        self.degrees = torch.as_tensor(degrees, device=self.device, dtype=self.dtype)
        self._degrees_cpu = torch.as_tensor(degrees, dtype=torch.float64)
        self.is_connected = self.num_nodes == 1 or nx.is_connected(graph)

    def _halo(self, x: torch.Tensor, row_bytes=None) -> torch.Tensor:
        """The local rows and the neighbours' rows from other ranks, in global robot order."""
        if x.shape[0] != self.num_local:
            raise ValueError(f"expected the {self.num_local} local rows of rank {self.rank}, got {x.shape[0]}")
        rows = x.reshape(self.num_local, -1)
        halo = rows.new_empty((self._halo_rows, rows.shape[1]))
        halo[self._own] = rows
        ops, peers = [], []
        for q, peer, send, receive in self._peers:
            ops += [dist.P2POp(dist.isend, rows.index_select(0, send), peer, self.group),
                    dist.P2POp(dist.irecv, halo[receive], peer, self.group)]
            peers += [q, q]
        if ops:
            waiting_on = "a peer"  # posting a send to a peer whose socket closed fails already
            try:
                works = dist.batch_isend_irecv(ops)
                for work, q in zip(works, peers):
                    waiting_on = f"rank {q}"
                    work.wait()
            except RuntimeError as error:  # gloo/nccl raise DistBackendError, a RuntimeError
                raise PeerLostError(_lost_message(self.rank, waiting_on, f"while exchanging rows "
                                                  f"(exchange {self.exchanges + 1})", error)) from None
        wire_row_bytes = rows.shape[1] * rows.element_size()
        if row_bytes is None:  # a dense row; compressed messages say what they would cost on a radio
            row_bytes = wire_row_bytes
        self.bytes_sent += self._degrees_cpu * torch.as_tensor(row_bytes, dtype=torch.float64)
        self.wire_bytes_per_exchange = self._rows_sent * wire_row_bytes
        self.wire_bytes_sent += self.wire_bytes_per_exchange
        self.exchanges += 1
        return halo

    def _send(self, rows: torch.Tensor, row_bytes) -> torch.Tensor:
        return self._halo(rows, row_bytes)

    def anywhere(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (all ranks must call it)."""
        return any_rank(flag, self.group)

    def total(self, count: int) -> int:
        """The sum of ``count`` over the ranks, on every rank (all ranks must call it)."""
        value = torch.tensor([int(count)], dtype=torch.long, device=_comm_device())
        with collective("sum of counts", self.group):
            dist.all_reduce(value, group=self.group)
        return int(value.item())

    def mix(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
        """Local rows of ``W x``: Metropolis-weighted average of each local robot's and its neighbours' rows."""
        halo = self._halo(x, row_bytes)
        if not self._plain(halo):
            result = lossy_combine(self.held, channel, self.exchanges, self.link_model, self.graph, x, halo,
                                   self._links, self._edge_weight, relative=True, faults=self.faults,
                                   aggregation=self.aggregation, tallies=self.tallies)
        else:
            result = (self._mixing @ halo).reshape(x.shape)
        return result if out is None else out.copy_(result)

    def neighbor_sum(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Local rows of ``A x``: sum of the neighbours' rows for each local robot."""
        halo = self._halo(x, row_bytes)
        if not self._plain(halo):
            result = lossy_combine(self.held, channel, self.exchanges, self.link_model, self.graph, x, halo,
                                   self._links, torch.ones_like(self._edge_weight), relative=False, faults=self.faults,
                                   aggregation=self.aggregation, tallies=self.tallies)
        else:
            result = (self._adjacency @ halo).reshape(x.shape)
        return result if out is None else out.copy_(result)


@contextmanager
def collective(what: str, group=None):
    """A collective that fails because a peer died or hung raises PeerLostError (one line)."""
    try:
        yield
    except RuntimeError as error:  # DistBackendError included
        raise PeerLostError(_lost_message(dist.get_rank(group), "a peer", f"during {what}", error)) from None


def gather_rows(x: torch.Tensor, network: TorchDistributedNetwork, dst: int = 0) -> torch.Tensor | None:
    """The (N, ...) stack of every rank's local rows on rank ``dst`` (None on the other ranks)."""
    device = _comm_device()
    longest = max(b.stop - b.start for b in network.blocks)
    padded = x.new_zeros((longest, *x.shape[1:]), device=device)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in network.blocks] if network.rank == dst else None
    with collective("gather_rows", network.group):
        dist.gather(padded, parts, dst=dst, group=network.group)
    if parts is None:
        return None
    return torch.cat([p[:b.stop - b.start] for p, b in zip(parts, network.blocks)]).to(x.device)


def gather_variable_rows(x: torch.Tensor, network: TorchDistributedNetwork, dst: int = 0) -> torch.Tensor | None:
    """Like :func:`gather_rows` for blocks of any number of rows (e.g. only the evaluated robots)."""
    device = _comm_device()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in network.blocks]
    with collective("gather_rows", network.group):
        dist.all_gather(counts, torch.tensor([x.shape[0]], dtype=torch.int64, device=device), group=network.group)
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]), device=device)
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes] if network.rank == dst else None
    with collective("gather_rows", network.group):
        dist.gather(padded, parts, dst=dst, group=network.group)
    if parts is None:
        return None
    return torch.cat([p[:size] for p, size in zip(parts, sizes)]).to(x.device)


class RankMetrics:
    """A problem's metrics across the ranks (``problem.ranks``): consensus error from reduced sums,
    every per-robot metric gathered on rank 0 in robot order (the others keep no history), plus
    ``wire_bytes_sent``: the bytes each rank has handed to torch.distributed so far."""

    # metrics whose rows are not one per local robot (only the evaluated ones)
    variable_rows = ("validation_as_vector",)

    def __init__(self, network: TorchDistributedNetwork):
        self.network = network

    def consensus_error(self, theta: torch.Tensor) -> torch.Tensor:
        return consensus_error(theta, self.network.num_nodes, self.network.group)

    def all_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, ...) stack of every rank's local rows, on every rank (e.g. robot positions)."""
        network = self.network
        longest = max(b.stop - b.start for b in network.blocks)
        padded = x.new_zeros((longest, *x.shape[1:]), device=_comm_device())
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in network.blocks]
        with collective("all_rows", network.group):
            dist.all_gather(parts, padded, group=network.group)
        return torch.cat([p[:b.stop - b.start] for p, b in zip(parts, network.blocks)]).to(x.device)

    def combine(self, values: dict[str, torch.Tensor], per_robot) -> dict[str, torch.Tensor] | None:
        """Every rank must call it with the same keys; rank 0 gets the team's values, the others None."""
        combined = {}
        for key in sorted(values):  # the same order of collectives on every rank
            value = values[key]
            if key not in per_robot:
                combined[key] = value  # the same on every rank (round, graph, ...): rank 0's
                continue
            wire = value.to(torch.uint8) if value.dtype == torch.bool else value
            gather = gather_variable_rows if key in self.variable_rows else gather_rows
            rows = gather(wire, self.network)
            if rows is not None:
                combined[key] = rows.to(value.dtype).cpu()
        # bytes this pair handed to torch.distributed so far, one entry per rank
        sent = torch.tensor([float(self.network.wire_bytes_sent)], dtype=torch.float64, device=_comm_device())
        parts = [torch.empty_like(sent) for _ in self.network.blocks] if self.network.rank == 0 else None
        with collective("gather of byte counts", self.network.group):
            dist.gather(sent, parts, dst=0, group=self.network.group)
        if parts is not None:
            combined["wire_bytes_sent"] = torch.cat(parts).cpu()
        return combined if self.network.rank == 0 else None


def consensus_error(theta: torch.Tensor, num_nodes: int, group=None) -> torch.Tensor:
    """Per local robot: distance of its unit-normalized row to the mean unit row over all robots,
    as ``problems.base.consensus_distances(theta)[0]`` in one process (the mean from reduced sums)."""
    unit = theta / theta.norm(dim=1, keepdim=True).clamp_min(1e-30)
    total = unit.sum(dim=0).to(_comm_device())
    with collective("consensus_error", group):
        dist.all_reduce(total, group=group)
    return (unit - total.to(unit.device) / num_nodes).norm(dim=1)


def any_rank(flag: bool, group=None) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a local divergence)."""
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    with collective("any_rank", group):
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def checksum(tensor: torch.Tensor) -> int:
    """64-bit digest of a tensor's dtype, shape and bytes."""
    t = tensor.detach().contiguous().cpu()
    digest = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=8)
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def check_identical(tensor: torch.Tensor, what: str, group=None) -> None:
    """Raise one line naming the ranks whose ``tensor`` differs from rank 0's (checksums compared)."""
    mine = torch.tensor([checksum(tensor)], dtype=torch.int64, device=_comm_device())
    sums = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    with collective(f"the check that {what} is identical on every rank", group):
        dist.all_gather(sums, mine, group=group)
    differ = [r for r, s in enumerate(sums) if not torch.equal(s, sums[0])]
    if differ:
        raise ValueError(f"{what} differs across ranks: rank(s) {differ} disagree with rank 0")
