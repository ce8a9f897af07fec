"""LeGrad (Bousselham et al., 2024, arXiv:2404.03214) for timm ViTs, with Finer (contrastive) targets.

What it computes. Every block ``l`` of a ViT forms tokens ``X^l`` (B×N×D); passing them through the model's
own final norm and head gives an intermediate prediction ``s^l = head(norm(X^l))`` (B×K, for the last
block the model's logits). LeGrad asks how sensitive the explained score of that prediction is to the
attention that formed the tokens: the gradient ``∂T(s^l) / ∂A^l`` with respect to the block's post-softmax
attention probabilities ``A^l`` (B×H×N×N). Its positive part, averaged over heads and query tokens, is a
relevance per key token (B×N); dropping the prefix tokens and reshaping gives a patch map, and the map is
the mean over the chosen blocks (all of them by default), min-max normalised like every other CAM here.
Attention values are not multiplied in (the paper's and torchcam's definition).

The explained score ``T`` is the class logit or the Finer score ``z_n − α Σ w_i z_{r_i}`` applied to every
``s^l``, with the target and references chosen once from the model's logits; ``T`` is linear in the logits
given its coefficients (:func:`~traitlens.explain.targets.finer_coefficients`), so, as for the CAMs, a map
costs one backward and an α sweep two. Each block reads a detached copy of the previous block's tokens:
``s^l`` depends on ``A^l`` only through block ``l``, so the gradients of all layers come from one backward
of ``Σ_l T(s^l)`` and nothing before the first chosen block is recorded.

Attention probabilities are read from timm's ``Attention`` (its unfused path, the ``attn_drop`` input) or
from an ``nn.MultiheadAttention`` (asked for per-head weights; the output is rebuilt from them, as torchcam
does), so the same model can be explained by both libraries (tests/explain/test_legrad.py).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError


def _attention_of(block: nn.Module) -> nn.Module:
    from timm.layers.attention import Attention
    mha = getattr(block, "self_attention", None)
    if isinstance(mha, nn.MultiheadAttention):
        return mha
    attn = getattr(block, "attn", None)
    if isinstance(attn, (Attention, nn.MultiheadAttention)):
        return attn
    raise UserError(f"LeGrad needs blocks whose attention is timm's Attention or nn.MultiheadAttention; "
                    f"{type(block).__name__} has {type(attn).__name__}")


@contextlib.contextmanager
def attention_leaves(block: nn.Module, store: List[torch.Tensor]) -> Iterator[None]:
    """While inside, each forward of ``block`` appends its attention probabilities (B×H×N×N, a leaf that
    requires grad and that the block's output is computed from) to ``store``."""
    attn = _attention_of(block)
    handles = []
    if isinstance(attn, nn.MultiheadAttention):
        if not attn.batch_first or attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn:
            raise UserError("LeGrad supports batch-first nn.MultiheadAttention with a shared in-projection only")

        def ask_weights(module, args, kwargs):
            kwargs = dict(kwargs, need_weights=True, average_attn_weights=False)
            return args[:3], kwargs

        def rebuild(module, args, kwargs, output):
            probs = output[1].detach().requires_grad_(True)
            store.append(probs)
            value = args[2] if len(args) > 2 else kwargs["value"]
            b, n, d = value.shape
            heads = module.num_heads
            bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * d:]
            v = F.linear(value, module.in_proj_weight[2 * d:], bias).reshape(b, n, heads, d // heads).transpose(1, 2)
            out = (probs @ v).transpose(1, 2).reshape(b, probs.shape[-2], d)
            return module.out_proj(out), None

        handles.append(attn.register_forward_pre_hook(ask_weights, with_kwargs=True))
        handles.append(attn.register_forward_hook(rebuild, with_kwargs=True))
        fused = None
    else:
        def swap(module, inputs, output):
            leaf = output.detach().requires_grad_(True)
            store.append(leaf)
            return leaf.clone()

        handles.append(attn.attn_drop.register_forward_hook(swap))
        fused = attn.fused_attn
        attn.fused_attn = False  # the fused kernel never materialises the probabilities
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if fused is not None:
            attn.fused_attn = fused


def vit_for_legrad(model: nn.Module) -> nn.Module:
    """``model`` itself when it is a timm VisionTransformer with its own forward (LeGrad runs its blocks one by
    one and reads its norm and head); a clear error otherwise."""
    from timm.models.vision_transformer import VisionTransformer
    if not isinstance(model, VisionTransformer) or type(model).forward is not VisionTransformer.forward \
            or type(model).forward_features is not VisionTransformer.forward_features:
        raise UserError(f"LeGrad explains timm VisionTransformer models; {type(model).__name__} is not one "
                        "(use a CAM method such as gradcam)")
    return model


def legrad_blocks(model: nn.Module, layers: Optional[Sequence] = None) -> List[int]:
    """The indices of the blocks LeGrad averages over: all (None), or block indices / ``blocks.i`` paths."""
    n = len(model.blocks)
    if layers is None:
        return list(range(n))
    if isinstance(layers, (str, int)):
        layers = [layers]
    out = []
    for item in layers:
        if isinstance(item, str):
            item = item.split("blocks.")[-1].split(".")[0]
        try:
            i = int(item)
        except ValueError:
            raise UserError(f"LeGrad layers are block indices or 'blocks.<i>' paths, got {item!r}") from None
        if not -n <= i < n:
            raise UserError(f"LeGrad block {i} out of range for {n} blocks")
        out.append(i % n)
    return sorted(set(out))


def layer_logits(model: nn.Module, images: torch.Tensor, blocks: Sequence[int]):
    """Run ``model`` (a timm VisionTransformer) for LeGrad: the prefix up to the first chosen block under
    inference mode, then block by block, each on a detached copy of the previous tokens.

    Returns (s: L×B×K intermediate predictions of the chosen blocks (the last entry, when the last block is
    chosen, is the model's logits), the final logits B×K, attention leaves: L tensors B×H×N×N)."""
    from traitlens.explain.split import run_until

    blocks_all = list(model.blocks)
    x = run_until(model, images, blocks_all[blocks[0]])
    chosen = set(blocks)
    store: List[torch.Tensor] = []
    scores = []
    with torch.enable_grad():
        for i in range(blocks[0], len(blocks_all)):
            if i in chosen:
                with attention_leaves(blocks_all[i], store):
                    x = blocks_all[i](x.detach())
                scores.append(model.forward_head(model.norm(x)))
            else:
                with torch.no_grad():
                    x = blocks_all[i](x)
        logits = scores[-1] if blocks[-1] == len(blocks_all) - 1 else model.forward_head(model.norm(x))
    if len(store) != len(blocks):
        raise UserError("LeGrad: a chosen block did not compute its attention once per forward")
    return torch.stack(scores), logits, store


def relevance(scores: torch.Tensor, leaves: Sequence[torch.Tensor], index: torch.Tensor, unit: torch.Tensor,
              alphas: Sequence[float], prefix: int, grid) -> torch.Tensor:
    """LeGrad maps A×B×gh×gw (before normalisation) from the intermediate predictions (L×B×K) and the
    attention leaves (L tensors B×H×N×N); index, unit: B×J target-then-references and their coefficients
    at α = 1, as for :func:`traitlens.explain.engine.score_gradients`.

    ``∂T_α/∂A^l = g_n^l + α g_r^l``: one backward for a single α, two for a sweep; the ReLU comes after the
    combination (LeGrad is not linear in the gradient), one layer at a time to bound memory.
    """
    b, j = index.shape
    target_only = torch.zeros_like(scores[0]).scatter_(1, index[:, :1], 1.0)
    contrast = j > 1 and any(a != 0 for a in alphas)
    refs = torch.zeros_like(scores[0]).scatter_add_(1, index[:, 1:], unit[:, 1:].to(scores.dtype))

    def grads(cot, retain):
        return torch.autograd.grad(scores, list(leaves), cot[None].expand_as(scores), retain_graph=retain)

    def per_key(g):  # B×H×N×N → B×(N − prefix): positive part, mean over heads and queries
        return g.clamp(min=0).mean(dim=(1, 2))[:, prefix:]

    if not contrast or len(alphas) == 1:
        cot = target_only + alphas[0] * refs if contrast else target_only
        rel = torch.stack([per_key(g) for g in grads(cot, False)]).mean(0)
        rel = rel[None].expand(len(alphas), *rel.shape)
    else:
        g_n, g_r = grads(target_only, True), grads(refs, False)
        rel = torch.stack([torch.stack([per_key(gn + a * gr) for gn, gr in zip(g_n, g_r)]).mean(0)
                           for a in alphas])
    return rel.reshape(len(alphas), b, *grid)
