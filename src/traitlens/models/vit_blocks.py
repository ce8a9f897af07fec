"""A timm ViT block run piece by piece: queries from some tokens, keys and values from all of them.

Prompt-CAM needs three things timm's ``Block.forward`` does not give: (1) the outputs of only some
tokens (in Deep mode the prompt outputs of layers 1..L-1 are thrown away, and in the last layer only
the prompt outputs are used, so computing the others is wasted work), (2) the post-softmax
attention of chosen rows, per head, and (3) "blurred" rows whose pre-softmax logits are set to 0.
These functions reuse the block's own modules (``norm1``, ``attn.qkv``, ``q_norm``/``k_norm``,
``proj``, ``ls1``, ``mlp``, ...), so any timm ``VisionTransformer`` with the standard pre-norm
``Block`` works (DINO, DINOv2 with or without registers, CLIP towers, the tiny embedded ViT).

Shapes: B batch, Q query tokens, T key tokens, H heads, d head width, D model width.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "proj", "num_heads", "head_dim")


def check_vit(backbone: nn.Module) -> None:
    """Raise :class:`UserError` unless ``backbone`` is a timm VisionTransformer with standard blocks."""
    needed = ("patch_embed", "_pos_embed", "blocks", "norm", "num_prefix_tokens")
    missing = [n for n in needed if not hasattr(backbone, n)]
    if missing:
        raise UserError(f"{type(backbone).__name__} is not a timm VisionTransformer (no {', '.join(missing)}); "
                        "Prompt-CAM needs a ViT backbone such as tiny-vit, dino-vitb16 or dinov2-vitb14")
    for i, blk in enumerate(backbone.blocks):
        bad = [n for n in _BLOCK_PARTS if not hasattr(blk, n)]
        bad += [f"attn.{n}" for n in _ATTN_PARTS if not hasattr(getattr(blk, "attn", None), n)]
        if bad:
            raise UserError(f"block {i} of {type(backbone).__name__} ({type(blk).__name__}) is not a standard "
                            f"pre-norm ViT block (no {', '.join(bad)})")
        if getattr(blk.attn, "qkv", None) is None or not isinstance(blk.attn.qkv, nn.Linear):
            raise UserError(f"block {i}: attention without a fused qkv projection is not supported")


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×T×(H·d) → B×H×T×d."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, -1).transpose(1, 2)


def project_qkv(blk: nn.Module, h_query: torch.Tensor, h_all: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries of ``h_query`` (B×Q×D) and keys/values of ``h_all`` (B×T×D), normalised inputs.

    Returns q B×H×Q×d, k and v B×H×T×d, after the block's q_norm / k_norm. Only the rows asked for
    are projected: the qkv weight is split instead of projecting every token three times.
    """
    attn = blk.attn
    width = attn.num_heads * attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h_query, w[:width], None if b is None else b[:width])
    kv = F.linear(h_all, w[width:], None if b is None else b[width:])
    k, v = kv.split(width, dim=-1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    return attn.q_norm(q), attn.k_norm(k), v


def attention_probs(blk: nn.Module, q: torch.Tensor, k: torch.Tensor,
                    blur: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Post-softmax attention B×H×Q×T; rows where ``blur`` (B×H×Q bool) is True get logits 0 (uniform)."""
    logits = (q * blk.attn.scale) @ k.transpose(-2, -1)
    if blur is not None:
        logits = logits.masked_fill(blur.unsqueeze(-1), 0.0)
    return logits.softmax(dim=-1)


def finish_block(blk: nn.Module, x_query: torch.Tensor, h_query: torch.Tensor,
                 heads_out: torch.Tensor) -> torch.Tensor:
    """The block's output for the query tokens, given the per-head attention outputs.

    ``x_query`` B×Q×D (block input), ``h_query`` its norm1, ``heads_out`` B×H×Q×d.
    The leading dimensions of ``heads_out`` and ``x_query`` may be any batch shape (…×H×Q×d).
    """
    attn = blk.attn
    out = heads_out.transpose(-3, -2).flatten(-2)  # …×Q×(H·d)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(h_query).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    x = x_query + blk.drop_path1(blk.ls1(out))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def _project_all(blk: nn.Module, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B×H×T×d, after q_norm / k_norm) of every token of ``h`` in one fused qkv projection."""
    attn = blk.attn
    b, t, _ = h.shape
    q, k, v = attn.qkv(h).view(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def run_block(blk: nn.Module, tokens: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    """Block output for the tokens in ``rows`` (default: all) attending to all ``tokens`` B×T×D (fused attention).

    ``run_block(blk, x)`` equals ``blk(x)``; ``run_block(blk, x, slice(C, None))`` is its output for the
    tokens after the first C, without computing the first C outputs. The sequence is normalised once; when
    the rows are most of the sequence one fused qkv projection serves both (fewer, larger kernels), else
    only the rows' queries are projected (the last block's C prompts among many more patches).
    """
    h = blk.norm1(tokens)
    x_rows, h_rows = tokens[:, rows], h[:, rows]
    if 2 * h_rows.shape[1] >= h.shape[1]:
        q, k, v = _project_all(blk, h)
        q = q[:, :, rows]
    else:
        q, k, v = project_qkv(blk, h_rows, h)
    o = F.scaled_dot_product_attention(q, k, v, scale=blk.attn.scale)
    return finish_block(blk, x_rows, h_rows, o)


def run_block_explicit(blk: nn.Module, tokens: torch.Tensor, queries: torch.Tensor,
                       blur: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`run_block` with the attention written out: (output B×Q×D, post-softmax probs B×H×Q×T)."""
    h = blk.norm1(tokens)
    hq = blk.norm1(queries)
    q, k, v = project_qkv(blk, hq, h)
    probs = attention_probs(blk, q, k, blur)
    return finish_block(blk, queries, hq, probs @ v), probs
