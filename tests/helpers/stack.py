"""Shared test helpers: stack."""

from __future__ import annotations

import copy

import torch
from torch import nn

from problems.node_stack import NodeStack

DT = torch.float64


def nll(out, y):
    return -torch.gather(out, -1, y.unsqueeze(-1)).squeeze(-1).mean(1)


def perturbed_stack(model, n, execution, chunk_size=None):
    stack = NodeStack(model, n, dtype=DT, execution=execution, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(0)
    theta = stack.theta + 0.05 * torch.randn(stack.theta.shape, generator=g, dtype=DT)
    return stack, theta


def reference_loss_and_grad(stack, theta, x, y, loss_fn):
    losses, grads = [], []
    for i in range(theta.shape[0]):
        model = copy.deepcopy(stack.template)
        nn.utils.vector_to_parameters(theta[i].clone(), model.parameters())
        for p in model.parameters():
            p.requires_grad_(True)
        loss = loss_fn(model(x[i]).unsqueeze(0), y[i].unsqueeze(0))[0]
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(losses), torch.stack(grads)
