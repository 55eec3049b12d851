"""Training without communication: every node steps on its own data only.

Used for the individual-training baseline (N nodes, no messages) and, on a one-node problem holding
the pooled data, for the centralized baseline. The learning rate is ``lr``, or follows ``lr_decay_type``
from ``lr`` to ``lr_finish`` over the rounds. A round is ``steps_per_round`` optimizer steps, each on a
fresh batch (as many gradient steps per round as a DiNNO robot's ``primal_iterations``).
"""

from __future__ import annotations

import torch

from foundation.schema import AT_LEAST_ONE
from optimizers.base import (
    LEARNING_RATE_KEYS,
    DistributedOptimizer,
    config_learning_rates,
    make_torch_optimizer,
    optimizer_schema,
)


class LocalTraining(DistributedOptimizer):
    alg_name = "local"
    example_config = {"lr": 0.05}  # a small working config (contract tests, docs)
    derived = ("lrs",)
    config_schema = optimizer_schema({
        "optimizer": (("adam", "adamw", "sgd"), "adam"),
        **LEARNING_RATE_KEYS,
        "steps_per_round": (int, 1, AT_LEAST_ONE),
    })

    def setup(self) -> None:
        cfg = self.config
        self.lrs = self.lr_schedule(cfg["lr"], cfg["lr_finish"], cfg["lr_decay_type"])
        self.opt = make_torch_optimizer(cfg["optimizer"], [self.problem.theta], cfg["lr"])

    def round(self, k: int) -> None:
        theta = self.problem.theta
        for group in self.opt.param_groups:
            group["lr"] = float(self.lrs[k - 1])
        for _ in range(int(self.config["steps_per_round"])):
            _, grads = self.problem.local_grads(theta)
            theta.grad = grads
            self.opt.step()
        theta.grad = None


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """Every robot alone: its own optimizer on its own batches, ``steps_per_round`` steps a round."""
    lrs = config_learning_rates(config)
    leaves, optimizers = robots.optimizers(config["optimizer"], float(lrs[0]))
    for k in range(1, rounds + 1):
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = float(lrs[k - 1])
        for _ in range(config["steps_per_round"]):
            robots.step(leaves, optimizers, lambda i, x: torch.zeros_like(x))
