"""MNIST digit classification split across robots."""

from __future__ import annotations

from torch import nn

from problems.base import ClassificationProblem


def mnist_cnn(num_filters: int = 3, kernel_size: int = 5, linear_width: int = 64) -> nn.Sequential:
    """The paper's small CNN: conv -> ReLU -> 2x2 max-pool -> linear -> ReLU -> linear -> log-softmax."""
    side = (28 - kernel_size + 1) // 2
    return nn.Sequential(
        nn.Conv2d(1, num_filters, kernel_size),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(num_filters * side * side, linear_width),
        nn.ReLU(),
        nn.Linear(linear_width, 10),
        nn.LogSoftmax(dim=-1),
    )


class MNISTProblem(ClassificationProblem):
    """Each node classifies digits from its own share of the training set; validation is the test set."""
