"""The CAM engine: one forward, one batched backward to the target layer, maps for every α.

The forward hook replaces the target layer's output by a detached leaf that requires grad, and the
model's parameters stop requiring grad for the call, so the autograd graph starts at the target layer:
nothing before it is recorded and the backward never reaches a parameter. The gradients of the ``k + 1``
logits a Finer target involves are taken in one ``autograd.grad(..., is_grads_batched=True)`` call and
combined with :func:`~traitlens.explain.targets.finer_coefficients`, so an α sweep or several reference
classes cost one map. Everything stays a batched tensor on the model's device from hook to upsampled map.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.adapter import explain_with_package
from traitlens.explain.cams import GRADIENT_METHODS, canonical_method
# LayerSpec and resolve_layer: re-exported, callers import them from here.
from traitlens.explain.explanation import Explanation
from traitlens.explain.layers import LayerSpec, resolve_layer  # noqa: F401
from traitlens.explain.scorecam import scorecam
from traitlens.explain.targets import alpha_list, finer_coefficients, finer_target, model_references, resolve_classes

METHODS = tuple(GRADIENT_METHODS) + ("scorecam",)


class Capture:
    """What the hook saw during one forward: the target layer's output (a leaf when gradients are needed)."""

    def __init__(self, need_grad: bool):
        self.need_grad = need_grad
        self.enabled = True
        self.activation: Optional[torch.Tensor] = None

    def hook(self, module, inputs, output):
        if not self.enabled:
            return None
        if not torch.is_tensor(output):
            raise UserError(f"target layer {type(module).__name__} returns {type(output).__name__}, not a tensor; "
                            "choose a layer that outputs a feature map or tokens")
        if not self.need_grad:
            self.activation = output.detach()
            return None
        leaf = output.detach().requires_grad_(True)
        self.activation = leaf
        # A copy, so an in-place op after the layer cannot touch the leaf.
        return leaf.clone()


