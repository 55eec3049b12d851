"""Problem-level half of a (problem, optimizer) pair.

A problem owns the node models (as a :class:`NodeStack`), each node's data, the local loss and
the metrics. Optimizers only ask it for ``local_grads(theta)`` (every node's loss and gradient on a
fresh batch of its own data) and ``evaluate(...)`` at evaluation rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from foundation import state
from problems.metrics import (
    CONSENSUS_ERROR,
    FORWARD_PASS_COUNT,
    MEAN_MODEL_TOP1_ACCURACY,
    TOP1_ACCURACY,
    VALIDATION_LOSS,
    per_robot,
)
from problems.node_stack import NodeStack
from problems.sampling import NodeBatchSampler


def per_node_loss(name: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample losses (k, B) for outputs (k, B, ...) and targets (k, B, ...)."""
    if name == "NLL":
        return -torch.gather(out, -1, target.unsqueeze(-1)).squeeze(-1)
    if name == "CE":
        return nn.functional.cross_entropy(out.flatten(0, 1), target.flatten(0, 1),
                                           reduction="none").view(target.shape)
    target = target.to(out.dtype).reshape(out.shape)
    if name == "BCE":
        values = nn.functional.binary_cross_entropy(out, target, reduction="none")
    elif name == "MSE":
        values = (out - target) ** 2
    elif name == "L1":
        values = (out - target).abs()
    else:
        raise ValueError(f"unknown loss {name!r}; allowed: NLL, CE, BCE, MSE, L1")
    return values.flatten(2).mean(2)


