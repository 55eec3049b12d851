"""Decentralized logistic regression and least squares on real tabular data, with the exact optimum.

Robot i holds the samples D_i of a data set that scikit-learn ships (no download): ``breast_cancer``
(569 tumours, 30 features, benign or malignant: logistic loss) or ``diabetes`` (442 patients, 10
features, disease progression: squared loss). Features (and the regression target) are standardized
on the training part; a seeded ``test_fraction`` is held out for validation. Each robot minimizes

    f_i(theta) = (1 / |D_i|) sum_{s in D_i} l(theta; x_s, y_s) + (reg / 2) ||theta||^2

with a linear model (``nn.Linear(d, 1)``: weights and intercept), and the team minimizes
f = (1/N) sum_i f_i. f is strongly convex: its minimizer is computed once, centrally, by Newton's
method in float64, to where f - f* <= ||grad f||^2 / (2 reg) is below 1e-12 (in practice the float64
floor), so f* is exact to far below 1e-10. The metrics
``optimality_gap`` (f(theta_i) - f* per robot) and ``mean_optimality_gap`` (f at the mean of the
robots' parameters, minus f*) are the standard sanity plot of decentralized optimization: exact
methods (EXTRA, NEXT, DSGT, DiNNO) converge to f* linearly, DSGD with a constant step stalls at a bias.

Gradients are full local gradients by default (``full_batch``: every sample of D_i, each weighted
1/|D_i|), so the exact methods are deterministic; with ``full_batch: false`` each step uses a minibatch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from problems.base import SupervisedProblem

LOSSES = {"breast_cancer": "logistic", "diabetes": "squared"}


def load_tabular(name: str, test_fraction: float, seed: int) -> dict[str, Any]:
    """``name``'s features and targets (float64), split into a training and a seeded test part, both
    standardized with the training part's mean and spread."""
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}[name]
    data = loader()
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(y))
    test = order[:int(round(test_fraction * len(y)))]
    train = np.sort(order[len(test):])
    test = np.sort(test)
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    if LOSSES[name] == "squared":
        y = (y - y[train].mean()) / y[train].std()
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    return {"train_x": t(x[train]), "train_y": t(y[train]), "test_x": t(x[test]), "test_y": t(y[test]),
            "feature_names": list(getattr(data, "feature_names", []))}


def split_labels(loss: str, y: torch.Tensor) -> torch.Tensor:
    """Labels to split by: the class (logistic), or the decile of the target (squared)."""
    if loss == "logistic":
        return y.long()
    edges = torch.quantile(y, torch.linspace(0, 1, 11, dtype=y.dtype)[1:-1])
    return torch.bucketize(y, edges)


def linear_model(num_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(num_features, 1))


