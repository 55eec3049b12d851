"""DiNNO: consensus ADMM for neural networks (Yu et al.).

Per round k, with every node using the round-k snapshot theta^k (Jacobi style):

    rho      <- rho * rho_scaling
    lambda_i <- lambda_i + rho * sum_{j in N(i)} (theta_i^k - theta_j^k)
    then ``primal_iterations`` optimizer steps, each on a fresh batch, on
    f_i(theta) + <theta, lambda_i> + rho * sum_{j in N(i)} || theta - (theta_i^k + theta_j^k) / 2 ||^2

The penalty's gradient is analytic: lambda_i + 2 rho (d_i theta - (d_i theta_i^k + (A theta^k)_i) / 2),
so one neighbour exchange per round suffices: each node sends its parameters once a round.

``primal_penalty: proximal`` keeps the optimizer's moments on f_i's gradients alone and solves the penalty
exactly in the optimizer's metric D (Adam: (sqrt(v_hat) + eps) / lr per coordinate; SGD: 1 / lr):

    theta <- (D theta - u - lambda_i + 2 rho pull_i) / (D + 2 rho d_i),   u = m_hat (Adam) or the gradient (SGD)

With rho = 0 this is the plain optimizer step; a coordinate whose own loss barely moves it (small D) goes to
the penalty's minimizer instead of taking an optimizer-sized step against the pull.
Lossy links: a node whose message from j is lost uses the last theta_j it received (its own theta_i
before any arrived, which adds nothing to its dual and pulls it only toward itself); both the dual and
the pull then use the same held row, so the penalty still vanishes exactly at consensus.
"""

from __future__ import annotations

import torch

from foundation.schedules import learning_rates
from foundation.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, REQUIRED, ConfigError
from optimizers.base import DistributedOptimizer, make_torch_optimizer, optimizer_schema, reset_torch_optimizer

PROXIMAL_OPTIMIZERS = ("adam", "sgd")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


class DiNNO(DistributedOptimizer):
    alg_name = "dinno"
    example_config = {"rho_init": 0.5, "primal_iterations": 2, "primal_lr_start": 0.01}  # a small working config (contract tests, docs)
    derived = ("lrs", "_round_opt")
    config_schema = optimizer_schema({
        "rho_init": (float, REQUIRED, NON_NEGATIVE),
        "rho_scaling": (float, 1.0, POSITIVE),
        "primal_iterations": (int, 1, AT_LEAST_ONE),
        "primal_optimizer": (("adam", "adamw", "sgd"), "adam"),
        "persistant_primal_opt": (bool, False),
        "primal_penalty": (("gradient", "proximal"), "gradient"),
        "primal_lr_start": (float, None, POSITIVE),
        "primal_lr_finish": (float, None, POSITIVE),
        "primal_lr": (float, None, POSITIVE),
        "lr_decay_type": (("constant", "linear", "log"), "constant"),
        "lr_decay_rounds": (int, None, AT_LEAST_ONE),
    })

    @classmethod
    def check_config(cls, prefix: str, config: dict) -> None:
        if config["primal_lr_start"] is None and config["primal_lr"] is None:
            raise ConfigError(f"{prefix}.primal_lr_start: required for dinno (or the constant primal_lr)")
        if config["lr_decay_type"] != "constant" and config["primal_lr_finish"] is None:
            raise ConfigError(f"{prefix}.primal_lr_finish: required when lr_decay_type is {config['lr_decay_type']}")
        if config.get("primal_penalty") == "proximal" and config["primal_optimizer"] not in PROXIMAL_OPTIMIZERS:
            raise ConfigError(f"{prefix}.primal_optimizer: primal_penalty proximal takes "
                              f"{' or '.join(PROXIMAL_OPTIMIZERS)}, got {config['primal_optimizer']!r}")

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
        self.lrs = learning_rates(cfg["lr_decay_type"], start, finish, self.outer_iterations, cfg.get("lr_decay_rounds"))
        self.primal_opt = None
        self.proximal = cfg.get("primal_penalty", "gradient") == "proximal"
        self.moment1 = self.moment2 = None
        if self.proximal and cfg["primal_optimizer"] == "adam":  # Adam's moments of f_i's gradients alone
            theta = self.problem.theta
            self.moment1, self.moment2, self.moment_steps = torch.zeros_like(theta), torch.zeros_like(theta), 0
        elif cfg["persistant_primal_opt"]:
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

        if self.proximal:
            self.proximal_primal_steps(k, rho, degree, pull)
            return

        def penalty_grad(x: torch.Tensor) -> torch.Tensor:  # duals + 2 rho (d x - pull)
            grad = torch.mul(degree, x, out=self.workspace("penalty", theta))
            return grad.sub_(pull).mul_(2.0 * rho).add_(self.duals)

        self.primal_update(k, penalty_grad)

    def proximal_primal_steps(self, k: int, rho: float, degree: torch.Tensor, pull: torch.Tensor) -> None:
        """Round k's primal steps with the penalty solved exactly in the optimizer's metric (module docstring)."""
        cfg = self.config
        theta = self.problem.theta
        lr = float(self.lrs[k - 1])
        adam = cfg["primal_optimizer"] == "adam"
        if adam and not cfg["persistant_primal_opt"]:
            assert self.moment1 is not None and self.moment2 is not None  # setup() made them for proximal Adam
            self.moment1.zero_()
            self.moment2.zero_()
            self.moment_steps = 0
        (beta1, beta2), eps = ADAM_BETAS, ADAM_EPS
        for _ in range(int(cfg["primal_iterations"])):
            _, grads = self.local_grads(theta, "grads")
            metric = self.workspace("prox_metric", theta)
            if adam:
                assert self.moment1 is not None and self.moment2 is not None  # as above
                self.moment_steps += 1
                t = self.moment_steps
                self.moment1.mul_(beta1).add_(grads, alpha=1.0 - beta1)
                self.moment2.mul_(beta2).addcmul_(grads, grads, value=1.0 - beta2)
                torch.div(self.moment2, 1.0 - beta2 ** t, out=metric).sqrt_().add_(eps).div_(lr)  # D
                direction = torch.div(self.moment1, 1.0 - beta1 ** t,
                                      out=self.workspace("prox_direction", theta))                 # m_hat
            else:
                metric.fill_(1.0 / lr)
                direction = grads
            numerator = torch.mul(metric, theta, out=self.workspace("prox_numerator", theta))
            numerator.sub_(direction).sub_(self.duals).add_(pull, alpha=2.0 * rho)
            theta.copy_(numerator.div_(metric.add_(degree, alpha=2.0 * rho)))


