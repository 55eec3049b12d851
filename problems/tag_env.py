"""Predator-prey tag: the multi-particle scene ``simple_tag`` (MPE) with the DiNNO paper's edits, batched.

Every episode of a batch steps together as tensors shaped (episodes, agents, 2), on the CPU or a GPU. The agents are
the R robots (MPE's adversaries: size 0.075, acceleration 3, top speed 1) and one evader (size 0.05, acceleration 4,
top speed 1.3); eight obstacles of size 0.2 stand at fixed positions. One world step (dt 0.1, damping 0.25, contact
force 100, contact margin 1e-3, every mass 1):

    u_a  = accel_a * (a[1] - a[2], a[3] - a[4])       a robot's action a: 5 numbers, clipped to [0, 1]
    f_a  = sum over every other entity b of  100 * (p_a - p_b) / |p_a - p_b| * k log(1 + exp(-(|p_a - p_b| - s_a - s_b) / k))
    v    <- (1 - damping) v + (u_a + f_a) dt, scaled back to the top speed when faster;  p <- p + v dt

(``integration: position_first`` moves p with the old v before updating v, as the maintained ``mpe2`` does; the
original ran PettingZoo 1.10, whose order is the one above, ``velocity_first``.)

The robots share one reward after each step: -0.1 x the sum over robots of their distance to the evader, +10 for
each robot touching the evader (closer than the sum of their sizes: a catch). Robot i observes its velocity and
position, the offsets to the other agents (the other robots in order, then the evader) and the evader's velocity:
12 numbers for three robots (the obstacles are not observed). The evader runs from the nearest robot by a fixed
rule: u = 4 * (-d / max(|d_x|, |d_y|)) for the offset d to that robot, its x (y) part dropped where it would push
the evader further out past +-1.2. Episodes start with every agent at a uniform position in [-1, 1]^2, at rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The obstacles of the paper's scene (the edited simple_tag's eight fixed positions).
PAPER_OBSTACLES = ((-1.2, -0.6), (0.1, -1.1), (-0.3, 0.4), (0.9, 0.75), (-0.9, 1.2), (-0.1, 1.3), (-1.2, 0.0),
                   (1.3, 0.0))
INTEGRATIONS = ("velocity_first", "position_first")
ACTION_SIZE = 5  # [no-op, +x, -x, +y, -y]: MPE's continuous action layout of PettingZoo 1.10


@dataclass(frozen=True)
class TagScene:
    """The scene's constants (MPE's simple_tag and its world)."""

    num_robots: int = 3
    obstacles: tuple[tuple[float, float], ...] = PAPER_OBSTACLES
    integration: str = "velocity_first"
    robot_size: float = 0.075
    robot_accel: float = 3.0
    robot_max_speed: float = 1.0
    evader_size: float = 0.05
    evader_accel: float = 4.0
    evader_max_speed: float = 1.3
    obstacle_size: float = 0.2
    evader_bound: float = 1.2
    dt: float = 0.1
    damping: float = 0.25
    contact_force: float = 100.0
    contact_margin: float = 1e-3
    distance_weight: float = 0.1
    catch_reward: float = 10.0

    def __post_init__(self):
        if self.integration not in INTEGRATIONS:
            raise ValueError(f"integration must be one of {', '.join(INTEGRATIONS)}, got {self.integration!r}")
        if self.num_robots < 1:
            raise ValueError(f"num_robots must be at least 1, got {self.num_robots}")

    @property
    def num_agents(self) -> int:
        return self.num_robots + 1

    @property
    def observation_size(self) -> int:
        """Own velocity and position, the offsets to the other agents, the evader's velocity."""
        return 4 + 2 * self.num_robots + 2


