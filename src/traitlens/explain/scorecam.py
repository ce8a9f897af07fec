"""Score-CAM: channel weights from re-scoring the input masked by each upsampled activation channel.

As the ``grad-cam`` package defines it: each channel is upsampled (bilinear, corners aligned) to the
input size, min-max normalised, multiplied into the input; the explained score of every masked input
is computed and a softmax over the channels gives the weights. The masked forwards run under
``inference_mode`` in chunks of ``batch_size`` images flattened over (image, channel), never one image at
a time; the score is linear in α given the masked logits, so an α sweep costs one set of forwards. The
cost is ``ceil(B·C' / batch_size)`` forwards of ``batch_size`` images (C' scored channels), returned with
the maps so callers can report it as a multiple of one forward per mask batch.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.explain.targets import finer_target


@torch.inference_mode()
def scorecam(model: nn.Module, images: torch.Tensor, acts: torch.Tensor, target: torch.Tensor,
             references: torch.Tensor, alphas: Sequence[float], weights: str = "softmax", batch_size: int = 64,
             top_channels: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    """images: B×3×H×W, acts: B×C×h×w → (cams A×B×h×w before the ReLU, number of masked forward batches).

    top_channels: score only the channels with the largest activation variance (the rest get weight 0),
    which keeps Score-CAM affordable on wide layers (2048 channels on a ResNet-50).
    """
    b, c = acts.shape[:2]
    height, width = images.shape[-2:]
    if top_channels is not None and top_channels < c:
        keep = acts.flatten(2).var(-1).topk(int(top_channels), dim=1).indices  # B×C'
    else:
        keep = torch.arange(c, device=acts.device).expand(b, c)
    chosen = torch.gather(acts, 1, keep[:, :, None, None].expand(-1, -1, *acts.shape[-2:]))
    cprime = chosen.shape[1]
    scores = torch.empty(len(alphas), b, cprime, device=acts.device, dtype=torch.float32)
    flat = b * cprime
    for start in range(0, flat, batch_size):
        idx = torch.arange(start, min(start + batch_size, flat), device=acts.device)
        bi, ci = idx // cprime, idx % cprime
        up = F.interpolate(chosen[bi, ci][:, None], size=(height, width), mode="bilinear", align_corners=True)
        lo = up.flatten(1).amin(1)[:, None, None, None]
        hi = up.flatten(1).amax(1)[:, None, None, None]
        masked = images[bi] * ((up - lo) / (hi - lo + 1e-8))
        logits = model(masked).float()
        for ai, a in enumerate(alphas):
            scores[ai, bi, ci] = finer_target(logits, target[bi], references[bi], a, weights)
    w = torch.softmax(scores, dim=-1).to(acts.dtype)  # A×B×C'
    # An inference tensor: the caller's first op outside inference mode (the ReLU) makes a plain one.
    return torch.einsum("abc,bchw->abhw", w, chosen), -(-flat // batch_size)
