"""Where the autograd graph starts: what precedes the target layer runs as inference, what follows is recorded.

A CAM needs the gradients of a few logits with respect to the target layer's activation ``A`` only, so
nothing before ``A`` needs a graph. :func:`record_from_layer` returns the logits and ``A`` as a leaf that
requires grad, the graph spanning only what follows ``A``. Two plans:

- **ViT re-entry** (timm ``VisionTransformer``, target ``blocks[i]`` or ``blocks[i].norm1``): the model's
  own ``forward_features`` runs under ``inference_mode`` and is stopped (a pre-hook raises) where block
  ``i`` (or the module after it) begins; the tail re-enters from that tensor: block ``i`` with its
  ``norm1`` output swapped for the leaf, the later blocks, ``norm`` and ``forward_head``. When the head
  reads the class token alone (``global_pool='token'``) and the last block is timm's plain ``Block`` with
  its plain ``Attention``, the last block is computed for the class token's query only: its keys and
  values still see every token, and all that follows is per token, so the logits are the same, while the
  recorded tail and its backward shrink from the block's 12·N·D² multiply-adds to about 2·N·D²
  (the key and value projections).
- **Hook** (any model, the fallback): one forward; a forward hook swaps the target output for a detached
  leaf and the parameters stop requiring grad, so nothing before the leaf is recorded either; the tail is
  the model's own code, whatever it is.

Both give the same logits and gradients up to float rounding (tests/explain/test_split.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError


@dataclass
class Recorded:
    """One forward for a CAM: ``logits`` B×K, recorded from ``leaf`` (the target activation, requires grad)."""

    logits: torch.Tensor
    leaf: torch.Tensor
    plan: str  # "vit-reentry", "vit-reentry-cls" or "hook"


class _Stop(Exception):
    """Raised by a pre-hook to end ``forward_features`` where the tail takes over."""


def swap_for_leaf(output: torch.Tensor, store: list, module_name: str = "") -> torch.Tensor:
    """The forward-hook step shared by both plans: ``output`` → a detached leaf that requires grad (kept in
    ``store``), and a copy of it that the model goes on with, so an in-place op after the layer cannot touch
    the leaf."""
    if not torch.is_tensor(output):
        raise UserError(f"target layer {module_name} returns {type(output).__name__}, not a tensor; "
                        "choose a layer that outputs a feature map or tokens")
    leaf = output.detach().requires_grad_(True)
    store.append(leaf)
    return leaf.clone()


def vit_plan(model: nn.Module, layer: nn.Module) -> Optional[Tuple[int, str]]:
    """``(block index, "norm1" | "output")`` when ``model`` is a timm VisionTransformer explained at
    ``blocks[i].norm1`` or ``blocks[i]`` and its forward is the plain one; None otherwise (use the hook)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if not isinstance(model, VisionTransformer) or type(model).forward is not VisionTransformer.forward \
            or type(model).forward_features is not VisionTransformer.forward_features:
        return None
    for i, blk in enumerate(model.blocks):
        if layer is blk:
            return i, "output"
        if layer is getattr(blk, "norm1", None) and _plain_block(blk):
            return i, "norm1"
    return None


def _plain_block(blk: nn.Module) -> bool:
    from timm.models.vision_transformer import Block
    return type(blk) is Block


def _cls_only_block(model: nn.Module, blk: nn.Module) -> bool:
    """Whether the last block can be computed for the class token's query alone: the head pools the class
    token, and the block is timm's Block with timm's plain Attention (no gate) and a per-token MLP."""
    from timm.layers.attention import Attention
    return (getattr(model, "global_pool", None) == "token" and getattr(model, "attn_pool", None) is None
            and _plain_block(blk) and type(blk.attn) is Attention and getattr(blk.attn, "gate", None) is None
            and type(blk.mlp).__module__.startswith("timm.layers"))


