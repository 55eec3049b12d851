"""The batched predator-prey scene against the maintained MPE (Farama's ``mpe2``) with the original's edits applied:
both driven with the same actions for 200 steps, states, observations and rewards compared step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from problems.tag_env import PAPER_OBSTACLES, TagEpisodes, TagScene

mpe2 = pytest.importorskip("mpe2", reason="the reference simulator mpe2 is not installed (pip install mpe2==1.1.1)")
from mpe2 import simple_tag_v3  # noqa: E402
from mpe2._mpe_utils.core import World  # noqa: E402
from mpe2.simple_tag.simple_tag import Scenario  # noqa: E402

STEPS = 200
TOLERANCE = 1e-5


def edited_observation(self, agent, world):
    """The original's observation: own velocity and position, the other agents' offsets, the evader's velocity
    (the obstacles left out)."""
    others = [other for other in world.agents if other is not agent]
    return np.concatenate([agent.state.p_vel, agent.state.p_pos]
                          + [other.state.p_pos - agent.state.p_pos for other in others]
                          + [other.state.p_vel for other in others if not other.adversary])


def shaped_adversary_reward(self, agent, world):
    """The original's robot reward: the distance term switched on (``shape = True``), +10 per catch."""
    good = self.good_agents(world)
    adversaries = self.adversaries(world)
    reward = 0.0
    for adversary in adversaries:
        reward -= 0.1 * min(np.sqrt(np.sum(np.square(a.state.p_pos - adversary.state.p_pos))) for a in good)
    for a in good:
        for adversary in adversaries:
            if self.is_collision(a, adversary):
                reward += 10
    return reward


def velocity_first_integration(self, p_force):
    """PettingZoo 1.10's integration, which the original ran: damp, push, cap the speed, then move."""
    for i, entity in enumerate(self.entities):
        if not entity.movable:
            continue
        entity.state.p_vel = entity.state.p_vel * (1 - self.damping)
        if p_force[i] is not None:
            entity.state.p_vel += (p_force[i] / entity.mass) * self.dt
        if entity.max_speed is not None:
            speed = np.sqrt(np.square(entity.state.p_vel[0]) + np.square(entity.state.p_vel[1]))
            if speed > entity.max_speed:
                entity.state.p_vel = entity.state.p_vel / speed * entity.max_speed
        entity.state.p_pos += entity.state.p_vel * self.dt


def evader_rule(world):
    """The original's evader, from the reference's own state: away from the nearest adversary, normalized to a
    largest component of 1, no push further out past +-1.2; as an mpe2 action [no-op, -x, +x, -y, +y]."""
    evader = world.agents[-1]
    offsets = [adversary.state.p_pos - evader.state.p_pos for adversary in world.agents[:-1]]
    nearest = min(range(len(offsets)), key=lambda i: np.sqrt(np.sum(np.square(offsets[i]))))
    force = -offsets[nearest] / max(abs(offsets[nearest]))
    x, y = evader.state.p_pos
    if x <= -1.2:
        force[0] = max(force[0], 0.0)
    elif x >= 1.2:
        force[0] = min(force[0], 0.0)
    if y <= -1.2:
        force[1] = max(force[1], 0.0)
    elif y >= 1.2:
        force[1] = min(force[1], 0.0)
    return np.array([0.0, max(-force[0], 0.0), max(force[0], 0.0), max(-force[1], 0.0), max(force[1], 0.0)])


def reference_env(monkeypatch, start: np.ndarray, integration: str):
    """mpe2's simple_tag with 3 adversaries, 1 evader and 8 obstacles, edited as the original edited it."""
    monkeypatch.setattr(Scenario, "observation", edited_observation)
    monkeypatch.setattr(Scenario, "adversary_reward", shaped_adversary_reward)
    if integration == "velocity_first":
        monkeypatch.setattr(World, "integrate_state", velocity_first_integration)
    # the raw environment, without the wrapper that would round the actions to float32 while it clips them
    env = simple_tag_v3.raw_env(num_good=1, num_adversaries=3, num_obstacles=8, max_cycles=STEPS + 1,
                                continuous_actions=True)
    env.reset(seed=0)
    world = env.world
    for agent, position in zip(world.agents, start):
        agent.state.p_pos = position.astype(np.float64).copy()
        agent.state.p_vel = np.zeros(2)
    for landmark, position in zip(world.landmarks, PAPER_OBSTACLES):
        landmark.state.p_pos = np.array(position, dtype=np.float64)
    return env, world


def chasing_actions(world, noise):
    """Each adversary pushes toward the evader (plus noise, some of it outside [0, 1]): catches and crowding."""
    evader = world.agents[-1].state.p_pos
    actions = []
    for adversary, jitter in zip(world.agents[:-1], noise):
        d = evader - adversary.state.p_pos
        actions.append(np.array([0.0, max(d[0], 0.0), max(-d[0], 0.0), max(d[1], 0.0), max(-d[1], 0.0)]) * 3 + jitter)
    return np.stack(actions)


