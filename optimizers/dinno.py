"""DiNNO: consensus ADMM for neural networks (Yu et al.).

Per round k, with every node using the round-k snapshot theta^k (Jacobi style):

    rho      <- rho * rho_scaling
    lambda_i <- lambda_i + rho * sum_{j in N(i)} (theta_i^k - theta_j^k)
    then ``primal_iterations`` optimizer steps, each on a fresh batch, on
    f_i(theta) + <theta, lambda_i> + rho * sum_{j in N(i)} || theta - (theta_i^k + theta_j^k) / 2 ||^2

The penalty's gradient is analytic: lambda_i + 2 rho (d_i theta - (d_i theta_i^k + (A theta^k)_i) / 2),
so one neighbour exchange per round suffices: each node sends its parameters once a round.
Lossy links: a node whose message from j is lost uses the last theta_j it received (its own theta_i
before any arrived, which adds nothing to its dual and pulls it only toward itself); both the dual and
the pull then use the same held row, so the penalty still vanishes exactly at consensus.
"""

from __future__ import annotations

import torch

from optimizers.base import DistributedOptimizer, make_torch_optimizer, reset_torch_optimizer
from foundation.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, REQUIRED, ConfigError
from foundation.schedules import learning_rates


class DiNNO(DistributedOptimizer):
    alg_name = "dinno"
    example_config = {"rho_init": 0.5, "primal_iterations": 2, "primal_lr_start": 0.01}  # a small working config (contract tests, docs)
    derived = ("lrs", "_round_opt")
    config_schema = {
        "outer_iterations": (int, REQUIRED, AT_LEAST_ONE),
        "rho_init": (float, REQUIRED, NON_NEGATIVE),
        "rho_scaling": (float, 1.0, POSITIVE),
        "primal_iterations": (int, 1, AT_LEAST_ONE),
        "primal_optimizer": (("adam", "adamw", "sgd"), "adam"),
        "persistant_primal_opt": (bool, False),
        "primal_lr_start": (float, None, POSITIVE),
        "primal_lr_finish": (float, None, POSITIVE),
        "primal_lr": (float, None, POSITIVE),
        "lr_decay_type": (("constant", "linear", "log"), "constant"),
        "profile": (bool, False),
    }

    @classmethod
    def check_config(cls, prefix: str, config: dict) -> None:
        if config["primal_lr_start"] is None and config["primal_lr"] is None:
            raise ConfigError(f"{prefix}.primal_lr_start: required for dinno (or the constant primal_lr)")
        if config["lr_decay_type"] != "constant" and config["primal_lr_finish"] is None:
            raise ConfigError(f"{prefix}.primal_lr_finish: required when lr_decay_type is {config['lr_decay_type']}")

    def setup(self) -> None:
        self.rho = float(self.config["rho_init"])
        self.duals = torch.zeros_like(self.problem.theta)
        self.setup_primal()

    def setup_primal(self) -> None:
        """The primal learning rate of every round, and the primal optimizer when it persists."""
        cfg = self.config
        start = cfg["primal_lr_start"] if cfg["primal_lr_start"] is not None else cfg["primal_lr"]
        if start is None:
            raise ValueError(f"{self.alg_name} needs primal_lr_start (or the older constant primal_lr)")
        finish = cfg["primal_lr_finish"] if cfg["primal_lr_finish"] is not None else start
        self.lrs = learning_rates(cfg["lr_decay_type"], start, finish, self.outer_iterations)
        self.primal_opt = None
        if cfg["persistant_primal_opt"]:
            self.primal_opt = make_torch_optimizer(cfg["primal_optimizer"], [self.problem.theta], self.lrs[0])

    def primal_update(self, k: int, penalty_grad) -> None:
        """Round k's ``primal_iterations`` optimizer steps on f_i plus the penalty whose gradient is given."""
        cfg = self.config
        opt = self.primal_opt
        if opt is None:  # a new optimizer every round; the same one reset in place is identical and cheaper
            opt = self.__dict__.get("_round_opt")
            if opt is None:
                opt = self._round_opt = make_torch_optimizer(cfg["primal_optimizer"], [self.problem.theta],
                                                             float(self.lrs[k - 1]))
            else:
                reset_torch_optimizer(opt)
        self.primal_steps(opt, float(self.lrs[k - 1]), int(cfg["primal_iterations"]), penalty_grad)

    def round(self, k: int) -> None:
        cfg = self.config
        theta = self.problem.theta
        net = self.network
        self.rho *= float(cfg["rho_scaling"])
        rho = self.rho
        # The same operations in the same order as the textbook lines in the comments, in place on
        # buffers that live across rounds (a stack-sized temporary costs more in page faults than in
        # arithmetic).
        anchor = self.workspace("anchor", theta).copy_(theta)                    # theta^k
        neighbours = net.neighbor_sum(anchor, "theta", out=self.workspace("neighbours", theta))
        degree = net.degrees.unsqueeze(1)
        scaled = torch.mul(degree, anchor, out=self.workspace("scaled", theta))  # d_i theta_i^k
        step = torch.sub(scaled, neighbours, out=self.workspace("dual_step", theta)).mul_(rho)
        self.duals += step                                   # duals += rho * (d theta^k - A theta^k)
        pull = torch.add(scaled, neighbours, out=self.workspace("pull", theta)).mul_(0.5)

        def penalty_grad(x: torch.Tensor) -> torch.Tensor:  # duals + 2 rho (d x - pull)
            grad = torch.mul(degree, x, out=self.workspace("penalty", theta))
            return grad.sub_(pull).mul_(2.0 * rho).add_(self.duals)

        self.primal_update(k, penalty_grad)


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """DiNNO robot by robot: each robot's dual step from the round's snapshot, then its primal optimizer
    steps on f_i(x) + <x, lambda_i> + rho sum_j ||x - (x_i^k + x_j^k) / 2||^2."""
    start = config["primal_lr_start"] if config["primal_lr_start"] is not None else config["primal_lr"]
    finish = config["primal_lr_finish"] if config["primal_lr_finish"] is not None else start
    lrs = learning_rates(config["lr_decay_type"], start, finish, config["outer_iterations"])
    rho = config["rho_init"]
    duals = [torch.zeros_like(x) for x in robots.x]
    leaves = optimizers = None
    if config["persistant_primal_opt"]:
        leaves, optimizers = robots.optimizers(config["primal_optimizer"], float(lrs[0]))
    for k in range(1, rounds + 1):
        rho *= config["rho_scaling"]
        snapshot = list(robots.x)
        for i in range(robots.n):
            duals[i] = duals[i] + rho * sum(snapshot[i] - snapshot[j] for j in robots.neighbours(i))
        if config["persistant_primal_opt"]:
            for leaf, x in zip(leaves, robots.x):
                leaf.data.copy_(x)
        else:
            leaves, optimizers = robots.optimizers(config["primal_optimizer"], float(lrs[k - 1]))
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = float(lrs[k - 1])

        def penalty(i, x, rho=rho, snapshot=snapshot):
            return duals[i] + 2.0 * rho * sum(x - (snapshot[i] + snapshot[j]) / 2 for j in robots.neighbours(i))

        for _ in range(config["primal_iterations"]):
            robots.step(leaves, optimizers, penalty)
