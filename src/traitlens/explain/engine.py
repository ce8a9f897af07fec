"""The CAM engine: one forward, at most two small backwards to the target layer, maps for every α.

The autograd graph starts at the target layer (:mod:`traitlens.explain.split`: timm ViTs re-enter their
block sequence from an inference-mode prefix; any other model gets a hook that swaps the target output for
a leaf), the parameters stop requiring grad for the call, so the backward never reaches a parameter.
The Finer score is linear in the ``k + 1`` logits it involves, with coefficients from
:func:`~traitlens.explain.targets.finer_coefficients`, so one backward of the combined score gives a map and
two (the target's and the references') give an α sweep of any length. Everything stays a batched tensor on
the model's device from hook to upsampled map.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.adapter import explain_with_package
from traitlens.explain.cams import GRADIENT_METHODS, LINEAR_IN_GRADIENT, canonical_method
# LayerSpec and resolve_layer: re-exported, callers import them from here.
from traitlens.explain.explanation import Explanation
from traitlens.explain.layers import LayerSpec, model_layout, resolve_layer  # noqa: F401
from traitlens.explain.legrad import layer_logits, legrad_blocks, vit_for_legrad
from traitlens.explain.legrad import relevance as legrad_relevance
from traitlens.explain.scorecam import scorecam
from traitlens.explain.split import capture_activation, record_from_layer
from traitlens.explain.targets import alpha_list, finer_coefficients, finer_target, model_references, resolve_classes

METHODS = tuple(GRADIENT_METHODS) + ("scorecam", "legrad")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and parameters that do not require grad for the duration of the block (so no backward
    reaches a parameter and nothing before the target layer is recorded); both restored on exit, whatever
    happens inside."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


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


def score_gradients(logits: torch.Tensor, leaf: torch.Tensor, index: torch.Tensor, unit: torch.Tensor,
                    alphas: Sequence[float]) -> Tuple[torch.Tensor, List[float]]:
    """``∂T_α/∂leaf = basis[0] + α·basis[1]`` for every α, from at most two backward passes.

    index: B×J, the target then the references; unit: B×J, :func:`finer_coefficients` at α = 1 (so the
    coefficients at α are ``[1, α·unit[1:]]``). Since ``T_α`` is ``z_n + α·Σ_i unit_i z_{r_i}`` to first
    order, its gradient is ``g_n + α·g_r``: a single map needs one backward (of the combined score, returned
    as a basis of one with weights ``[0]``), a sweep two (``g_n`` and ``g_r``) whatever the number of α values
    and references. ``g_n`` is a plain backward of the target logit, so α = 0 is bit-identical to the base
    CAM (``finer=False``). Returns (basis K×B×(leaf shape[1:]), K ≤ 2; the weight of ``basis[1]`` per α).
    """
    b, j = index.shape
    contrast = j > 1 and any(a != 0 for a in alphas)
    target_only = torch.zeros_like(logits).scatter_(1, index[:, :1], 1.0)
    if not contrast:
        return torch.autograd.grad(logits, leaf, target_only)[0][None], [0.0] * len(alphas)
    refs = torch.zeros_like(logits).scatter_add_(1, index[:, 1:], unit[:, 1:].to(logits.dtype))
    if len(alphas) == 1:
        return torch.autograd.grad(logits, leaf, target_only + alphas[0] * refs)[0][None], [0.0]
    g_n = torch.autograd.grad(logits, leaf, target_only, retain_graph=True)[0]
    g_r = torch.autograd.grad(logits, leaf, refs)[0]
    return torch.stack([g_n, g_r]), list(alphas)


def combine(basis: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """``basis[0] + w·basis[1]`` for each w (A×...; a basis of one repeats ``basis[0]``). w = 0 returns
    ``basis[0]`` bit for bit."""
    if basis.shape[0] == 1:
        return basis[0][None].expand(len(weights), *basis.shape[1:])
    return torch.stack([basis[0] + w * basis[1] for w in weights])


def explain(model: nn.Module, images: torch.Tensor, method: Union[str, type] = "gradcam", finer: bool = True,
            alpha: Union[float, Sequence[float]] = 1.0, target=None, references="logit-distance",
            target_layer=None, *, k: int = 3, weights: str = "softmax", detach_weights: bool = False,
            class_names: Optional[Sequence[str]] = None, traits=None, score_batch_size: int = 64,
            score_channels: Optional[int] = None, reentry: bool = True) -> Explanation:
    """Explain ``model``'s decision on ``images`` (B×3×H×W, normalised) with a CAM, by default Finer-CAM.

    method: ``gradcam``, ``hirescam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``scorecam``, ``legrad``
    (timm ViTs; :mod:`traitlens.explain.legrad`, target_layer: the blocks it averages over, default all),
    or any ``pytorch_grad_cam`` CAM class (through :mod:`traitlens.explain.adapter`). finer: explain the
    difference to the reference classes (False: the target logit alone). alpha: comparison strength
    ≥ 0, or a list (maps A×B×H×W, one forward and backward for all). target: None (predicted class),
    a class id or name, or one per image. references: see
    :func:`~traitlens.explain.targets.select_references`; k reference classes (default 3). weights:
    ``softmax`` over the reference logits or ``uniform``; detach_weights: do not differentiate
    through them. traits: a TraitTable for ``references="taxonomy"``. score_batch_size and
    score_channels (keep only the top-variance channels) tune Score-CAM. reentry: False forces the
    single hooked forward instead of the ViT re-entry (:mod:`traitlens.explain.split`; the maps are the
    same, the re-entry is faster).

    ``extras["plan"]`` says how the forward ran (``vit-reentry-cls``, ``vit-reentry``, ``hook``, or
    ``inference`` for Score-CAM, whose ``extras["masked_forwards"]`` counts its masked forward batches).
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
    legrad = method == "legrad"
    spec = resolve_layer(model, None if legrad else target_layer)
    device = _device(model)
    images = images.to(device)
    height, width = images.shape[-2:]
    score_based = method == "scorecam"

    with frozen(model):
        if legrad:
            blocks = legrad_blocks(vit_for_legrad(model), target_layer)
            layer_scores, logits, leaves = layer_logits(model, images, blocks)
            plan, act = "legrad", None
            spec = LayerSpec(spec.module, spec.to_map, ",".join(f"blocks.{i}" for i in blocks))
        elif score_based:
            logits, act = capture_activation(model, spec.module, images, spec.name)
            plan = "inference"
        else:
            rec = record_from_layer(model, spec.module, images, spec.name, reentry=reentry)
            logits, act, plan = rec.logits, rec.leaf, rec.plan
        if logits.dim() != 2:
            raise UserError(f"the model must return B×K logits, got shape {tuple(logits.shape)}")
        z = logits.detach()
        num_classes = logits.shape[1]
        tgt = (z.argmax(1) if target is None
               else resolve_classes(target, num_classes, images.shape[0], class_names, device))
        if finer:
            refs = model_references(model, z, tgt, references, k, class_names, traits)
        else:
            refs = torch.empty(images.shape[0], 0, dtype=torch.long, device=device)
        scores = torch.stack([finer_target(z, tgt, refs, a, weights) for a in alphas])

        index = torch.cat([tgt[:, None], refs.clamp(min=0)], dim=1)  # B×J: the target, then the references
        unit = finer_coefficients(logits, tgt, refs, [1.0], weights, detach_weights)[0]  # B×J, at α = 1
        if legrad:
            lay = model_layout(model)
            raw = legrad_relevance(layer_scores, leaves, index, unit, alphas, lay.num_prefix_tokens,
                                   lay.grid(height, width))  # A×B×gh×gw
            extras = {"plan": plan}
        elif score_based:
            acts = spec.to_map(act.detach(), height, width)  # B×C×h×w
            raw, forwards = scorecam(model, images, acts, tgt, refs, alphas, weights=weights,
                                     batch_size=score_batch_size, top_channels=score_channels)
            extras = {"plan": plan, "masked_forwards": forwards}
        else:
            acts = spec.to_map(act.detach(), height, width)  # B×C×h×w
            basis, mix = score_gradients(logits, act, index, unit, alphas)  # K×B×..., K ≤ 2
            kk = basis.shape[0]
            basis = spec.to_map(basis.flatten(0, 1), height, width).unflatten(0, (kk, -1))  # K×B×C×h×w
            if method in LINEAR_IN_GRADIENT:  # the map of g_n + α g_r is map(g_n) + α map(g_r): 2 maps, not A
                raw = combine(GRADIENT_METHODS[method](acts, basis), mix)  # A×B×h×w
            else:
                raw = GRADIENT_METHODS[method](acts, combine(basis, mix))  # A×B×h×w
            extras = {"plan": plan}
        raw = raw.clamp(min=0).detach()

    maps = upsample(raw, (height, width))
    if not sweep:
        maps, raw, scores = maps[0], raw[0], scores[0]
    return Explanation(maps=maps, raw_maps=raw, logits=z, target=tgt, references=refs,
                       alpha=alphas if sweep else alphas[0], scores=scores, method=method, finer=finer,
                       layer=spec.name, extras=extras)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