def reference_state(world) -> tuple[torch.Tensor, torch.Tensor]:
    position = np.stack([agent.state.p_pos for agent in world.agents])
    velocity = np.stack([agent.state.p_vel for agent in world.agents])
    return torch.tensor(position).unsqueeze(0), torch.tensor(velocity).unsqueeze(0)


def drive_both(monkeypatch, integration: str, seed: int, chase: bool, follow: bool, tolerance: float) -> int:
    """Step mpe2 and the batched scene with the same actions for ``STEPS`` steps, comparing states, rewards and
    observations after each; ``follow``: start every step of the batched scene from the reference's state (a
    one-step comparison along the reference's trajectory). Returns the catches."""
    scene = TagScene(integration=integration)
    rng = np.random.default_rng(seed)
    start = rng.uniform(-1.0, 1.0, size=(4, 2))
    noise = rng.uniform(-0.5, 1.5, size=(STEPS, 3, 5))  # random pushes, outside [0, 1] too: ours clips
    ours = TagEpisodes(scene, torch.tensor(start, dtype=torch.float64).unsqueeze(0))
    env, world = reference_env(monkeypatch, start, integration)
    to_mpe2 = [0, 2, 1, 4, 3]  # mpe2 reads [no-op, -x, +x, -y, +y]; PettingZoo 1.10 read [no-op, +x, -x, +y, -y]
    catches = 0
    for t in range(STEPS):
        if follow:
            ours = TagEpisodes(scene, *reference_state(world))
        actions = chasing_actions(world, noise[t] * 0.3) if chase else noise[t]
        moves = {f"adversary_{i}": np.clip(actions[i, to_mpe2], 0.0, 1.0) for i in range(3)}
        moves["agent_0"] = evader_rule(world)
        for name in list(env.agents):  # every agent's turn; the last one steps the world
            env.step(moves[name])
        reward, caught = ours.step(torch.tensor(actions, dtype=torch.float64).unsqueeze(0))
        catches += int(caught)
        position, velocity = reference_state(world)
        torch.testing.assert_close(ours.position, position, atol=tolerance, rtol=0, msg=f"position at step {t + 1}")
        torch.testing.assert_close(ours.velocity, velocity, atol=tolerance, rtol=0, msg=f"velocity at step {t + 1}")
        for i in range(3):
            assert float(reward) == pytest.approx(env.rewards[f"adversary_{i}"], abs=tolerance), f"step {t + 1}"
        observed = ours.observe()[0].numpy()
        for i in range(3):
            np.testing.assert_allclose(observed[i], env.observe(f"adversary_{i}"), atol=max(tolerance, 1e-6), rtol=0)
    assert np.abs(ours.position[0].numpy() - start).max() > 0.5  # the agents went somewhere
    return catches


@pytest.mark.parametrize("integration", ["velocity_first", "position_first"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_scene_runs_200_steps_as_mpe2_with_the_original_edits(monkeypatch, integration, seed):
    drive_both(monkeypatch, integration, seed, chase=False, follow=False, tolerance=TOLERANCE)


@pytest.mark.parametrize("integration", ["velocity_first", "position_first"])
@pytest.mark.parametrize("seed", [2, 6])
def test_every_step_of_crowded_chases_is_mpe2s_step(monkeypatch, integration, seed):
    """Robots that chase the evader catch it and press on each other: the soft contacts (margin 1e-3) amplify the
    last bit of a difference in rounding from one step to the next, so two simulators part ways over a long crowded
    chase; step by step from the same state they agree to rounding."""
    catches = drive_both(monkeypatch, integration, seed, chase=True, follow=True, tolerance=1e-9)
    assert catches >= 5


def test_observations_are_twelve_numbers_in_the_original_order():
    scene = TagScene()
    position = torch.tensor([[[0.1, 0.2], [0.3, -0.4], [-0.5, 0.6], [0.7, 0.8]]], dtype=torch.float64)
    velocity = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]], dtype=torch.float64)
    obs = TagEpisodes(scene, position, velocity).observe()[0]
    assert obs.shape == (3, 12) and scene.observation_size == 12
    # robot 1: own velocity, own position, robot 0 / robot 2 / evader offsets, the evader's velocity
    expected = [3.0, 4.0, 0.3, -0.4, -0.2, 0.6, -0.8, 1.0, 0.4, 1.2, 7.0, 8.0]
    assert obs[1].tolist() == pytest.approx(expected)


def test_a_catch_pays_ten_per_robot_touching_the_evader():
    scene = TagScene(obstacles=())
    position = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [2.0, 2.0], [0.05, 0.0]]], dtype=torch.float64)
    reward, catches = TagEpisodes(scene, position).reward()
    distances = 0.05 + 0.05 + float(torch.tensor([1.95, 2.0]).norm())
    assert int(catches) == 2
    assert float(reward) == pytest.approx(-0.1 * distances + 20.0)