def reference_rounds(robots, config: dict, rounds: int) -> None:
    """DiNNO robot by robot: each robot's dual step from the round's snapshot, then its primal optimizer
    steps on f_i(x) + <x, lambda_i> + rho sum_j ||x - (x_i^k + x_j^k) / 2||^2."""
    start = config["primal_lr_start"] if config["primal_lr_start"] is not None else config["primal_lr"]
    finish = config["primal_lr_finish"] if config["primal_lr_finish"] is not None else start
    lrs = learning_rates(config["lr_decay_type"], start, finish, config["outer_iterations"],
                         config.get("lr_decay_rounds"))
    if config.get("primal_penalty", "gradient") == "proximal":
        return _proximal_reference_rounds(robots, config, rounds, lrs)
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
            assert leaves is not None  # made before the first round
            for leaf, x in zip(leaves, robots.x):
                leaf.data.copy_(x)
        else:
            leaves, optimizers = robots.optimizers(config["primal_optimizer"], float(lrs[k - 1]))
        assert optimizers is not None
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = float(lrs[k - 1])

        def penalty(i, x, rho=rho, snapshot=snapshot):
            return duals[i] + 2.0 * rho * sum(x - (snapshot[i] + snapshot[j]) / 2 for j in robots.neighbours(i))

        for _ in range(config["primal_iterations"]):
            robots.step(leaves, optimizers, penalty)


def _proximal_reference_rounds(robots, config: dict, rounds: int, lrs) -> None:
    """``primal_penalty: proximal``, robot by robot: each step minimizes
    <u_i, x> + 1/2 sum_c D_c (x_c - x_i,c)^2 + <x, lambda_i> + rho sum_j ||x - (x_i^k + x_j^k) / 2||^2
    in closed form, with u_i and D from Adam's moments of f_i's gradients (or the gradient and 1 / lr)."""
    (beta1, beta2), eps = ADAM_BETAS, ADAM_EPS
    adam = config["primal_optimizer"] == "adam"
    rho = config["rho_init"]
    duals = [torch.zeros_like(x) for x in robots.x]
    m = [torch.zeros_like(x) for x in robots.x]
    v = [torch.zeros_like(x) for x in robots.x]
    t = 0
    for k in range(1, rounds + 1):
        rho *= config["rho_scaling"]
        lr = float(lrs[k - 1])
        snapshot = list(robots.x)
        for i in range(robots.n):
            duals[i] = duals[i] + rho * sum(snapshot[i] - snapshot[j] for j in robots.neighbours(i))
        if not config["persistant_primal_opt"]:
            m = [torch.zeros_like(x) for x in robots.x]
            v = [torch.zeros_like(x) for x in robots.x]
            t = 0
        for _ in range(config["primal_iterations"]):
            grads = robots.gradients()
            t += 1
            new = []
            for i, x in enumerate(robots.x):
                if adam:
                    m[i] = beta1 * m[i] + (1 - beta1) * grads[i]
                    v[i] = beta2 * v[i] + (1 - beta2) * grads[i] ** 2
                    u = m[i] / (1 - beta1 ** t)
                    metric = (torch.sqrt(v[i] / (1 - beta2 ** t)) + eps) / lr
                else:
                    u, metric = grads[i], torch.full_like(x, 1.0 / lr)
                pull = sum((snapshot[i] + snapshot[j]) / 2 for j in robots.neighbours(i))
                new.append((metric * x - u - duals[i] + 2 * rho * pull) / (metric + 2 * rho * robots.degree(i)))
            robots.x = new
