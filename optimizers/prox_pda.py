"""Prox-PDA (Hong, Hajinezhad, Zhao 2017) for consensus: a proximal primal-dual method.

Consensus is the edge constraint A x = 0 (A the signed incidence matrix); node duals
lambda = A^T mu. The proximal term beta / 2 ||x - x^r||^2_{B^T B} (B the signless incidence) makes
the augmented Lagrangian separable, and node i's primal problem is

    min_x f_i(x) + <lambda_i, x> + beta sum_{j in N(i)} || x - (x_i^r + x_j^r) / 2 ||^2

solved inexactly, as DiNNO does, by ``primal_iterations`` optimizer steps on fresh batches. Then the
dual ascent uses the new iterate: lambda_i <- lambda_i + beta sum_{j in N(i)} (x_i^{r+1} - x_j^{r+1}).
(DiNNO's dual step uses x^r before the primal step; here the dual step follows it.) The neighbour sum
of x^{r+1} also serves the next round's primal problem: one exchange of a dense row per round.
Lossy links: a lost row is replaced by the last one received (own row before any arrived); dual and
proximal term use the same held row, so both vanish at consensus.
"""

from __future__ import annotations

import torch

from foundation.schema import AT_LEAST_ONE, POSITIVE, REQUIRED
from optimizers.base import DistributedOptimizer, make_torch_optimizer, optimizer_schema


class ProxPDA(DistributedOptimizer):
    alg_name = "prox_pda"
    example_config = {"beta": 0.5, "primal_iterations": 2, "primal_lr": 0.01}  # a small working config (contract tests, docs)
    config_schema = optimizer_schema({
        "beta": (float, REQUIRED, POSITIVE),
        "primal_iterations": (int, 1, AT_LEAST_ONE),
        "primal_optimizer": (("adam", "adamw", "sgd"), "sgd"),
        "primal_lr": (float, REQUIRED, POSITIVE),
    })

    def setup(self) -> None:
        theta = self.problem.theta
        self.duals = torch.zeros_like(theta)
        self.neighbours = self.network.neighbor_sum(theta, "theta")

    def round(self, k: int) -> None:
        cfg = self.config
        beta = float(cfg["beta"])
        theta = self.problem.theta
        degree = self.network.degrees.unsqueeze(1)
        pull = 0.5 * (degree * theta + self.neighbours)
        opt = make_torch_optimizer(cfg["primal_optimizer"], [theta], float(cfg["primal_lr"]))
        self.primal_steps(opt, float(cfg["primal_lr"]), int(cfg["primal_iterations"]),
                          lambda x: self.duals + 2.0 * beta * (degree * x - pull))
        self.neighbours = self.network.neighbor_sum(theta, "theta")
        self.duals += beta * (degree * theta - self.neighbours)


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """Prox-PDA robot by robot: primal optimizer steps on f_i(x) + <lambda_i, x> + beta sum_j
    ||x - (x_i^r + x_j^r) / 2||^2, then the dual ascent on the new iterates."""
    beta = config["beta"]
    duals = [torch.zeros_like(x) for x in robots.x]
    for _ in range(rounds):
        snapshot = list(robots.x)
        leaves, optimizers = robots.optimizers(config["primal_optimizer"], config["primal_lr"])

        def penalty(i, x, snapshot=snapshot):
            return duals[i] + 2.0 * beta * sum(x - (snapshot[i] + snapshot[j]) / 2 for j in robots.neighbours(i))

        for _ in range(config["primal_iterations"]):
            robots.step(leaves, optimizers, penalty)
        for i in range(robots.n):
            duals[i] = duals[i] + beta * sum(robots.x[i] - robots.x[j] for j in robots.neighbours(i))
