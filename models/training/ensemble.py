"""All ensemble members in one module that also computes the uncertainty maps.

Exported as a single ONNX graph: one call gives mean class probabilities,
predictive entropy, mutual information and per-class member variance (the
formulas are in :mod:`models.uncertainty`, whose numpy implementation is the
reference the export is tested against).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.uncertainty import EPS

OUTPUT_NAMES = ("mean_probs", "entropy", "mutual_info", "variance")


class EnsembleWithUncertainty(nn.Module):
    """Run every member, then reduce their softmax outputs to mean and uncertainty.

    Input (B, 1, H, W); outputs (B, C, H, W), (B, 1, H, W), (B, 1, H, W), (B, C, H, W).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean probabilities, predictive entropy, mutual information, member variance."""
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.members], dim=0)  # (M, B, C, H, W)
        mean = probs.mean(dim=0)
        # log of max(p, EPS), not of p + EPS: torch.onnx's optimiser (onnxscript's add_0 rule, which matches
        # constants within 1e-8 of 0) drops the "+ 1e-8" from the graph, and a member probability that
        # underflows to 0 (a hot pixel drives the logits far apart) then makes 0 * log(0) = NaN.
        total = -(mean * torch.log(torch.clamp(mean, min=EPS))).sum(dim=1, keepdim=True)
        expected = -(probs * torch.log(torch.clamp(probs, min=EPS))).sum(dim=2, keepdim=True).mean(dim=0)
        mutual_info = torch.clamp(total - expected, min=0.0)
        variance = ((probs - mean.unsqueeze(0)) ** 2).mean(dim=0)
        return mean, total, mutual_info, variance
