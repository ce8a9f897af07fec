"""The result of an explanation, whichever CAM made it (the engine's own or the grad-cam package's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Union

import torch


@dataclass
class Explanation:
    """The result of :func:`explain` (tensors on the model's device).

    maps: B×H×W in [0, 1] per image (A×B×H×W when ``alpha`` is a list of A values);
    raw_maps: the maps at feature resolution after the ReLU and before any normalisation (B×h×w or
    A×B×h×w); logits: B×K; target: B; references: B×k (``-1``: no reference in that slot, and B×0 when
    not a Finer explanation); alpha: the float or the list given; scores: the explained score per image
    (B, or A×B).
    """

    maps: torch.Tensor
    raw_maps: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    references: torch.Tensor
    alpha: Union[float, List[float]]
    scores: torch.Tensor
    method: str = "gradcam"
    finer: bool = True
    layer: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def probs(self) -> torch.Tensor:
        """Softmax of the logits, B×K."""
        return torch.softmax(self.logits.float(), dim=-1)

    def cpu(self) -> "Explanation":
        moved = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in vars(self).items()}
        return Explanation(**moved)
