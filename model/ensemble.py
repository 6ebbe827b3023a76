"""Several networks of one task as one: the mean of their softmax probabilities.

A training run's five cross-validation folds can be deployed together. The ensemble returns
log(mean probability), so anything that applies softmax to a network's output (inference,
Grad-CAM's class targets) gets the averaged probabilities exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ProbabilityEnsemble(nn.Module):
    """Members with the same classes; ``forward`` gives log of the mean softmax."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def member_modules(network: nn.Module) -> list[nn.Module]:
    """The single networks inside ``network``: its members for an ensemble, else itself."""
    if isinstance(network, ProbabilityEnsemble):
        return list(network.members)
    return [network]
