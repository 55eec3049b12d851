"""The network of ``optimizers.comm.network`` for a robot that is its own process: rows travel as messages over a
real transport (``optimizers.comm.team_transport``), and no robot waits for the whole team.

Each robot runs its own rounds. An exchange on a channel (the k-th call of ``mix`` / ``neighbor_sum`` /
``edge_exchange`` with that channel name is round k of the channel) publishes the robot's row, then waits until
every neighbour that is present has a message of that round or newer, at most ``deadline_s``. It then combines,
per neighbour, the newest message received from it (fresh, or older by at most ``max_staleness`` rounds: the
held row of the in-process lossy links), else its own row (as a lost message before any arrived): the same
semantics as the in-process lossy and asynchronous networks, so the optimizers run unchanged. With every
neighbour's row at hand the row of ``W x`` / ``A x`` is the one-process product's row (the same operator over
the same terms); otherwise :func:`optimizers.comm.aggregation.combine` of the held rows, as for lossy links.

A neighbour is present while its presence notes (``HELLO``, every ``hello_s``) keep arriving (silent for
``silent_after_s``: gone) and until it says it finished the pair (``DONE``): an exchange does not wait for a
robot that is gone. Every received message is checked (:mod:`optimizers.comm.team_messages`) and, when not used,
counted by cause: corrupt, unauthenticated (an outsider, or a robot with another key), foreign run, not a
neighbour, duplicate, old. Two processes that claim one robot index are told apart by their presence notes'
nonces: the later one is refused (:class:`TeamConflictError`).

``anywhere`` and ``total`` answer for this robot alone (there is no collective): a robot resets or stops on its
own losses, never on another's.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Callable

import networkx as nx
import numpy as np
import torch

from optimizers.comm import team_messages as tm
from optimizers.comm.aggregation import combine
from optimizers.comm.graphs import metropolis_weights
from optimizers.comm.network import EdgeExchange, HeldRows, Tallies, make_operator, operator_kind

KEPT_ROUNDS = 4  # messages kept per neighbour and channel: its newest rounds


class TeamConflictError(RuntimeError):
    """Another process runs as this robot."""


class TeamNetwork(EdgeExchange):
    """Robot ``robot`` of a team over ``transport``: ``mix`` / ``neighbor_sum`` / ``edge_exchange`` of its row."""

    def __init__(self, graph: nx.Graph, robot: int, transport, key: bytes, run: bytes, pair: str,
                 prefix: str = "nndt", deadline_s: float = 1.0, max_staleness: int = 20, incarnation: int = 0,
                 hello_s: float = 0.5, silent_after_s: float = 5.0, device="cpu", dtype=torch.float32,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 <= robot < graph.number_of_nodes():
            raise ValueError(f"robot {robot} is not one of the graph's {graph.number_of_nodes()} robots")
        self.robot, self.transport, self.key, self.run, self.pair = robot, transport, key, run, pair
        self.prefix, self.deadline_s, self.max_staleness = prefix, float(deadline_s), int(max_staleness)
        self.incarnation, self.hello_s, self.silent_after_s, self.clock = incarnation, hello_s, silent_after_s, clock
        self.device, self.dtype = torch.device(device), dtype
        self.num_nodes = graph.number_of_nodes()
        self.local_nodes = slice(robot, robot + 1)
        self.num_local = 1
        self.bytes_sent = torch.zeros(1, dtype=torch.float64)
        self.exchanges = 0
        self.link_model = None  # the real network decides what arrives
        self.held = HeldRows()
        self.tallies = Tallies(1)
        self.channel_rounds: dict[str, int] = {}
        self.counts: Counter = Counter()  # messages sent, used (fresh / held / missing), dropped by cause
        self.wait_s = 0.0
        self.nonce = os.urandom(8).hex()
        self.conflict: str | None = None
        # (neighbour, channel) -> its newest messages by round (a neighbour may be a round or more ahead)
        self._inbox: dict[tuple[int, str], dict[int, tm.Message]] = {}
        self._seen: dict[int, float] = {}  # neighbour -> when it was last heard
        self._done: dict[int, int] = {}  # neighbour -> the incarnation that finished the pair
        self._authenticated_from: set[int] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.set_graph(graph)
        for j in self.neighbours:  # only neighbours' messages travel to this robot
            transport.subscribe(f"{self._key_root}/{j}", self._receive)
        transport.subscribe(self._key("presence"), self._receive)  # a second process with this index
        self._stop = threading.Event()
        self._started = clock()
        self._hello = threading.Thread(target=self._say_hello, name=f"robot-{robot}-hello", daemon=True)
        self._hello.start()

    # ------------------------------------------------------------------ the interface of the other networks
    def robot_ids(self) -> torch.Tensor:
        return torch.tensor([self.robot])

    def set_link_model(self, model) -> None:
        if model is not None:
            raise ValueError("a team on a real network loses what the network loses: no simulated link model")

    def set_graph(self, graph: nx.Graph) -> None:
        if graph.number_of_nodes() != self.num_nodes:
            raise ValueError(f"graph has {graph.number_of_nodes()} nodes, network has {self.num_nodes}")
        self.graph = graph
        adjacency = nx.to_numpy_array(graph, nodelist=range(self.num_nodes), dtype=np.float64)
        np.fill_diagonal(adjacency, 0.0)
        me = self.robot
        self.neighbours = [int(j) for j in np.flatnonzero(adjacency[me])]
        columns = sorted(self.neighbours + [me])
        self._own_column = columns.index(me)
        mixing = metropolis_weights(graph)
        self._mixing = make_operator(operator_kind(mixing), mixing[[me]][:, columns], self.device, self.dtype)
        self._adjacency = make_operator(operator_kind(adjacency), adjacency[[me]][:, columns], self.device, self.dtype)
        column = {g: c for c, g in enumerate(columns)}
        src = np.array(self.neighbours, dtype=np.int64)
        as_index = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        self._links = {"src": torch.as_tensor(src, dtype=torch.long), "dst": torch.full((len(src),), me, dtype=torch.long),
                       "source": as_index([column[int(j)] for j in src]), "dst_local": as_index([0] * len(src)),
                       "ids": as_index(self.held.ids((int(j), me) for j in src))}
        self._edge_weight = torch.as_tensor(mixing[me, src], device=self.device, dtype=self.dtype)
        self._set_edge_slots(adjacency)
        self._columns = columns
        self.degrees = torch.as_tensor([len(src)], device=self.device, dtype=self.dtype)
        self._degree = float(len(src))
        self.is_connected = self.num_nodes == 1 or nx.is_connected(graph)

    def anywhere(self, flag: bool) -> bool:
        return bool(flag)

    def total(self, count: int) -> int:
        return int(count)

    def mix(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
            ) -> torch.Tensor:
        """This robot's row of ``W x`` from the rows its neighbours sent."""
        return self._combine(x, channel, row_bytes, out, self._mixing, self._edge_weight, relative=True)

    def neighbor_sum(self, x: torch.Tensor, channel: str = "x", row_bytes=None, out: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """This robot's row of ``A x``."""
        return self._combine(x, channel, row_bytes, out, self._adjacency, torch.ones_like(self._edge_weight),
                             relative=False)

    def edge_exchange(self, messages: torch.Tensor, channel: str, row_bytes=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        links, n = self._links, messages.shape[1]
        packed = messages.new_zeros((1, self._max_degree, n))
        packed[links["dst_local"], links["slot_back"]] = messages
        halo, use = self._exchange(packed.reshape(1, -1), channel, n * messages.element_size()
                                   if row_bytes is None else row_bytes)
        received = halo.reshape(-1, self._max_degree, n)[links["source"], links["slot_from"]]
        finite = torch.isfinite(received).all(dim=1)
        if not bool(finite.all()):
            self.tallies.dropped += float((use & ~finite).sum())
            received = torch.where(finite.unsqueeze(1), received, torch.zeros_like(received))
        return received, use & finite

    def _send(self, rows: torch.Tensor, row_bytes) -> torch.Tensor:
        raise NotImplementedError("TeamNetwork exchanges through mix, neighbor_sum and edge_exchange")

    # ------------------------------------------------------------------ one exchange
    def _combine(self, x, channel, row_bytes, out, operator, weight, relative: bool) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError(f"robot {self.robot} holds one row, got {x.shape[0]}")
        halo, use = self._exchange(x.reshape(1, -1), channel, row_bytes)
        finite = torch.isfinite(halo).all(dim=1)[self._links["source"]]
        if not bool(finite.all()):
            self.tallies.dropped += float((use & ~finite).sum())
            use = use & finite
        if bool(use.all()) and self.aggregation is None:
            result = (operator @ halo).reshape(x.shape)
        else:
            flat = x.reshape(1, -1)
            rows = torch.where(use.unsqueeze(1), halo[self._links["source"]], flat[self._links["dst_local"]])
            result = combine(self.aggregation, flat, self._links["dst_local"], weight, rows, relative,
                             clipped=self.tallies.clipped).reshape(x.shape)
        return result if out is None else out.copy_(result)

    def _exchange(self, row: torch.Tensor, channel: str, row_bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """Send this robot's row on ``channel``; the rows (own and neighbours', in global order) to combine and
        which neighbours' rows are there to use (in ``in_edges()`` order)."""
        self._check_conflict()
        k = self.channel_rounds[channel] = self.channel_rounds.get(channel, 0) + 1
        self.transport.publish(self._key(channel), tm.encode(self.key, self.run, tm.ROW, self.robot, self.incarnation,
                                                             k, channel, row[0]))
        self.counts["sent"] += 1
        start = self.clock()
        deadline = start + self.deadline_s
        with self._cond:
            while True:
                waiting = [j for j in self.neighbours if self._present(j) and not self._has(j, channel, k)]
                left = deadline - self.clock()
                if not waiting or left <= 0:
                    break
                self._cond.wait(timeout=left)
            received = [self._pick(j, channel, k) for j in self.neighbours]
        self.wait_s += self.clock() - start
        halo = row.new_empty((len(self._columns), row.shape[1]))
        halo[self._own_column] = row[0]
        use = torch.zeros(len(self.neighbours), dtype=torch.bool)
        for e, (j, message) in enumerate(zip(self.neighbours, received)):
            column = self._columns.index(j)
            if message is not None and message.row is not None and message.row.numel() == row.shape[1] and \
                    k - message.round <= self.max_staleness:
                halo[column] = message.row.to(device=row.device, dtype=row.dtype)
                use[e] = True
                self.counts["used_fresh" if message.round >= k else "used_held"] += 1
            else:
                halo[column] = row[0]
                self.counts["missing"] += 1
        if row_bytes is None:
            row_bytes = row.shape[1] * row.element_size()
        self.bytes_sent += self._degree * float(torch.as_tensor(row_bytes, dtype=torch.float64).reshape(-1)[0])
        self.exchanges += 1
        return halo, use.to(self.device)

    def _has(self, j: int, channel: str, k: int) -> bool:
        return any(r >= k for r in self._inbox.get((j, channel), ()))

    def _pick(self, j: int, channel: str, k: int) -> tm.Message | None:
        """Neighbour j's row for round k on ``channel``: the one it sent in round k; else the newest of the
        rounds before (held); else, when it is ahead by more than the kept rounds, its newest."""
        kept = self._inbox.get((j, channel))
        if not kept:
            return None
        if k in kept:
            return kept[k]
        before = [r for r in kept if r < k]
        return kept[max(before)] if before else kept[max(kept)]

    def _present(self, j: int) -> bool:
        seen = self._seen.get(j)
        return seen is not None and j not in self._done and self.clock() - seen <= self.silent_after_s

    # ------------------------------------------------------------------ receiving
    @property
    def _key_root(self) -> str:
        return f"{self.prefix}/{self.pair}"

    def _key(self, channel: str) -> str:
        return f"{self._key_root}/{self.robot}/{channel}"

    def _receive(self, data: bytes) -> None:
        if self._closed:
            return
        message = tm.decode(self.key, self.run, data)
        with self._cond:
            if isinstance(message, str):
                self.counts[f"dropped_{message}"] += 1
                return
            sender = message.sender
            if sender == self.robot:
                if message.kind == tm.HELLO and message.channel != f"hello:{self.nonce}":
                    self.conflict = message.channel.partition(":")[2]
                return
            if sender not in self.neighbours:
                self.counts["dropped_not_a_neighbour"] += 1
                return
            self._authenticated_from.add(sender)
            self._seen[sender] = self.clock()
            if message.kind == tm.DONE:
                self._done[sender] = message.incarnation
            elif message.kind == tm.HELLO:
                if message.incarnation > self._done.get(sender, message.incarnation):
                    del self._done[sender]  # restarted: it takes part again
            else:
                kept = self._inbox.setdefault((sender, message.channel), {})
                incarnation = next(iter(kept.values())).incarnation if kept else message.incarnation
                if message.incarnation > incarnation:  # it restarted: what it sent before is older
                    kept.clear()
                elif message.incarnation < incarnation or (len(kept) >= KEPT_ROUNDS and message.round < min(kept)):
                    self.counts["dropped_old"] += 1
                    return
                if message.round in kept:
                    self.counts["dropped_duplicate"] += 1
                    return
                kept[message.round] = message
                if len(kept) > KEPT_ROUNDS:
                    del kept[min(kept)]
            self._cond.notify_all()

    def _say_hello(self) -> None:
        while not self._stop.is_set():
            self._publish_note(tm.HELLO, f"hello:{self.nonce}")
            self._stop.wait(self.hello_s)

    def _publish_note(self, kind: int, channel: str) -> None:
        try:
            round_index = max(self.channel_rounds.values(), default=0)
            self.transport.publish(self._key("presence"), tm.encode(self.key, self.run, kind, self.robot,
                                                                     self.incarnation, round_index, channel))
        except Exception:  # a closed transport: nothing to say any more
            pass

    def _check_conflict(self) -> None:
        if self.conflict is not None:
            raise TeamConflictError(f"robot {self.robot}: another process runs as robot {self.robot} in this team "
                                    f"(its nonce {self.conflict}); give every robot its own --robot index")

    # ------------------------------------------------------------------ the team as a whole
    def wait_for_neighbours(self, timeout_s: float) -> list[int]:
        """Wait until every neighbour is present (at most ``timeout_s``); the ones that are not. Raises
        TeamConflictError for a second process with this index and tm.TeamKeyError when every message that came in
        failed authentication (this robot's key is not the team's)."""
        deadline = self.clock() + timeout_s
        with self._cond:
            while True:
                self._check_conflict()
                missing = [j for j in self.neighbours if not self._present(j)]
                left = deadline - self.clock()
                if not missing or left <= 0:
                    break
                self._cond.wait(timeout=min(left, self.hello_s))
        # a second process with this index says so in its presence notes: listen for a few of them
        time.sleep(max(0.0, self._started + 2.5 * self.hello_s - self.clock()))
        self._check_conflict()
        if missing and not self._authenticated_from and self.counts["dropped_unauthenticated"]:
            raise tm.TeamKeyError(f"robot {self.robot}: all {self.counts['dropped_unauthenticated']} messages it "
                                  f"received failed authentication: its team key is not the team's")
        return missing

    def close(self) -> None:
        """Tell the neighbours this robot finished the pair, and stop listening."""
        if self._closed:
            return
        self._stop.set()
        for _ in range(3):
            self._publish_note(tm.DONE, "done")
        self._closed = True

    def newest_rows(self, channel: str) -> list[tm.Message]:
        """The newest message held from each neighbour on ``channel`` (those that sent one)."""
        with self._cond:
            kept = [self._inbox.get((j, channel)) for j in self.neighbours]
            return [slot[max(slot)] for slot in kept if slot]

    def transport_bytes(self) -> int:
        """Bytes this robot's transport has published so far (every pair's; messages with headers and tags)."""
        return int(getattr(self.transport, "bytes_published", 0))

    def team_facts(self) -> dict:
        """What this robot sent, used and dropped (for its manifest)."""
        facts = {key: int(value) for key, value in sorted(self.counts.items())}
        return {**facts, "wait_seconds": round(self.wait_s, 3), "incarnation": self.incarnation}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "channel_rounds": dict(self.channel_rounds), "counts": dict(self.counts),
                "wait_s": self.wait_s}

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self.channel_rounds = dict(saved.get("channel_rounds", {}))
        self.counts = Counter(saved.get("counts", {}))
        self.wait_s = float(saved.get("wait_s", 0.0))