def consensus_distances(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-normalized parameter vectors: distance of each to their mean, and all pairwise distances."""
    unit = theta / theta.norm(dim=1, keepdim=True).clamp_min(1e-30)
    to_mean = (unit - unit.mean(dim=0, keepdim=True)).norm(dim=1)
    return to_mean, torch.cdist(unit, unit)


@dataclass(frozen=True)
class RobotBlock:
    """The robots one process hosts: global ids ``start`` .. ``stop - 1`` of ``total`` robots."""

    start: int
    stop: int
    total: int

    @property
    def ids(self) -> range:
        return range(self.start, self.stop)


class StackProblem:
    """What every problem on a node stack shares: the robots' models as one :class:`NodeStack`, the configured
    metrics and their history, the training-loss average and the checkpointed state. A subclass brings the data
    (``local_grads``) and the metrics (``compute_metrics``).

    ``robots`` (a :class:`RobotBlock`) makes the problem one process's block of a larger team, and ``ranks``
    (e.g. ``optimizers.comm.distributed.RankMetrics``) combines the blocks' metrics on rank 0.
    """

    classification = False
    base_metrics: tuple[str, ...] = ()
    # metrics recorded along with a configured one (metric -> the one it comes with)
    recorded_with: dict[str, str] = {}

    def __init__(self, name: str, model: nn.Module, num_nodes: int, metrics: Sequence[str],
                 evaluate_frequency: int = 20, tloss_decay: float = 0.2, device="cpu",
                 dtype: torch.dtype = torch.float32, execution: str = "auto", chunk_size: int | None = None,
                 plan_cache=None, robots: RobotBlock | None = None, ranks=None, compile: str = "off"):
        self.name = name
        self.num_nodes = num_nodes
        if robots is not None and robots.stop - robots.start != self.num_nodes:
            raise ValueError(f"robot block {robots} does not match the {self.num_nodes} node data sets")
        self.robots = robots
        self.ranks = ranks  # combines metrics across processes (None: every robot is here)
        self.device = torch.device(device)
        self.dtype = dtype
        self.stack = NodeStack(model, self.num_nodes, self.device, dtype, execution, chunk_size, plan_cache,
                               team_size=None if robots is None else robots.total, compile=compile)
        self.metrics = list(metrics)
        unknown = [m for m in self.metrics if m not in self.available_metrics()]
        if unknown:
            raise ValueError(f"metric {unknown[0]!r} is not available for {type(self).__name__}; "
                             f"allowed: {', '.join(self.available_metrics())}")
        self.evaluate_frequency = evaluate_frequency
        self.tloss_decay = tloss_decay
        self.train_loss_ma = torch.full((self.num_nodes,), math.nan, dtype=torch.float64)
        self.last_losses = torch.zeros(self.num_nodes, dtype=dtype, device=self.device)
        self.history: dict[str, list] = {}

    @classmethod
    def recorded_metrics(cls, configured) -> tuple[str, ...]:
        """Every metric a problem configured with ``configured`` records."""
        return tuple(configured) + tuple(m for m, parent in cls.recorded_with.items() if parent in configured)

    @classmethod
    def available_metrics(cls) -> tuple[str, ...]:
        return cls.base_metrics

    @property
    def theta(self) -> torch.Tensor:
        return self.stack.theta

    def local_grads(self, theta: torch.Tensor | None = None, out: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _update_train_loss(self, losses: torch.Tensor) -> None:
        current = losses.detach().to("cpu", torch.float64)
        fresh = torch.isnan(self.train_loss_ma)
        self.train_loss_ma = torch.where(
            fresh, current, (1.0 - self.tloss_decay) * self.train_loss_ma + self.tloss_decay * current)

    # ---------------------------------------------------------------------- evaluation
    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, round_index: int, theta: torch.Tensor | None = None,
                 extras: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """Compute the configured metrics, append them to ``history`` and return them (None on a process
        that does not keep them)."""
        theta = self.theta if theta is None else theta
        values = self.compute_metrics(theta)
        for key, value in (extras or {}).items():
            values[key] = torch.as_tensor(value).detach().cpu().clone()
        if self.ranks is not None:  # every robot's rows on rank 0, which alone keeps the history
            values = self.ranks.combine(values, per_robot())
            if values is None:
                return None
        self.history.setdefault("round", []).append(round_index)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        return values

    # ---------------------------------------------------------------------- checkpoints
    def capture(self, names: Sequence[str]) -> dict:
        return state.capture(self, names)

    def restore(self, saved: dict) -> None:
        state.restore(self, saved)

    def state_dict(self) -> dict:
        """Parameters and the node stack's execution decisions (a subclass adds what else it keeps)."""
        return {"theta": self.theta.detach().clone(), "stack_plans": dict(self.stack.plans),
                "stack_compiled": dict(self.stack.compiled)}

    def load_state_dict(self, saved: dict) -> None:
        self.theta.copy_(saved["theta"].to(self.theta.device, self.theta.dtype))
        self.stack.plans.update(saved["stack_plans"])
        self.stack.compiled.update(saved.get("stack_compiled", {}))  # a resumed run keeps its compile decisions

    def make_node_models(self) -> list[nn.Module]:
        return [self.stack.node_model(i) for i in range(self.num_nodes)]


class SupervisedProblem(StackProblem):
    """Nodes that each fit (input -> target) pairs of their own, evaluated on one shared validation set.

    ``node_indices[i]`` are the rows of ``train_x``/``train_y`` node ``i`` owns. The data tensors
    move to the device once; batches are gathered by index every round.

    ``robots`` (a :class:`RobotBlock`) makes the problem one process's block of a larger team: its
    nodes are robots ``robots.ids``, it keeps only their training data, draws their batch streams and
    picks the evaluated robots by global id (so the numbers do not depend on how the team is split),
    and ``ranks`` (e.g. ``optimizers.comm.distributed.RankMetrics``) combines the blocks' metrics on rank 0.
    """

    base_metrics: tuple[str, ...] = (FORWARD_PASS_COUNT, VALIDATION_LOSS, CONSENSUS_ERROR, "current_epoch",
                                     "train_loss_moving_average")

    def __init__(self, name: str, model: nn.Module, node_indices: Sequence[torch.Tensor],
                 train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 loss: str, metrics: Sequence[str], train_batch_size: int, val_batch_size: int,
                 evaluate_frequency: int = 20, tloss_decay: float = 0.2, device="cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0, verbose_evals: bool = False,
                 execution: str = "auto", chunk_size: int | None = None, plan_cache=None,
                 eval_nodes: int | None = None, robots: RobotBlock | None = None, ranks=None,
                 compile: str = "off"):
        super().__init__(name, model, len(node_indices), metrics, evaluate_frequency, tloss_decay, device, dtype,
                         execution, chunk_size, plan_cache, robots, ranks, compile)
        if robots is not None:  # keep only this block's training samples
            used = torch.cat([torch.as_tensor(ix, dtype=torch.long) for ix in node_indices])
            train_x, train_y = train_x[used], train_y[used]
            ends = torch.cumsum(torch.tensor([len(ix) for ix in node_indices]), 0).tolist()
            node_indices = [torch.arange(end - len(ix), end) for ix, end in zip(node_indices, ends)]
        self.loss_name = loss
        self.train_batch_size = train_batch_size
        self.val_batch_size = val_batch_size
        self.verbose_evals = verbose_evals
        self.train_x = self._to_device(train_x)
        self.train_y = train_y.to(self.device)
        self.val_x = self._to_device(val_x)
        self.val_y = val_y.to(self.device)
        # a subclass may put a sampler of its own with the same counters in its place (FullBatchPasses, WindowSampler)
        self.sampler: Any = NodeBatchSampler(node_indices, self.device, seed=seed,
                                             robot_ids=None if robots is None else robots.ids)
        # Validation on a fixed, seeded sample of nodes (the others read NaN): large teams stay cheap.
        self.eval_nodes = None
        team = self.num_nodes if robots is None else robots.total
        if eval_nodes is not None and eval_nodes < team:
            pick = torch.randperm(team, generator=torch.Generator().manual_seed(seed))[:eval_nodes].sort().values
            if robots is not None:
                pick = pick[(pick >= robots.start) & (pick < robots.stop)] - robots.start
            self.eval_nodes = pick.to(self.device)

    @classmethod
    def available_metrics(cls) -> tuple[str, ...]:
        extra = (TOP1_ACCURACY, "validation_as_vector", MEAN_MODEL_TOP1_ACCURACY) if cls.classification else ()
        return cls.base_metrics + extra

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.to(self.dtype) if x.is_floating_point() else x

    # ------------------------------------------------------------------------ training
    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.sampler.next_indices(batch_size or self.train_batch_size)
        return self.train_x[idx], self.train_y[idx]

    def local_grads(self, theta: torch.Tensor | None = None, out: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's loss and gradient at ``theta`` (default: the current stack) on a fresh batch;
        the gradients go into ``out`` when given (a buffer shaped like ``theta``)."""
        theta = self.theta if theta is None else theta
        x, y = self.next_batch()
        losses, grads = self.stack.loss_and_grad(theta, x, y, self.batch_loss, out=out)
        self.last_losses = losses
        self._update_train_loss(losses)
        return losses, grads

    def per_sample_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (k, B) of outputs (k, B, ...) against targets (k, B, ...)."""
        return per_node_loss(self.loss_name, out, target)

    def correct(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample correctness (k, B) of a classifier's outputs, as 0 / 1 of the outputs' dtype."""
        return (out.argmax(dim=-1) == target).to(out.dtype)

    def batch_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample_loss(out, target).mean(dim=1)

    # ---------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def validation_outputs(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-node, per-validation-sample losses (N, M) and, for classifiers, correctness (N, M)."""
        if theta.shape[0] == 0:  # a process none of whose robots is evaluated
            empty = theta.new_zeros((0, self.val_x.shape[0]))
            return {"losses": empty, "correct": empty > 0} if self.classification else {"losses": empty}
        losses, correct = [], []
        for start in range(0, self.val_x.shape[0], self.val_batch_size):
            xb = self.val_x[start:start + self.val_batch_size]
            yb = self.val_y[start:start + self.val_batch_size]

            def per_sample(out, rows, yb=yb):
                target = yb[rows].unsqueeze(0).expand(out.shape[0], *yb[rows].shape)
                rows = [self.per_sample_loss(out, target)]
                if self.classification:
                    rows.append(self.correct(out, target))
                return torch.stack(rows, dim=1)

            values = self.stack.evaluate(theta, xb, per_sample)
            losses.append(values[:, 0])
            if self.classification:
                correct.append(values[:, 1])
        result = {"losses": torch.cat(losses, dim=1)}
        if self.classification:
            result["correct"] = torch.cat(correct, dim=1) > 0.5
        return result

    def validation_breakdown(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further per-node metrics recorded with ``validation_loss``, from the per-sample validation
        losses (N, M); none by default."""
        return {}

    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.metrics)
        values: dict[str, torch.Tensor] = {}
        if wanted & {VALIDATION_LOSS, TOP1_ACCURACY, "validation_as_vector"}:
            nodes = self.eval_nodes
            val = self.validation_outputs(theta if nodes is None else theta[nodes])

            def every_node(v: torch.Tensor) -> torch.Tensor:
                if nodes is None:
                    return v
                full = torch.full((self.num_nodes, *v.shape[1:]), math.nan, dtype=v.dtype, device=v.device)
                full[nodes] = v
                return full

            values[VALIDATION_LOSS] = every_node(val["losses"].mean(dim=1))
            if VALIDATION_LOSS in wanted:
                extra = self.validation_breakdown(val["losses"])
                values.update({key: every_node(value) for key, value in extra.items()})
                wanted |= set(extra)
            if self.classification:
                values[TOP1_ACCURACY] = every_node(val["correct"].to(torch.float64).mean(dim=1))
                if "validation_as_vector" in wanted:
                    values["validation_as_vector"] = val["correct"]
        if MEAN_MODEL_TOP1_ACCURACY in wanted and self.classification:
            # what the team knows before it agrees: the accuracy of the mean of every robot's parameters
            team = theta.detach() if self.ranks is None else self.ranks.all_rows(theta.detach())
            mean_model = team.mean(0, keepdim=True)
            values[MEAN_MODEL_TOP1_ACCURACY] = self.validation_outputs(mean_model)["correct"].to(
                torch.float64).mean().reshape(1)
        if CONSENSUS_ERROR in wanted:
            if self.ranks is not None:  # the mean over every robot, from sums reduced across processes
                values[CONSENSUS_ERROR] = self.ranks.consensus_error(theta.detach())
            else:
                values[CONSENSUS_ERROR], values["consensus_pairwise"] = consensus_distances(theta.detach())
        values[FORWARD_PASS_COUNT] = self.sampler.samples_seen.clone()
        values["current_epoch"] = self.sampler.epochs.clone()
        values["train_loss_moving_average"] = self.train_loss_ma.clone()
        keep = wanted | {"consensus_pairwise", FORWARD_PASS_COUNT}
        return {k: v.detach().cpu() for k, v in values.items() if k in keep}

    # ---------------------------------------------------------------------- checkpoints
    SAVED = ("train_loss_ma", "last_losses", "history")

    def state_dict(self) -> dict:
        """Parameters, batch streams, loss averages and the metric history so far."""
        return {**super().state_dict(), "sampler": self.sampler.state_dict(), **self.capture(self.SAVED)}

    def load_state_dict(self, saved: dict) -> None:
        super().load_state_dict(saved)
        self.sampler.load_state_dict(saved["sampler"])
        self.restore({k: saved[k] for k in self.SAVED})


class ClassificationProblem(SupervisedProblem):
    classification = True
