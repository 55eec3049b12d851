"""``run.py`` as one robot of a team of processes (``experiments/robot.py``), and the team's folder from theirs.

Every robot reads the same config and builds the same setup from the seed (graph, base model, splits), then keeps
only its own row: its data stream, its row of the node stack and its optimizer state (as a torchrun rank that
hosts one robot). Its pairs run over a :class:`optimizers.comm.team_network.TeamNetwork` on Zenoh: no collective,
no lockstep. A robot writes a run folder of its own (``<team folder>/robots/<i>/``: its metrics, checkpoints and
final parameters, and in its manifest what it sent, used and dropped); ``experiments/team.py`` gathers the robots'
folders into one output folder that reads as any run's (``experiments.team_launch.gather_team``).

What a robot cannot know alone: ``consensus_error`` is its distance to the mean of its neighbourhood (its own row
and the newest rows it holds from its neighbours, unit-normalized), not to the mean of the team; the team's
final consensus error, from every robot's final parameters, is ``final_team_consensus_error`` in the team's
manifest. Problems that need every
robot's rows each round (online density's dynamic graph, the team mean of ``mean_model_top1_accuracy``) are
refused with one line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foundation.schema import ConfigError
from optimizers.comm import team_messages as tm
from optimizers.comm.distributed import PeerLostError, robot_blocks
from optimizers.comm.team_network import TeamConflictError, TeamNetwork
from optimizers.comm.team_transport import ZenohTransport, endpoint
from problems.base import RobotBlock
from problems.metrics import MEAN_MODEL_TOP1_ACCURACY


class TeamStop(PeerLostError):
    """The robot cannot go on with its team (wrong key, a second process with its index)."""


def robot_host(team: dict, robot: int) -> str:
    hosts = team["hosts"]
    return hosts[0] if len(hosts) == 1 else hosts[robot]


def robot_endpoint(team: dict, robot: int) -> str:
    return endpoint(robot_host(team, robot), team["base_port"] + robot)


def team_unsupported(exp: dict, cfg: dict) -> str | None:
    """Why a config cannot run as a team of processes (None: it can)."""
    from optimizers.comm.links import make_link_model

    if make_link_model(exp["links"]) is not None:
        return "experiment.links: a team on a real network loses what the network loses; no simulated links"
    asynchrony = exp.get("asynchrony") or {}
    if asynchrony.get("activation", 1.0) < 1.0 or asynchrony.get("max_delay", 0):
        return "experiment.asynchrony: a team of processes is asynchronous by itself; no simulated asynchrony"
    if exp.get("faults"):
        return "experiment.faults: simulated faulty robots run in one process or under torchrun, not in a team"
    if exp.get("graph_schedule", {}).get("graphs") or exp.get("graph_schedule", {}).get("random_edges_per_round"):
        return "experiment.graph_schedule: a team keeps its graph (robots cannot agree on a new one each round)"
    robots = (exp.get("graph") or {}).get("num_nodes")
    if robots is not None and exp["team"]["base_port"] + robots - 1 > 65535:
        return f"experiment.team.base_port: {exp['team']['base_port']} + {robots - 1} robots passes port 65535"
    if exp["problem"] == "online_density":
        return "experiment.problem online_density: its graph follows every robot's position each round; not in a team"
    for key, pc in cfg["problem_configs"].items():
        if MEAN_MODEL_TOP1_ACCURACY in pc.get("metrics", []):
            return (f"problem_configs.{key}.metrics: mean_model_top1_accuracy needs every robot's parameters at "
                    f"each evaluation; not in a team")
    return None


@dataclass
class TeamWorld:
    """This robot's place in the team (the interface of ``experiments.distributed_run.World``)."""

    rank: int
    world_size: int
    device: torch.device
    team: dict
    key: bytes
    run: bytes
    incarnation: int
    transport: object | None
    backend: str = "zenoh"
    blocks: list[slice] | None = None
    writer: bool = True  # every robot writes its own folder
    networks: list[TeamNetwork] = field(default_factory=list)

    def agree_on_error(self, message: str | None) -> str | None:
        if message is not None:
            print(f"error: robot {self.rank}: {message}", file=sys.stderr)
        return message

    def host(self, setup) -> None:
        """Take this robot's row of the setup and open its Zenoh session, linked to its neighbours."""
        n = setup.graph.number_of_nodes()
        if not 0 <= self.rank < n:
            raise ConfigError(f"--robot {self.rank}: the team has robots 0 to {n - 1}")
        self.blocks = robot_blocks(n, n)
        setup.block = RobotBlock(self.rank, self.rank + 1, n)
        if self.transport is None:
            self.transport = open_transport(self.team, self.rank, sorted(setup.graph.neighbors(self.rank)))

    def network(self, graph, dtype, pair: str = "pair") -> TeamNetwork:
        team = self.team
        network = TeamNetwork(graph, self.rank, self.transport, self.key, self.run, pair, prefix=team["key_prefix"],
                              deadline_s=team["deadline_ms"] / 1000.0, max_staleness=team["max_staleness"],
                              incarnation=self.incarnation, silent_after_s=team["silent_after_s"],
                              device=self.device, dtype=dtype)
        self.networks.append(network)
        try:
            missing = network.wait_for_neighbours(team["start_timeout_s"])
        except (tm.TeamKeyError, TeamConflictError) as exc:
            network.close()
            raise TeamStop(str(exc)) from None
        if missing:
            print(f"note: robot {self.rank}, pair {pair}: neighbour(s) {', '.join(map(str, missing))} not heard "
                  f"within {team['start_timeout_s']:g} s; it starts without them", file=sys.stderr)
        return network

    def gather_rows(self, rows: torch.Tensor, network) -> torch.Tensor:
        """This robot's rows (its folder holds its own; ``team.py`` gathers the team's)."""
        return rows

    def gather_parts(self, part) -> list:
        return [part]

    def share(self, obj):
        return obj

    def rank_metrics(self, network: TeamNetwork) -> "RobotMetrics":
        return RobotMetrics(network)

    def lost_peer(self, interrupts):
        return None

    def describe(self) -> dict:
        return {"backend": "zenoh", "robot": self.rank, "robots": self.world_size, "incarnation": self.incarnation,
                "endpoint": robot_endpoint(self.team, self.rank), "router": self.team.get("router")}

    def close(self) -> None:
        for network in self.networks:
            network.close()
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()