def run_until(model: nn.Module, images: torch.Tensor, stop_at: nn.Module) -> torch.Tensor:
    """``model.forward_features`` under inference mode up to the input of ``stop_at`` (B×N×D), as a normal
    tensor (inference tensors cannot enter a recorded graph)."""
    seen = {}

    def stop(module, args, kwargs):
        if kwargs and any(v is not None and v is not False for v in kwargs.values()):
            seen["kwargs"] = sorted(kwargs)
        seen["x"] = args[0]
        raise _Stop

    handle = stop_at.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.inference_mode():
            model.forward_features(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "x" not in seen or "kwargs" in seen:
        raise _Fallback
    return seen["x"].clone()


class _Fallback(Exception):
    """The re-entry did not find what it expects; the hook plan runs instead."""


def cls_block(blk: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """timm ``Block`` for the class token's query only: x B×N×D (block input), h = norm1(x) B×N×D → B×1×D.

    The same operations as ``Block.forward`` and ``Attention.forward`` (query, key and value projections,
    q/k norms, softmax(q·kᵀ·scale)·v, output norm, projection, layer scales, residuals, MLP), restricted to
    row 0 where the row does not mix with the others.
    """
    attn = blk.attn
    b, n, _ = h.shape
    heads, hd, d = attn.num_heads, attn.head_dim, attn.attn_dim
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], w[:d], None if bias is None else bias[:d])  # B×1×d
    kv = F.linear(h, w[d:], None if bias is None else bias[d:])  # B×N×2d
    q = q.reshape(b, 1, heads, hd).transpose(1, 2)  # B×H×1×hd
    k, v = kv.reshape(b, n, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # B×H×N×hd each
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v)  # B×H×1×hd
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(b, 1, d))))
    y = x[:, :1] + blk.drop_path1(blk.ls1(o))
    return y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))


def _vit_reentry(model: nn.Module, images: torch.Tensor, index: int, kind: str) -> Recorded:
    blocks = list(model.blocks)
    last = len(blocks) - 1
    if kind == "norm1":
        stop_at = blocks[index]
    else:
        stop_at = blocks[index + 1] if index < last else model.norm
    x = run_until(model, images, stop_at)
    cls_last = _cls_only_block(model, blocks[last]) and not (kind == "output" and index == last)
    store: list = []
    with torch.enable_grad():
        if kind == "output":
            leaf = x.requires_grad_(True)
            x = leaf.clone()
            start = index + 1
        else:
            blk = blocks[index]
            if index == last and cls_last:
                store.append(blk.norm1(x).detach().requires_grad_(True))
                x = cls_block(blk, x, store[0].clone())
            else:
                handle = blk.norm1.register_forward_hook(lambda m, i, o: swap_for_leaf(o, store, "norm1"))
                try:
                    x = blk(x)
                finally:
                    handle.remove()
            leaf = store[0]
            start = index + 1
        for j in range(start, last + 1):
            if j == last and cls_last:
                x = cls_block(blocks[j], x, blocks[j].norm1(x))
            else:
                x = blocks[j](x)
        logits = model.forward_head(model.norm(x))
    return Recorded(logits, leaf, "vit-reentry-cls" if cls_last else "vit-reentry")


def _hooked_forward(model: nn.Module, layer: nn.Module, images: torch.Tensor, name: str) -> Recorded:
    store: list = []

    def hook(module, inputs, output):
        return swap_for_leaf(output, store, type(module).__name__)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    if not store:
        raise UserError(f"target layer '{name}' was not called in the model's forward")
    # A layer called more than once: the last call is explained (as a plain forward hook would see it).
    return Recorded(logits, store[-1], "hook")


def record_from_layer(model: nn.Module, layer: nn.Module, images: torch.Tensor, name: str = "",
                      reentry: bool = True) -> Recorded:
    """The logits of ``images`` (B×3×H×W) with a graph from ``layer``'s output (the returned leaf) onward.

    The caller has frozen the parameters and put the model in eval mode (:func:`traitlens.explain.engine.
    frozen`). ``reentry=False`` forces the hook plan.
    """
    plan = vit_plan(model, layer) if reentry else None
    if plan is not None:
        try:
            return _vit_reentry(model, images, *plan)
        except _Fallback:
            pass
    return _hooked_forward(model, layer, images, name)


def capture_activation(model: nn.Module, layer: nn.Module, images: torch.Tensor, name: str = ""
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits B×K, the layer's output) of one forward under inference mode: what Score-CAM starts from."""
    seen: list = []

    def hook(module, inputs, output):
        if not torch.is_tensor(output):
            raise UserError(f"target layer {type(module).__name__} returns {type(output).__name__}, not a "
                            "tensor; choose a layer that outputs a feature map or tokens")
        seen.append(output)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = model(images)
    finally:
        handle.remove()
    if not seen:
        raise UserError(f"target layer '{name}' was not called in the model's forward")
    # Plain tensors from here: callers may modify the logits in place, which inference tensors refuse.
    return logits.clone(), seen[-1]