def sample_losses(loss: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample losses of linear outputs ``out`` (..., 1) against targets (...)."""
    out = out.squeeze(-1)
    target = target.to(out.dtype)
    if loss == "logistic":
        return nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
    return 0.5 * (out - target) ** 2


class TeamObjective:
    """f(theta) = (1/N) sum_i f_i(theta) of the robots' training data, in float64, and its minimizer.

    ``x`` (M, d) and ``y`` (M,) are every robot's samples; ``weights`` (M,) is each sample's weight in f
    (1 / (N |D_i|) for a sample of robot i). Parameters are rows ``[w (d), b]`` (``nn.Linear``'s order).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, loss: str, reg: float):
        self.x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        self.y = y.double()
        self.weights = weights.double()
        self.loss = loss
        self.reg = float(reg)
        self.theta_star, self.f_star = self._solve()

    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """f at each row of ``theta`` (k, d + 1)."""
        theta = theta.double()
        z = theta @ self.x.T
        losses = sample_losses(self.loss, z.unsqueeze(-1), self.y.expand_as(z))
        return losses @ self.weights + 0.5 * self.reg * (theta * theta).sum(1)

    def _gradient_hessian(self, theta: torch.Tensor):
        z = self.x @ theta
        if self.loss == "logistic":
            p = torch.sigmoid(z)
            residual, curvature = p - self.y, p * (1 - p)
        else:
            residual, curvature = z - self.y, torch.ones_like(z)
        eye = torch.eye(len(theta), dtype=torch.float64)
        grad = self.x.T @ (self.weights * residual) + self.reg * theta
        hess = (self.x.T * (self.weights * curvature)) @ self.x + self.reg * eye
        return grad, hess

    def _solve(self) -> tuple[torch.Tensor, float]:
        """Newton's method with a backtracking line search until f(theta) - f* is certified below 1e-12 by
        strong convexity (f - f* <= ||grad f||^2 / (2 reg)) and no step improves f any further."""
        theta = torch.zeros(self.x.shape[1], dtype=torch.float64)
        for _ in range(200):
            grad, hess = self._gradient_hessian(theta)
            bound = float(grad @ grad) / (2 * self.reg)
            step = torch.linalg.solve(hess, grad)
            f0, t = float(self.values(theta.unsqueeze(0))), 1.0
            while float(self.values((theta - t * step).unsqueeze(0))) > f0 - 0.25 * t * float(grad @ step) \
                    and t > 1e-10:
                t *= 0.5
            if bound < 1e-20 or (t <= 1e-10 and bound < 1e-12):
                break  # at the float64 floor
            theta = theta - t * step
        else:
            raise RuntimeError(f"Newton's method left f - f* up to {bound:.1e} after 200 steps")
        if bound >= 1e-12:
            raise RuntimeError(f"Newton's method stopped with f - f* up to {bound:.1e}")
        self.certified_gap = bound
        return theta, float(self.values(theta.unsqueeze(0)))


class FullBatchPasses:
    """The counters a batch sampler keeps, for robots that use all their samples every step."""

    def __init__(self, sizes: Sequence[int], device):
        self.sizes = torch.as_tensor(list(sizes), device=device)
        self.epochs = torch.zeros(len(self.sizes), dtype=torch.long, device=device)
        self.samples_seen = torch.zeros(len(self.sizes), dtype=torch.long, device=device)

    def step(self) -> None:
        self.epochs += 1
        self.samples_seen += self.sizes

    def state_dict(self) -> dict:
        return {"epochs": self.epochs.clone(), "samples_seen": self.samples_seen.clone()}

    def load_state_dict(self, saved: dict) -> None:
        self.epochs.copy_(saved["epochs"])
        self.samples_seen.copy_(saved["samples_seen"])


class LogRegProblem(SupervisedProblem):
    """Robots fit a linear model to their own samples of a tabular data set; see the module docstring.

    ``sample_weights[i]`` are the weights of robot i's samples in its objective (1 / |D_i| each; for
    the pooled centralized model, 1 / (N |D_j|) for a sample of robot j, so that it minimizes the same
    f). ``objective`` is the team's :class:`TeamObjective` (every robot's data, on every process).
    """

    classification = True  # top-1 accuracy on the test set (logistic loss only)
    base_metrics = SupervisedProblem.base_metrics + ("optimality_gap", "mean_optimality_gap")

    def __init__(self, name: str, model: nn.Module, node_indices: Sequence[torch.Tensor], train_x, train_y,
                 val_x, val_y, *, loss: str, objective: TeamObjective, sample_weights: Sequence[torch.Tensor],
                 full_batch: bool = True, **kwargs):
        super().__init__(name, model, node_indices, train_x, train_y, val_x, val_y, loss=loss, **kwargs)
        self.classification = loss == "logistic"
        self.objective = objective
        self.reg = objective.reg
        self.full_batch = bool(full_batch)
        # every robot's whole data set, padded to the largest, with each sample's weight (0: padding)
        local = [torch.as_tensor(ix, dtype=torch.long) for ix in node_indices]
        if self.robots is not None:  # the base class kept only this block's rows, renumbered
            ends = torch.cumsum(torch.tensor([len(ix) for ix in local]), 0).tolist()
            local = [torch.arange(end - len(ix), end) for ix, end in zip(local, ends)]
        width = max(len(ix) for ix in local)
        index = torch.zeros(len(local), width, dtype=torch.long)
        weight = torch.zeros(len(local), width, dtype=self.dtype)
        for i, (ix, w) in enumerate(zip(local, sample_weights)):
            index[i, :len(ix)] = ix
            weight[i, :len(ix)] = torch.as_tensor(w, dtype=self.dtype)
        self.full_x = self.train_x[index.to(self.device)]
        self.full_y = torch.stack([self.train_y[index.to(self.device)].to(self.dtype), weight.to(self.device)], -1)
        if self.full_batch:
            self.sampler = FullBatchPasses([len(ix) for ix in local], self.device)

    def per_sample_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sample_losses(self.loss_name, out, target)

    def correct(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out.squeeze(-1) > 0) == (target > 0.5)).to(out.dtype)

    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, [y, weight]): every sample of each robot (full batch) or a minibatch weighted 1 / B."""
        if self.full_batch:
            self.sampler.step()
            return self.full_x, self.full_y
        x, y = super().next_batch(batch_size)
        return x, torch.stack([y.to(self.dtype), torch.full_like(y, 1.0 / y.shape[1], dtype=self.dtype)], -1)

    def batch_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.per_sample_loss(out, target[..., 0]) * target[..., 1]).sum(dim=1)

    def local_grads(self, theta: torch.Tensor | None = None, out: torch.Tensor | None = None):
        """f_i and its gradient for every robot: the data term on this step's samples plus (reg/2)||theta||^2."""
        theta = self.theta if theta is None else theta
        x, y = self.next_batch()
        losses, grads = self.stack.loss_and_grad(theta, x, y, self.batch_loss, out=out)
        losses = losses + 0.5 * self.reg * (theta * theta).sum(1)
        grads.add_(theta, alpha=self.reg)
        self.last_losses = losses
        self._update_train_loss(losses)
        return losses, grads

    def compute_metrics(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().compute_metrics(theta)
        f_star = self.objective.f_star
        if "optimality_gap" in self.metrics:
            values["optimality_gap"] = (self.objective.values(theta.detach().cpu()) - f_star)
        if "mean_optimality_gap" in self.metrics:
            team = theta.detach() if self.ranks is None else self.ranks.all_rows(theta.detach())
            mean = team.double().mean(0, keepdim=True).cpu()
            values["mean_optimality_gap"] = (self.objective.values(mean) - f_star).reshape(1)
        return values

