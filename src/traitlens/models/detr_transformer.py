"""DETR's encoder-decoder transformer (post-norm), with per-head attention maps on request.

Parameter names follow DETR's ``models/transformer.py`` (``encoder.layers.N.self_attn.in_proj_weight``,
``decoder.layers.N.multihead_attn.out_proj.weight``, ``linear1``, ``norm3``, ``decoder.norm``), so a
DETR checkpoint loads into it as it is. Tensors are batch-first: B×L×d.

INTR's decoder differs from DETR's in one place: the memory keys carry no positional encoding
(``pos=None`` in the decoder), which :class:`DecoderLayer` follows.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, fused unless maps are asked for."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """B×Lq×d, B×Lk×d, B×Lk×d → q B×H×Lq×e, k and v B×H×Lk×e."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads(x):
            return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        return heads(F.linear(query, w_q, b_q)), heads(F.linear(key, w_k, b_k)), heads(F.linear(value, w_v, b_v))

    def merge(self, heads_out: torch.Tensor) -> torch.Tensor:
        """…×H×Lq×e → …×Lq×d through the output projection."""
        return self.out_proj(heads_out.transpose(-3, -2).flatten(-2))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns (output B×Lq×d, per-head post-softmax weights B×H×Lq×Lk or None)."""
        q, k, v = self.project(query, key, value)
        p = self.dropout if self.training else 0.0
        if not need_weights:
            return self.merge(F.scaled_dot_product_attention(q, k, v, dropout_p=p)), None
        weights = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.merge(F.dropout(weights, p, self.training) @ v), weights


class EncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + attn(x+pos, x+pos, x)); x = norm2(x + FFN(x))."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer with the class queries as ``query_pos`` and position-free memory keys."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.multihead_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def self_attend(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """The queries talk to each other: norm1(tgt + self_attn(tgt+qpos, tgt+qpos, tgt))."""
        qk = tgt + query_pos
        return self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt)[0]))

    def after_cross(self, tgt: torch.Tensor, cross_out: torch.Tensor) -> torch.Tensor:
        """norm2 of the cross-attention residual, then the FFN sub-layer and norm3."""
        tgt = self.norm2(tgt + self.dropout(cross_out))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        tgt = self.self_attend(tgt, query_pos)
        # INTR: the class queries look at the image; keys are the memory itself, no positional encoding
        cross, weights = self.multihead_attn(tgt + query_pos, memory, memory, need_weights)
        return self.after_cross(tgt, cross), weights


class Transformer(nn.Module):
    """Encoder (``num_encoder_layers``) over the image tokens, decoder (``num_decoder_layers``) for the queries."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_encoder_layers))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_decoder_layers))
        self.decoder.norm = nn.LayerNorm(d_model)
        for p in self.parameters():  # DETR's init
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Image tokens B×HW×d (+ positions) → memory B×HW×d."""
        for layer in self.encoder.layers:
            src = layer(src, pos)
        return src

    def decode(self, memory: torch.Tensor, query_pos: torch.Tensor, map_layers: Sequence[int] = (),
               stop_before: Optional[int] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Class queries B×C×d (``tgt`` starts at zero) → decoder output B×C×d after the final norm.

        ``map_layers``: decoder layer indices whose cross-attention weights (B×H×C×HW) are returned.
        ``stop_before=i`` returns the (un-normed) input of layer i instead, for head blurring.
        """
        tgt = torch.zeros_like(query_pos)
        maps = []
        n = len(self.decoder.layers)
        wanted = {i % n for i in map_layers}
        for i, layer in enumerate(self.decoder.layers):
            if stop_before is not None and i == stop_before % n:
                return tgt, maps
            tgt, w = layer(tgt, memory, query_pos, need_weights=i in wanted)
            if w is not None:
                maps.append(w)
        return self.decoder.norm(tgt), maps