class RobotMetrics:
    """A robot's metrics as its own (one row each); consensus error over its neighbourhood."""

    variable_rows = ("validation_as_vector",)

    def __init__(self, network: TeamNetwork):
        self.network = network

    def consensus_error(self, theta: torch.Tensor) -> torch.Tensor:
        rows = [theta[0]] + [m.row.to(theta.dtype) for m in self.network.newest_rows("theta")
                             if m.row is not None and m.row.numel() == theta.shape[1]]
        if len(rows) == 1:  # nothing heard from a neighbour (yet, or a baseline that sends nothing)
            return torch.full((1,), float("nan"), dtype=theta.dtype)
        unit = torch.stack(rows)
        unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return (unit[0] - unit.mean(0)).norm().reshape(1)

    def all_rows(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("this problem needs every robot's rows each round: it cannot run as a team of processes")

    def combine(self, values: dict, per_robot) -> dict:
        values = dict(values)
        values["wire_bytes_sent"] = torch.tensor([float(self.network.transport_bytes())], dtype=torch.float64)
        return values


def open_transport(team: dict, robot: int, neighbours: list[int]) -> ZenohTransport:
    """Robot ``robot``'s Zenoh session: listening on its endpoint, linked to its neighbours' (or to the router)."""
    listen = [endpoint(team.get("listen_host") or robot_host(team, robot), team["base_port"] + robot)]
    try:
        return ZenohTransport(listen, [robot_endpoint(team, j) for j in neighbours], router=team.get("router"),
                              block_when_congested=team["congestion"] == "block")
    except Exception as exc:  # a taken port, an address this host does not have
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"experiment.team: robot {robot} cannot open its Zenoh session on {listen[0]}: {first}") from None


def join(cfg: dict, device: torch.device, robot: int, incarnation: int) -> TeamWorld:
    """This robot's place in the team, its key read (raises ConfigError with one line); its session opens once
    the setup says who its neighbours are (:meth:`TeamWorld.host`)."""
    from experiments.config import config_hash

    exp = cfg["experiment"]
    reason = team_unsupported(exp, cfg)
    if reason is not None:
        raise ConfigError(reason)
    n = exp["graph"]["num_nodes"]
    if not 0 <= robot < n:
        raise ConfigError(f"--robot {robot}: the team has robots 0 to {n - 1}")
    try:
        key = tm.read_team_key(exp["team"].get("key_file"))
    except tm.TeamKeyError as exc:
        raise ConfigError(str(exc)) from None
    return TeamWorld(robot, n, device, exp["team"], key, tm.run_id(config_hash(cfg)), incarnation, None)


ROBOTS_FOLDER = "robots"


def robot_folder(team_dir: Path, robot: int) -> Path:
    return Path(team_dir) / ROBOTS_FOLDER / str(robot)
