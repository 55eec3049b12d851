"""Multi-robot reinforcement learning: robots that learn, each by PPO on the episodes it plays itself, to catch an
evader together (the predator-prey scene of :mod:`problems.tag_env`).

Each robot's model is an actor and a critic (:func:`actor_critic`): one row of the node stack, trained by whatever
optimizer the pair names, which sees ``theta``, ``local_grads`` and the network as for any other problem. The data
come from acting: a batch is ``episodes_per_batch`` episodes of ``episode_steps`` world steps that the whole team
plays together, every robot with its current policy (one node-stack forward per step for all robots and episodes),
each robot keeping its own observations, actions, log-probabilities and advantages. A robot's local loss is one PPO
epoch on its own batch (:mod:`problems.ppo`); a batch serves ``ppo.epochs`` gradient evaluations, then the next
round starts with a fresh one: DiNNO's ``primal_iterations`` are the PPO epochs of one batch, a method with one
gradient per round (DSGD, DSGT) takes ``epochs`` rounds per batch, as in the original code.

``pooled`` (the centralized baseline): one policy acts for every robot and trains on all their samples.

Randomness is counter-based: the episodes' starts of batch b come from (seed, b), robot r's action noise from
(seed, b, r); every process of a torchrun job simulates the same shared episodes with the team's policies (the
robots' parameters, gathered once per batch: what the simulator needs, not a radio message) and keeps its own
robots' samples, so the numbers do not depend on how the team is split.

Metrics: ``episode_reward`` (the team's average episode return, summed over the robots as the original reports it,
over the episodes played since the previous evaluation), ``policy_reward`` (per robot: the team's return when every
robot plays that robot's policy, mean actions, on ``eval_episodes`` fixed episodes), ``catches_per_episode``,
``timesteps`` (the original's count: every agent's turn, the evader's too, so 4 per world step with 3 robots) and the
usual consensus error, training loss and samples processed. Every batch's reward and catches are also kept in the
history (``batch_timesteps``, ``batch_episode_reward``, ``batch_catches``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from foundation.counters import code, hash_keys
from problems.base import StackProblem, consensus_distances
from problems.metrics import CONSENSUS_ERROR, FORWARD_PASS_COUNT
from problems.node_stack import Branches
from problems.ppo import PPOSettings, log_prob, normalized_advantages, ppo_loss, rewards_to_go
from problems.tag_env import ACTION_SIZE, TagEpisodes, TagScene

BATCH_LOG = ("batch_timesteps", "batch_episode_reward", "batch_catches")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with a ReLU between each two (none after the last)."""
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def actor_critic(observation_size: int, action_size: int, hidden: list[int]) -> Branches:
    """The paper's networks: actor and critic each an MLP [observation, *hidden, out] with ReLU; the model's output is
    the actor's mean action followed by the critic's value."""
    return Branches(actor=mlp([observation_size, *hidden, action_size]), critic=mlp([observation_size, *hidden, 1]))


def scene_from_config(experiment: dict) -> TagScene:
    """The scene of a validated ``rl_tag`` experiment block (its robots are the graph's nodes)."""
    return TagScene(num_robots=experiment["graph"]["num_nodes"], integration=experiment["scene"]["integration"],
                    obstacles=tuple(tuple(p) for p in experiment["scene"]["obstacles"]))


def base_model_from_config(experiment: dict) -> Branches:
    """The untrained actor-critic every robot of every pair starts from: built after seeding with the
    experiment's seed, so a run's output folder (its config.yaml) rebuilds it."""
    torch.manual_seed(experiment["seed"])
    scene = scene_from_config(experiment)
    return actor_critic(scene.observation_size, ACTION_SIZE, experiment["model"]["hidden"])


def seed_of(seed: int, *keys) -> int:
    """A 64-bit generator seed from (seed, keys...), the same in every process."""
    return int(hash_keys(seed, *keys)) << 32 | int(hash_keys(seed + 1, *keys))


