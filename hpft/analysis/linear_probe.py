"""A multinomial logistic-regression probe in plain torch: fit on one part, accuracy on another (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearProbe:
    """A fitted probe: features are standardised with the training statistics, then `x @ weight.T + bias`.

    Attributes:
        mean: `(D,)` training feature mean.
        scale: `(D,)` training feature standard deviation (1 where a feature is constant).
        weight: `(C, D)`.
        bias: `(C,)`.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """`(N, D) -> (N,)` predicted classes."""
        x = (features.float() - self.mean) / self.scale
        return (x @ self.weight.T + self.bias).argmax(dim=-1)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of `(N, D)` features whose predicted class equals `labels` `(N,)`."""
        return float((self.predict(features) == labels).float().mean())


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int = 300,
    lr: float = 0.05,
    l2: float = 1e-2,
) -> LinearProbe:
    """Fit a softmax-regression probe with full-batch Adam and an L2 penalty on the weights.

    Zero initialisation and full batches make the fit deterministic (no seed). The L2 penalty matters: probes
    here have about as many features as training examples, and an unpenalised fit separates any labels.

    Args:
        features: `(N, D)` training features.
        labels: `(N,)` long classes in `[0, num_classes)`.
        num_classes: C.
        steps: optimiser steps.
        lr: Adam learning rate.
        l2: strength of the weight penalty `l2 * ||W||^2 / N` added to the mean cross-entropy.

    Returns:
        The fitted `LinearProbe`.
    """
    x = features.detach().float()
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False)
    scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))
    x = (x - mean) / scale
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.pow(2).sum() / len(x)
            loss.backward()
            optimiser.step()
    return LinearProbe(mean=mean, scale=scale, weight=weight.detach(), bias=bias.detach())


def majority_accuracy(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Test accuracy of always predicting the most frequent training class (ties: the smallest class id)."""
    majority = int(torch.bincount(train_labels).argmax())
    return float((test_labels == majority).float().mean())
