"""What a card shows of a representative specimen: its Finer-CAM map against the other species."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from traitlens.atlas.evidence import EvidenceOptions, resolved_settings


def specimen_map(model: torch.nn.Module, image: torch.Tensor, target: int, reference: int,
                 options: EvidenceOptions = EvidenceOptions(), settings: Optional[dict] = None) -> torch.Tensor:
    """Finer-CAM (α = 1) of ``target`` against ``reference`` for one image (3×H×W normalised) → H×W in
    [0, 1] at the image's own size, taken where the atlas takes its evidence."""
    from traitlens.explain import explain

    settings = settings or resolved_settings(model, image.shape[-2:], options)
    x = image[None].to(next(model.parameters()).device)
    size = x.shape[-2:]
    if settings["scale"] != 1.0:
        x = F.interpolate(x, size=[int(round(settings["scale"] * n)) for n in size], mode="bilinear",
                          align_corners=False)
    e = explain(model, x, alpha=1.0, target=torch.tensor([target]), references=torch.tensor([[reference]]),
                target_layer=settings["target_layer"])
    heat = F.interpolate(e.maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return heat[0, 0].cpu()