class TagEpisodes:
    """A batch of episodes of one scene, stepped together.

    ``position`` and ``velocity`` are (episodes, agents, 2): robots 0..R-1, then the evader. ``step(actions)`` takes
    the robots' actions (episodes, R, 5) and returns the team reward and the catches of that step, each (episodes,).
    """

    def __init__(self, scene: TagScene, position: torch.Tensor, velocity: torch.Tensor | None = None):
        if position.dim() != 3 or position.shape[1:] != (scene.num_agents, 2):
            raise ValueError(f"position must be (episodes, {scene.num_agents}, 2), got {tuple(position.shape)}")
        self.scene = scene
        self.position = position.clone()
        self.velocity = torch.zeros_like(position) if velocity is None else velocity.clone()
        dtype, device = position.dtype, position.device
        robots = scene.num_robots
        sizes = [scene.robot_size] * robots + [scene.evader_size]
        self.sizes = torch.tensor(sizes, dtype=dtype, device=device)
        self.accel = torch.tensor([scene.robot_accel] * robots + [scene.evader_accel], dtype=dtype, device=device)
        self.max_speed = torch.tensor([scene.robot_max_speed] * robots + [scene.evader_max_speed], dtype=dtype,
                                      device=device)
        self.obstacles = torch.tensor(scene.obstacles, dtype=dtype, device=device).reshape(-1, 2)
        entity_sizes = torch.cat([self.sizes, torch.full((len(self.obstacles),), scene.obstacle_size, dtype=dtype,
                                                         device=device)])
        self.contact_distance = self.sizes.unsqueeze(1) + entity_sizes.unsqueeze(0)  # (agents, entities)
        agents = scene.num_agents
        self.not_self = torch.ones(agents, agents + len(self.obstacles), dtype=dtype, device=device)
        self.not_self[:, :agents].fill_diagonal_(0.0)

    @classmethod
    def start(cls, scene: TagScene, episodes: int, generator: torch.Generator, dtype=torch.float32,
              device="cpu") -> "TagEpisodes":
        """``episodes`` new episodes: every agent uniform in [-1, 1]^2, at rest (drawn on the CPU, then moved)."""
        position = torch.rand(episodes, scene.num_agents, 2, generator=generator, dtype=torch.float64) * 2.0 - 1.0
        return cls(scene, position.to(device=device, dtype=dtype))

    @property
    def num_episodes(self) -> int:
        return self.position.shape[0]

    # ------------------------------------------------------------------------------------------- observing
    def observe(self) -> torch.Tensor:
        """The robots' observations (episodes, R, 12 for R = 3): [v_i, p_i, p_j - p_i for the other agents, v_evader]."""
        robots = self.scene.num_robots
        p, v = self.position, self.velocity
        offsets = p.unsqueeze(1) - p[:, :robots].unsqueeze(2)  # (E, R, agents, 2): agent j minus robot i
        others = ~torch.eye(robots, self.scene.num_agents, dtype=torch.bool, device=p.device)
        offsets = offsets[:, others].reshape(p.shape[0], robots, 2 * robots)
        evader_velocity = v[:, robots].unsqueeze(1).expand(-1, robots, -1)
        return torch.cat([v[:, :robots], p[:, :robots], offsets, evader_velocity], dim=-1)

    def evader_action(self) -> torch.Tensor:
        """The evader's push (episodes, 2), before its acceleration: away from the nearest robot, scaled so that its
        larger component is 1, the part that would carry it further out past +-``evader_bound`` dropped."""
        robots = self.scene.num_robots
        offsets = self.position[:, :robots] - self.position[:, robots:robots + 1]  # robot minus evader
        nearest = torch.linalg.vector_norm(offsets, dim=-1).argmin(dim=1)  # the first of equal ones
        d = offsets[torch.arange(offsets.shape[0], device=offsets.device), nearest]
        push = -d / d.abs().amax(dim=-1, keepdim=True)
        own = self.position[:, robots]
        bound = self.scene.evader_bound
        push = torch.where(own <= -bound, push.clamp_min(0.0), push)
        return torch.where(own >= bound, push.clamp_max(0.0), push)

    # --------------------------------------------------------------------------------------------- stepping
    def contact_forces(self) -> torch.Tensor:
        """MPE's soft contact force on every agent from every other entity, summed: (episodes, agents, 2)."""
        scene = self.scene
        p = self.position
        entities = torch.cat([p, self.obstacles.unsqueeze(0).expand(p.shape[0], -1, -1)], dim=1)
        delta = p.unsqueeze(2) - entities.unsqueeze(1)  # (E, agents, entities, 2)
        distance = torch.linalg.vector_norm(delta, dim=-1)
        distance = distance + (1.0 - self.not_self)  # 1 on an agent's own entry: no 0 / 0
        k = scene.contact_margin
        penetration = torch.logaddexp(torch.zeros_like(distance), -(distance - self.contact_distance) / k) * k
        scale = scene.contact_force * penetration / distance * self.not_self
        return (delta * scale.unsqueeze(-1)).sum(dim=2)

    def step(self, robot_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One world step with the robots' actions (episodes, R, 5), clipped to [0, 1] here; returns the team reward
        and the catches of the new state, each (episodes,)."""
        scene = self.scene
        a = robot_actions.clamp(0.0, 1.0).to(self.position.dtype)
        robot_push = torch.stack([a[..., 1] - a[..., 2], a[..., 3] - a[..., 4]], dim=-1)
        push = torch.cat([robot_push, self.evader_action().unsqueeze(1)], dim=1)
        force = push * self.accel.view(1, -1, 1) + self.contact_forces()
        if scene.integration == "position_first":
            self.position = self.position + self.velocity * scene.dt
        velocity = self.velocity * (1.0 - scene.damping) + force * scene.dt
        speed = torch.linalg.vector_norm(velocity, dim=-1, keepdim=True)
        limit = self.max_speed.view(1, -1, 1)
        self.velocity = torch.where(speed > limit, velocity / speed * limit, velocity)
        if scene.integration == "velocity_first":
            self.position = self.position + self.velocity * scene.dt
        return self.reward()

    def reward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(team reward, catches) of the current state, each (episodes,)."""
        scene = self.scene
        robots = scene.num_robots
        distance = torch.linalg.vector_norm(self.position[:, :robots] - self.position[:, robots:robots + 1], dim=-1)
        catches = (distance < self.sizes[:robots] + scene.evader_size).sum(dim=1)
        reward = -scene.distance_weight * distance.sum(dim=1) + scene.catch_reward * catches.to(distance.dtype)
        return reward, catches
