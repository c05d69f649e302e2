"""Scan policies, selected by name: ``raster``, ``random``, ``uncertainty``, ``defects``, ``bayes``, ``dkl``.

The GP policies import torch and gpytorch; they are imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from agent.observation import Observation
from agent.policies.acquire import AcquisitionConfig
from agent.policies.base import FieldTemplate, Policy, PolicyContext, Region, candidate_grid
from agent.policies.scored import ScoreWeights

_CLASSES = {
    "raster": ("agent.policies.raster", "RasterPolicy"),
    "random": ("agent.policies.random_fields", "RandomPolicy"),
    "uncertainty": ("agent.policies.uncertainty", "UncertaintyPolicy"),
    "defects": ("agent.policies.defects", "DefectPolicy"),
    "bayes": ("agent.policies.bayes", "BayesPolicy"),
    "dkl": ("agent.policies.dkl", "DKLPolicy"),
}
POLICY_NAMES = tuple(_CLASSES)

__all__ = [
    "POLICY_NAMES",
    "AcquisitionConfig",
    "FieldTemplate",
    "Policy",
    "PolicyContext",
    "Region",
    "ScoreWeights",
    "candidate_grid",
    "make_policy",
]


def make_policy(
    name: str,
    context: PolicyContext,
    reward: Callable[[Observation], float] | None = None,
    acquisition: AcquisitionConfig | None = None,
    weights: ScoreWeights | None = None,
) -> Policy:
    """Build the policy called ``name``.

    Raises
    ------
    ValueError
        For an unknown name (the known ones are listed).
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    module, cls_name = _CLASSES[name]
    cls: Any = getattr(importlib.import_module(module), cls_name)
    if name in ("bayes", "dkl"):
        return cls(context, reward=reward, config=acquisition)
    if name in ("uncertainty", "defects"):
        return cls(context, weights=weights)
    return cls(context)