class TagProblem(StackProblem):
    """Robots (or one pooled policy) learning the tag scene by PPO; see the module docstring."""

    base_metrics = (FORWARD_PASS_COUNT, CONSENSUS_ERROR, "train_loss_moving_average", "episode_reward",
                    "policy_reward", "catches_per_episode", "timesteps")

    def __init__(self, name: str, model: nn.Module, scene: TagScene, *, episodes_per_batch: int, episode_steps: int,
                 ppo: PPOSettings, eval_episodes: int, eval_seed: int, pooled: bool = False, seed: int = 0, **kwargs):
        robots = kwargs.get("robots")
        num_nodes = 1 if pooled else (scene.num_robots if robots is None else robots.stop - robots.start)
        super().__init__(name, model, num_nodes, **kwargs)
        if not pooled and (robots.total if robots is not None else num_nodes) != scene.num_robots:
            raise ValueError(f"{scene.num_robots} robots in the scene, {num_nodes} in the team")
        self.scene = scene
        self.pooled = pooled
        self.episodes_per_batch = episodes_per_batch
        self.episode_steps = episode_steps
        self.ppo = ppo
        self.eval_episodes = eval_episodes
        self.eval_seed = eval_seed
        self.seed = seed
        self.loss_fn = ppo_loss(ppo, ACTION_SIZE)
        self.action_std = math.sqrt(ppo.action_variance)
        first = 0 if robots is None or pooled else robots.start
        self.robot_ids = list(range(first, first + (scene.num_robots if pooled else num_nodes)))
        self.batch_obs: torch.Tensor | None = None  # (nodes, samples, observation)
        self.batch_targets: torch.Tensor | None = None  # (nodes, samples, action + 3)
        self.batch_uses = 0
        self.batches = 0
        self.timesteps = 0
        self.recent: list[tuple[float, float]] = []  # (reward, catches) per episode-mean of batches since the last evaluation
        self.samples_seen = torch.zeros(num_nodes, dtype=torch.long)

    @property
    def timesteps_per_batch(self) -> int:
        return self.episodes_per_batch * self.episode_steps * self.scene.num_agents

    # ------------------------------------------------------------------------------------------- acting
    def team_parameters(self, theta: torch.Tensor) -> torch.Tensor:
        """Every policy that acts in the shared episodes: the whole team's rows (gathered across processes)."""
        if self.pooled or self.ranks is None:
            return theta.detach()
        return self.ranks.all_rows(theta.detach())

    def act(self, params: torch.Tensor, obs: torch.Tensor, policy_per_episode: bool = False) -> torch.Tensor:
        """Model outputs (episodes, R, action + 1) for observations (episodes, R, O): robot r plays row r of
        ``params`` (the team), row 0 plays every robot (pooled), or with ``policy_per_episode`` row i plays every
        robot of the i-th block of episodes."""
        episodes, robots, size = obs.shape
        if policy_per_episode or self.pooled:
            nodes = params.shape[0]
            out = self.stack.forward(params, obs.reshape(nodes, (episodes // nodes) * robots, size))
            return out.reshape(episodes, robots, -1)
        return self.stack.forward(params, obs.transpose(0, 1)).transpose(0, 1)

    @torch.no_grad()
    def collect(self, theta: torch.Tensor) -> None:
        """A new batch: the team plays ``episodes_per_batch`` episodes with its current policies."""
        scene, steps, batch = self.scene, self.episode_steps, self.batches
        params = self.team_parameters(theta)
        start = torch.Generator().manual_seed(seed_of(self.seed, code("tag episodes"), batch))
        episodes = TagEpisodes.start(scene, self.episodes_per_batch, start, self.dtype, self.device)
        noise = torch.stack([torch.randn(steps, self.episodes_per_batch, ACTION_SIZE, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(
                                             seed_of(self.seed, code("tag actions"), batch, robot)))
                             for robot in range(scene.num_robots)], dim=2).to(self.device, self.dtype)
        observations, actions, log_probs, values, rewards, catches = [], [], [], [], [], []
        for t in range(steps):
            obs = episodes.observe()
            out = self.act(params, obs)
            mean, value = out[..., :ACTION_SIZE], out[..., ACTION_SIZE]
            action = mean + self.action_std * noise[t]
            observations.append(obs)
            actions.append(action)
            log_probs.append(log_prob(action, mean, self.ppo.action_variance))
            values.append(value)
            reward, caught = episodes.step(action)
            rewards.append(reward)
            catches.append(caught)
        to_go = rewards_to_go(torch.stack(rewards), self.ppo.gamma)  # (T, E): the team's reward, every robot's
        stacked = {"obs": torch.stack(observations), "action": torch.stack(actions), "log_prob": torch.stack(log_probs),
                   "value": torch.stack(values)}  # (T, E, R, ...)
        to_go = to_go.unsqueeze(-1).expand_as(stacked["value"])
        advantage = to_go - stacked["value"]
        self.set_batch(stacked, advantage, to_go)
        team_return = float(torch.stack(rewards).sum(0).mean()) * scene.num_robots
        caught_per_episode = float(torch.stack(catches).sum(0).to(torch.float64).mean())
        self.batches += 1
        self.timesteps += self.timesteps_per_batch
        self.recent.append((team_return, caught_per_episode))
        for key, number in zip(BATCH_LOG, (float(self.timesteps), team_return, caught_per_episode)):
            self.history.setdefault(key, []).append(number)

    def set_batch(self, stacked: dict[str, torch.Tensor], advantage: torch.Tensor, to_go: torch.Tensor) -> None:
        """Each node's samples (its robot's, or every robot's when pooled) as (nodes, samples, ...) in (robot,
        episode, step) order, its advantages normalized over its own batch."""
        rows = None if self.pooled else slice(self.robot_ids[0], self.robot_ids[-1] + 1)

        def per_node(x: torch.Tensor) -> torch.Tensor:  # (T, E, R, ...) -> (nodes, R' * E * T, ...)
            x = x.movedim(2, 0).movedim(2, 1)  # (R, E, T, ...)
            x = x if rows is None else x[rows]
            return x.reshape(1 if self.pooled else x.shape[0], -1, *x.shape[3:])

        adv = normalized_advantages(per_node(advantage), self.ppo.normalize_advantages)
        self.batch_obs = per_node(stacked["obs"]).contiguous()
        self.batch_targets = torch.cat([per_node(stacked["action"]), per_node(stacked["log_prob"]).unsqueeze(-1),
                                        adv.unsqueeze(-1), per_node(to_go).unsqueeze(-1)], dim=-1).contiguous()
        self.batch_uses = 0

    # ------------------------------------------------------------------------------------------ training
    def begin_round(self, round_index: int) -> None:
        """A fresh batch when the last one has served its ``ppo.epochs`` gradient evaluations."""
        if self.batch_obs is None or self.batch_uses >= self.ppo.epochs:
            self.collect(self.theta)

    def local_grads(self, theta: torch.Tensor | None = None, out: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's PPO loss (one epoch on its batch) and its gradient at ``theta``."""
        theta = self.theta if theta is None else theta
        if self.batch_obs is None:
            self.collect(theta)
        assert self.batch_obs is not None and self.batch_targets is not None
        losses, grads = self.stack.loss_and_grad(theta, self.batch_obs, self.batch_targets, self.loss_fn, out=out)
        self.batch_uses += 1
        self.samples_seen += self.batch_obs.shape[1]
        self.last_losses = losses
        self._update_train_loss(losses)
        return losses, grads

    # ---------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def policy_rewards(self, theta: torch.Tensor) -> torch.Tensor:
        """Per node: the team's mean episode return (summed over the robots) when every robot plays that node's
        policy with its mean action, on ``eval_episodes`` fixed episodes."""
        nodes = theta.shape[0]
        start = torch.Generator().manual_seed(seed_of(self.eval_seed, code("tag evaluation")))
        single = TagEpisodes.start(self.scene, self.eval_episodes, start, self.dtype, self.device)
        episodes = TagEpisodes(self.scene, single.position.repeat(nodes, 1, 1))
        total = torch.zeros(nodes * self.eval_episodes, dtype=torch.float64, device=self.device)
        for _ in range(self.episode_steps):
            out = self.act(theta.detach(), episodes.observe(), policy_per_episode=True)
            reward, _ = episodes.step(out[..., :ACTION_SIZE])
            total += reward.to(torch.float64)
        return (total.reshape(nodes, self.eval_episodes).mean(1) * self.scene.num_robots).cpu()

    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.metrics)
        values: dict[str, torch.Tensor] = {}
        if "policy_reward" in wanted:
            values["policy_reward"] = self.policy_rewards(theta)
        if self.recent:
            rewards, catches = zip(*self.recent)
            values["episode_reward"] = torch.tensor([sum(rewards) / len(rewards)], dtype=torch.float64)
            values["catches_per_episode"] = torch.tensor([sum(catches) / len(catches)], dtype=torch.float64)
        else:  # no episode played yet (round 0)
            values["episode_reward"] = values["catches_per_episode"] = torch.tensor([math.nan], dtype=torch.float64)
        self.recent = []
        values["timesteps"] = torch.tensor([float(self.timesteps)], dtype=torch.float64)
        if CONSENSUS_ERROR in wanted and not self.pooled:
            if self.ranks is not None:
                values[CONSENSUS_ERROR] = self.ranks.consensus_error(theta.detach())
            else:
                values[CONSENSUS_ERROR], values["consensus_pairwise"] = consensus_distances(theta.detach())
        values[FORWARD_PASS_COUNT] = self.samples_seen.clone()
        values["train_loss_moving_average"] = self.train_loss_ma.clone()
        keep = wanted | {"consensus_pairwise", FORWARD_PASS_COUNT}
        return {k: v.detach().cpu() for k, v in values.items() if k in keep}

    # ---------------------------------------------------------------------------------------- checkpoints
    STATE = ("batch_obs", "batch_targets", "batch_uses", "batches", "timesteps", "recent", "samples_seen",
             "train_loss_ma", "last_losses", "history")

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.capture(self.STATE)}

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self.restore({k: saved[k] for k in self.STATE if k in saved})
