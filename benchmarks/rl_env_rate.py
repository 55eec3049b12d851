"""Episode-steps per second of the batched predator-prey scene against Farama's mpe2 stepped one episode at a time.

    python benchmarks/rl_env_rate.py [--steps 2000] [--episodes 14 1024] [--threads 1]

Both step the paper's scene (3 robots, 1 evader, 8 obstacles, continuous actions) with random actions: mpe2 through
its AEC interface (every agent's turn, the last one steps the world: how the original stepped it), the batched scene
one call per step for all its episodes. An "episode-step" is one world step of one episode. The ratio is measured
side by side in one run and printed last, for each batch size; the paper's batch is 14 episodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from problems.tag_env import TagEpisodes, TagScene


def mpe2_rate(steps: int, seed: int = 0) -> float:
    """World steps per second of one mpe2 episode after another (50 steps each), random actions for every agent."""
    from mpe2 import simple_tag_v3

    env = simple_tag_v3.raw_env(num_good=1, num_adversaries=3, num_obstacles=8, max_cycles=50, continuous_actions=True)
    rng = np.random.default_rng(seed)
    done = 0
    start = time.perf_counter()
    while done < steps:
        env.reset(seed=int(rng.integers(1 << 30)))
        for _ in range(50):
            for name in list(env.agents):
                env.step(rng.uniform(0.0, 1.0, 5).astype(np.float32))
            done += 1
    return done / (time.perf_counter() - start)


def batched_rate(episodes: int, steps: int, seed: int = 0) -> float:
    """Episode-steps per second of the batched scene, ``episodes`` at once, random actions, observations read."""
    scene = TagScene()
    generator = torch.Generator().manual_seed(seed)
    batch = TagEpisodes.start(scene, episodes, generator)
    calls = max(10, steps // episodes)
    actions = torch.rand(calls, episodes, scene.num_robots, 5, generator=generator)
    start = time.perf_counter()
    for t in range(calls):
        batch.observe()
        batch.step(actions[t])
    return calls * episodes / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="world steps of mpe2 (and at least as many "
                                                                  "episode-steps of each batched run)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[14, 1024])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batched_rate(args.episodes[0], 100)  # warm-up
    reference = mpe2_rate(args.steps)
    print(f"mpe2, one episode at a time: {reference:,.0f} steps/s")
    rates = {episodes: batched_rate(episodes, max(args.steps, 20 * episodes)) for episodes in args.episodes}
    for episodes, rate in rates.items():
        print(f"batched, {episodes} episodes at once: {rate:,.0f} episode-steps/s")
    for episodes, rate in rates.items():
        print(f"batched / mpe2 ({episodes} episodes): {rate / reference:.1f}x")


if __name__ == "__main__":
    main()
