"""``run.py`` as one rank of a ``torchrun`` job: this process's share of every pair.

Every rank reads the same config and builds the same setup from the seed (graph, base model, splits:
checked identical by checksum), then keeps only its block of robots (``robot_blocks``): their data,
their rows of the node stack and their optimizer state. Pairs run one after the other on all ranks
at once over a ``TorchDistributedNetwork``; metrics are computed per block and gathered on rank 0
(``RankMetrics``), divergence is agreed by all ranks before any stops. Rank 0 alone writes the output
folder, prints the progress and the table. Baselines: ``individual`` runs sharded like a pair (each
rank trains its own robots alone); ``centralized`` (one model on the pooled data) runs on rank 0
after every pair, while the other ranks are done.

The online density problem gathers every robot's position each round (one small all_gather) so that
every rank builds the same dynamic graph. Checkpoints hold every rank's block (gathered on rank 0), so a
run resumes on any number of processes. Scaling sweeps run each trial sharded the same way.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector

from foundation.schema import ConfigError
from optimizers.comm.dist_launch import RankEnv, init_distributed, rank_env
from optimizers.comm.distributed import (
    PeerLostError,
    RankMetrics,
    TorchDistributedNetwork,
    check_identical,
    collective,
    ranks_text,
    robot_blocks,
    silent_ranks,
)
from problems.base import RobotBlock


def torchrun_env() -> RankEnv | None:
    """This process's ranks when it is one of several torchrun processes (None: one process)."""
    try:
        env = rank_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return env if env is not None and env.world_size > 1 else None


def run_folder_note(output_metadir: Path, run_id: str) -> Path:
    """Where rank 0 notes the output folder of a torchrun job, so that restarted workers find it."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:100] or "job"
    return Path(output_metadir) / ".torchrun" / f"{safe}.json"


def restarted_run(args, env, output_metadir: Path) -> Path | None:
    """The folder of the run a restarted worker (torchrun --max-restarts) continues: ``--output-dir``,
    or the one rank 0 noted for this job; None when this is not a restart or nothing was written."""
    if env is None or env.restart == 0 or args.resume is not None:
        return None
    folder: Path | None
    if args.output_dir:
        folder = Path(args.output_dir).resolve()
    else:
        note = run_folder_note(output_metadir, env.run_id)
        folder = Path(json.loads(note.read_text())["output_dir"]) if note.is_file() else None
    return folder if folder is not None and (folder / "manifest.json").is_file() else None


def wait_for_launcher(limit_s: float = 120.0) -> None:
    """Wait (quietly) until torchrun stops this process, at most ``limit_s`` seconds: a rank that has
    nothing to say must not end before the rank that says it."""
    import time

    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:  # the launcher's SIGTERM
        pass


@dataclass
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    blocks: list[slice] | None = None
    env: RankEnv | None = None

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def agree_on_error(self, message: str | None) -> str | None:
        """The error that stops every rank, or None when no rank had one. Rank 0 reports it; another
        rank reports only an error of its own that rank 0 did not have."""
        messages: list[str | None] = [None] * self.world_size
        with collective("agreeing on an error"):
            dist.all_gather_object(messages, message)
        first = next((m for m in messages if m is not None), None)
        if first is not None and message is not None and (self.writer or message != messages[0]):
            prefix = "" if self.writer else f"rank {self.rank}: "
            print(f"error: {prefix}{message}", file=sys.stderr)
        return first

    def host(self, setup) -> None:
        """Give the setup this rank's block of robots, after checking every rank built the same one."""
        n = setup.graph.number_of_nodes()
        try:
            self.blocks = robot_blocks(n, self.world_size)
        except ValueError as exc:
            raise ConfigError(f"torchrun --nproc-per-node: {exc}") from None
        block = self.blocks[self.rank]
        setup.block = RobotBlock(block.start, block.stop, n)
        check_identical(parameters_to_vector(setup.base_model.parameters()), "the base model")
        check_identical(torch.as_tensor(nx.to_numpy_array(setup.graph, nodelist=range(n))), "the graph")

    def network(self, graph: nx.Graph, dtype: torch.dtype, pair: str | None = None) -> TorchDistributedNetwork:
        return TorchDistributedNetwork(graph, device=self.device, dtype=dtype)

    def gather_rows(self, rows: torch.Tensor, network: TorchDistributedNetwork) -> torch.Tensor | None:
        """Every rank's rows of a per-robot tensor on rank 0 (None on the others)."""
        from optimizers.comm.distributed import gather_rows
        return gather_rows(rows, network)

    def gather_parts(self, part) -> list | None:
        """Every rank's ``part`` (any picklable state) on rank 0, in rank order; None on the others."""
        parts = [None] * self.world_size if self.writer else None
        with collective("gathering a checkpoint"):
            dist.gather_object(part, parts, dst=0)
        return parts

    def share(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        with collective("sharing a checkpoint"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def rank_metrics(self, network: TorchDistributedNetwork) -> RankMetrics:
        """What combines a problem's per-block metrics on rank 0 over ``network``'s processes."""
        return RankMetrics(network)

    def lost_peer(self, interrupts) -> PeerLostError | None:
        """After an interruption: the lost peer, when torchrun stopped this rank (SIGTERM) because
        another rank died or hung (torchrun stops the others when one fails). None: a real interruption."""
        if interrupts.last_signal != signal.SIGTERM:
            return None
        silent = silent_ranks()
        if not silent:
            return None
        return PeerLostError(f"rank {self.rank} lost {ranks_text(silent)}: it stopped answering, and the "
                             f"launcher ended the job")

    def describe(self) -> dict:
        assert self.blocks is not None  # host() set them
        return {"backend": self.backend, "world_size": self.world_size,
                "robots_per_rank": [[b.start, b.stop] for b in self.blocks]}


def join(exp: dict, device: torch.device) -> World:
    """Start this rank's process group (backend and timeout from the config)."""
    asynchrony = exp.get("asynchrony") or {}
    if asynchrony.get("activation", 1.0) < 1.0 or asynchrony.get("max_delay", 0):
        raise ConfigError("experiment.asynchrony: runs in one process only, not under torchrun")
    try:
        env, device = init_distributed(exp["backend"], exp["dist_timeout_s"], device)
    except ValueError as exc:
        raise ConfigError(f"experiment.backend: {exc}") from None
    return World(env.rank, env.world_size, device, dist.get_backend(), env=env)
