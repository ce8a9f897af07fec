"""How a gradient-based CAM turns activations and gradients into a map.

Each method is a function ``(A, G) -> cam`` with ``A``: B×C×h×w activations, ``G``: ...×B×C×h×w
gradients of the explained score with respect to ``A`` (leading dimensions, e.g. one per α, broadcast),
returning the map ...×B×h×w before the ReLU. The formulas (and their small epsilons) follow the
papers as the ``grad-cam`` package implements them, so the maps agree with it.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch


def gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: channel weights = spatial mean of the gradient."""
    weights = g.mean(dim=(-2, -1), keepdim=True)
    return (weights * a).sum(-3)


def hirescam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """HiResCAM: element-wise gradient × activation, summed over channels (faithful for GAP heads)."""
    return (g * a).sum(-3)


def gradcam_plusplus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (eq. 19 of arXiv:1710.11063 with the exponential-score simplification)."""
    g2 = g * g
    sum_a = a.sum(dim=(-2, -1), keepdim=True)
    aij = g2 / (2 * g2 + sum_a * g2 * g + 1e-6)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    weights = (g.clamp(min=0) * aij).sum(dim=(-2, -1), keepdim=True)
    return (weights * a).sum(-3)


def xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: gradients weighted by the normalised activations."""
    sum_a = a.sum(dim=(-2, -1), keepdim=True)
    weights = (g * a / (sum_a + 1e-7)).sum(dim=(-2, -1), keepdim=True)
    return (weights * a).sum(-3)


def layercam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Layer-CAM: positive gradients as spatial weights."""
    return (g.clamp(min=0) * a).sum(-3)


GRADIENT_METHODS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "hirescam": hirescam,
    "gradcam++": gradcam_plusplus,
    "xgradcam": xgradcam,
    "layercam": layercam,
}

# Methods whose map is linear in the gradient: a combination of per-logit maps equals the map of the
# combined gradient, before the ReLU.
LINEAR_IN_GRADIENT = frozenset({"gradcam", "hirescam", "xgradcam"})

ALIASES = {"grad-cam": "gradcam", "gradcampp": "gradcam++", "gradcamplusplus": "gradcam++",
           "grad-cam++": "gradcam++", "xgrad-cam": "xgradcam", "layer-cam": "layercam",
           "hires-cam": "hirescam", "score-cam": "scorecam", "le-grad": "legrad"}


def canonical_method(name: str) -> str:
    """Lower-case method name with the usual spellings folded (``Grad-CAM++`` → ``gradcam++``)."""
    if name.strip().lower().startswith("pgc:"):  # a grad-cam package class name keeps its case
        return "pgc:" + name.strip()[4:]
    key = name.strip().lower()
    return ALIASES.get(key, key)
