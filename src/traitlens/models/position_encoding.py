"""DETR's sine positional encoding of a feature map (Carion et al. 2020, "Attention is all you need" in 2-D).

Half of the channels encode the row, half the column: sin/cos of the normalised coordinate (scaled
to 0..2π) at geometrically spaced frequencies. Without padding masks every image of a batch shares
the encoding, so it is computed once per grid size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """B×D×h×w feature map → B×D×h×w encoding (D = 2·num_pos_feats), DETR's ``normalize=True`` variant."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feature_map.shape
        device = feature_map.device
        y = torch.arange(1, h + 1, device=device, dtype=torch.float32)[:, None].expand(h, w)
        x = torch.arange(1, w + 1, device=device, dtype=torch.float32)[None, :].expand(h, w)
        if self.normalize:
            eps = 1e-6
            y = y / (h + eps) * self.scale
            x = x / (w + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x[..., None] / dim_t  # h×w×F
        pos_y = y[..., None] / dim_t
        # interleave sin (even channels) and cos (odd channels), as DETR does
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
        pos = torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)  # D×h×w
        return pos[None].expand(b, -1, -1, -1).to(feature_map.dtype)
