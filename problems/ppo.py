"""Proximal policy optimization, the pieces a robot's local loss is made of (PPO-for-Beginners' form, which the
DiNNO paper's code followed, with each detail visible here):

- a Gaussian policy with a fixed diagonal covariance ``action_variance`` around the actor's output;
- rewards-to-go per episode, rtg_t = r_t + gamma rtg_{t+1} (no bootstrapping: episodes are whole);
- advantages A = rtg - V(s) with the critic at collection time, normalized per robot over its batch
  ((A - mean) / (std + 1e-10), the unbiased std);
- the loss of one PPO epoch on the whole batch, actor and critic together (their parameters are disjoint, so one
  gradient is each network's own, as with two optimizers):

      L = -mean(min(r A, clip(r, 1 - clip, 1 + clip) A)) + value_loss_coef * mean((V(s) - rtg)^2),
      r = exp(log pi(a | s) - log pi_old(a | s)).

The model's output on an observation is the actor's mean action followed by the critic's value: (..., action + 1).
A batch's targets per sample are [action (A numbers), old log-probability, advantage, reward-to-go].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PPOSettings:
    gamma: float = 0.99
    clip: float = 0.2
    action_variance: float = 0.5
    value_loss_coef: float = 1.0
    epochs: int = 5  # gradient evaluations a batch serves before the next one is collected
    normalize_advantages: bool = True


def log_prob(action: torch.Tensor, mean: torch.Tensor, variance: float) -> torch.Tensor:
    """log N(action; mean, variance I), summed over the last axis."""
    size = action.shape[-1]
    return -0.5 * ((action - mean) ** 2).sum(-1) / variance - 0.5 * size * math.log(2.0 * math.pi * variance)


def rewards_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """rtg_t = r_t + gamma rtg_{t+1} along the first axis (steps), each episode on its own (no value after the end)."""
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def normalized_advantages(advantages: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """(A - mean) / (std + 1e-10) over each row's samples (the last axis)."""
    if not enabled:
        return advantages
    mean = advantages.mean(dim=-1, keepdim=True)
    return (advantages - mean) / (advantages.std(dim=-1, keepdim=True) + 1e-10)


def ppo_loss(settings: PPOSettings, action_size: int):
    """The node stack's per-node loss ``fn(outputs (k, B, action + 1), targets (k, B, action + 3)) -> (k,)``."""
    variance, clip, coef = settings.action_variance, settings.clip, settings.value_loss_coef

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean, value = out[..., :action_size], out[..., action_size]
        action = target[..., :action_size]
        old_log_prob, advantage, to_go = target[..., action_size], target[..., action_size + 1], target[..., action_size + 2]
        ratio = torch.exp(log_prob(action, mean, variance) - old_log_prob)
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1.0 - clip, 1.0 + clip) * advantage)
        actor = -surrogate.mean(dim=-1)
        critic = ((value - to_go) ** 2).mean(dim=-1)
        return actor + coef * critic

    return loss