@contextlib.contextmanager
def hooked(model: nn.Module, layer: nn.Module, need_grad: bool = True) -> Iterator[Capture]:
    """Hook ``layer`` for the duration of the block; the model is in eval mode and its parameters do not
    require grad inside it. The hook, the parameters' flags and the training mode are restored on exit,
    whatever happens inside."""
    capture = Capture(need_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    handle = layer.register_forward_hook(capture.hook)
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        yield capture
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
        capture.activation = None


def normalise(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max normalise each map over its last two dimensions to [0, 1] (constant maps → 0)."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    hi = (flat - lo).amax(-1, keepdim=True)
    return ((flat - lo) / (hi + eps)).view_as(maps)


def upsample(raw: torch.Tensor, size) -> torch.Tensor:
    """...×h×w raw maps → ...×H×W, normalised before and after bilinear resizing (as grad-cam does)."""
    lead = raw.shape[:-2]
    x = normalise(raw).reshape(-1, 1, *raw.shape[-2:])
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return normalise(x.reshape(*lead, *size))


def logit_gradients(logits: torch.Tensor, leaf: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """∂z_{index[b, j]} / ∂leaf for every j: B×J indices → J×B×(leaf shape[1:]).

    Column 0 (the target) gets its own plain backward, so the base CAM (α = 0) is bit-identical to a
    call with ``finer=False``; the other columns share one ``is_grads_batched`` backward.
    """
    j = index.shape[1]
    onehots = torch.zeros(j, *logits.shape, dtype=logits.dtype, device=logits.device)
    onehots.scatter_(2, index.T[:, :, None], 1.0)
    first = torch.autograd.grad(logits, leaf, onehots[0], retain_graph=j > 1)[0][None]
    if j == 1:
        return first
    if j == 2:
        rest = torch.autograd.grad(logits, leaf, onehots[1])[0][None]
    else:
        try:
            rest = torch.autograd.grad(logits, leaf, onehots[1:], is_grads_batched=True)[0]
        except RuntimeError:
            # Some ops have no batching rule for vmap; one backward per logit is still exact.
            rest = torch.stack([torch.autograd.grad(logits, leaf, onehots[i], retain_graph=i < j - 1)[0]
                                for i in range(1, j)])
    return torch.cat([first, rest])


def explain(model: nn.Module, images: torch.Tensor, method: Union[str, type] = "gradcam", finer: bool = True,
            alpha: Union[float, Sequence[float]] = 1.0, target=None, references="logit-distance",
            target_layer=None, *, k: int = 3, weights: str = "softmax", detach_weights: bool = False,
            class_names: Optional[Sequence[str]] = None, traits=None, score_batch_size: int = 64,
            score_channels: Optional[int] = None) -> Explanation:
    """Explain ``model``'s decision on ``images`` (B×3×H×W, normalised) with a CAM, by default Finer-CAM.

    method: ``gradcam``, ``hirescam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``scorecam``, or any
    ``pytorch_grad_cam`` CAM class (through :mod:`traitlens.explain.adapter`). finer: explain the
    difference to the reference classes (False: the target logit alone). alpha: comparison strength
    ≥ 0, or a list (maps A×B×H×W, one forward and backward for all). target: None (predicted class),
    a class id or name, or one per image. references: see
    :func:`~traitlens.explain.targets.select_references`; k reference classes (default 3). weights:
    ``softmax`` over the reference logits or ``uniform``; detach_weights: do not differentiate
    through them. traits: a TraitTable for ``references="taxonomy"``. score_batch_size and
    score_channels (keep only the top-variance channels) tune Score-CAM.
    """
    from traitlens.explain.inputs import as_batch  # paths, PIL images, arrays, 3×H×W tensors → B×3×H×W

    images = as_batch(model, images)
    if not isinstance(method, str) or method.startswith("pgc:"):
        return explain_with_package(model, images, method, finer=finer, alpha=alpha, target=target,
                                    references=references, target_layer=target_layer, k=k, weights=weights,
                                    detach_weights=detach_weights, class_names=class_names, traits=traits)
    method = canonical_method(method)
    if method not in METHODS:
        raise UserError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    alphas, sweep = alpha_list(alpha)
    spec = resolve_layer(model, target_layer)
    device = _device(model)
    images = images.to(device)
    height, width = images.shape[-2:]
    score_based = method == "scorecam"

    with hooked(model, spec.module, need_grad=not score_based) as cap:
        with torch.enable_grad() if not score_based else torch.no_grad():
            logits = model(images)
        if cap.activation is None:
            raise UserError(f"target layer '{spec.name}' was not called in the model's forward")
        if logits.dim() != 2:
            raise UserError(f"the model must return B×K logits, got shape {tuple(logits.shape)}")
        leaf = cap.activation
        num_classes = logits.shape[1]
        tgt = (logits.detach().argmax(1) if target is None
               else resolve_classes(target, num_classes, images.shape[0], class_names, device))
        if finer:
            refs = model_references(model, logits.detach(), tgt, references, k, class_names, traits)
        else:
            refs = torch.empty(images.shape[0], 0, dtype=torch.long, device=device)
        coeff = finer_coefficients(logits, tgt, refs, alphas, weights, detach_weights)  # A×B×J
        scores = torch.stack([finer_target(logits.detach(), tgt, refs, a, weights) for a in alphas])

        acts = spec.to_map(leaf.detach(), height, width)  # B×C×h×w
        if score_based:
            cap.enabled = False
            raw = scorecam(model, images, acts, tgt, refs, alphas, weights=weights,
                           batch_size=score_batch_size, top_channels=score_channels)
        else:
            index = torch.cat([tgt[:, None], refs.clamp(min=0)], dim=1)  # B×J
            grads = logit_gradients(logits, leaf, index)  # J×B×...
            j = grads.shape[0]
            grads = spec.to_map(grads.flatten(0, 1), height, width).unflatten(0, (j, -1))  # J×B×C×h×w
            coeff = coeff.to(grads.dtype)
            # The target's term alone first, so α = 0 (all other coefficients 0) is bit-identical to the base CAM.
            combined = coeff[:, :, 0, None, None, None] * grads[0]
            if j > 1:
                combined = combined + torch.einsum("abj,jbchw->abchw", coeff[:, :, 1:], grads[1:])
            raw = GRADIENT_METHODS[method](acts, combined)  # A×B×h×w
        raw = raw.clamp(min=0).detach()

    maps = upsample(raw, (height, width))
    if not sweep:
        maps, raw, scores = maps[0], raw[0], scores[0]
    return Explanation(maps=maps, raw_maps=raw, logits=logits.detach(), target=tgt, references=refs,
                       alpha=alphas if sweep else alphas[0], scores=scores, method=method, finer=finer,
                       layer=spec.name)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
