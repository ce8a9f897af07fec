"""What is explained: the class logit, the Finer-CAM difference, and which classes it is compared with.

Finer-CAM explains ``T = Σ_i w_i · (z_n − α · z_{r_i})`` with ``w = softmax(z_{r_1..r_k})`` (or uniform):
what distinguishes the target class ``n`` from its references ``r_i`` rather than everything that
supports ``z_n``. The public implementations divide by ``Σ p_i + 1e-9`` with ``p = softmax(all logits)``;
for a confident model that sum underflows towards the epsilon and the score collapses, so the
epsilon-free form (``p_i / Σ p_j`` is exactly the softmax over the reference logits) is used here.

Because ``T`` depends on the logits only, ``∂T/∂A = Σ_j c_j · ∂z_j/∂A`` for any activation ``A``: the
engine takes the gradients of the ``k + 1`` logits involved once and combines them with the
coefficients ``c`` from :func:`finer_coefficients`, so an α sweep never re-runs the model.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from traitlens.errors import UserError

REFERENCE_MODES = ("logit-distance", "top-predicted", "weight-cosine", "taxonomy")
WEIGHTINGS = ("softmax", "uniform")


def resolve_classes(spec, num_classes: int, batch: int, class_names: Optional[Sequence[str]] = None,
                    device=None, what: str = "target") -> torch.Tensor:
    """A class spec (int, name, list of B ints/names, or a B tensor) → LongTensor B on ``device``."""
    if isinstance(spec, torch.Tensor):
        ids = spec.to(device=device, dtype=torch.long).reshape(-1)
        if ids.numel() == 1:
            ids = ids.expand(batch).clone()
    elif isinstance(spec, (list, tuple)):
        ids = torch.tensor([class_index(s, num_classes, class_names, what) for s in spec], dtype=torch.long,
                           device=device)
        if ids.numel() == 1:
            ids = ids.expand(batch).clone()
    else:
        ids = torch.full((batch,), class_index(spec, num_classes, class_names, what), dtype=torch.long,
                         device=device)
    if ids.numel() != batch:
        raise UserError(f"{what} has {ids.numel()} entries for a batch of {batch} images")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise UserError(f"{what} class out of range 0..{num_classes - 1}: {ids.tolist()}")
    return ids


def class_index(spec, num_classes: int, class_names: Optional[Sequence[str]] = None, what: str = "class") -> int:
    """One class given as an index or a name (needs ``class_names``) → its index."""
    if isinstance(spec, str):
        if spec.lstrip("-").isdigit():
            spec = int(spec)
        elif class_names is None:
            raise UserError(f"{what} {spec!r} is a name but the model has no class names; give a class index")
        else:
            lookup = {n: i for i, n in enumerate(class_names)}
            lookup.update({n.lower(): i for i, n in enumerate(class_names)})
            if spec not in lookup and spec.lower() not in lookup:
                shown = ", ".join(list(class_names)[:6]) + (", ..." if len(class_names) > 6 else "")
                raise UserError(f"unknown {what} class {spec!r}; known: {shown}")
            return lookup.get(spec, lookup.get(spec.lower()))
    i = int(spec)
    if not 0 <= i < num_classes:
        raise UserError(f"{what} class {i} out of range 0..{num_classes - 1}")
    return i


def select_references(logits: torch.Tensor, anchor: torch.Tensor, mode: Union[str, Sequence, torch.Tensor] =
                      "logit-distance", k: int = 3, classifier_weight: Optional[torch.Tensor] = None,
                      siblings: Optional[Sequence[Sequence[int]]] = None,
                      class_names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """The reference classes each sample's target is compared with.

    logits: B×K, anchor: B (the target class, or the predicted class). Returns LongTensor B×k' with
    ``k' = min(k, K − 1)``; ``-1`` marks an empty slot (only ``taxonomy`` leaves them: a species with
    fewer siblings than ``k``).

    mode: ``"logit-distance"`` (the reference's choice: classes sorted by ``|z_j − z_anchor|``, ranks
    1..k), ``"top-predicted"`` (highest logits other than the anchor), ``"weight-cosine"`` (nearest
    classifier weight vectors, needs ``classifier_weight`` K×D), ``"taxonomy"`` (the anchor's siblings
    in a class tree, ``siblings[c]`` = list of class ids, ranked by logit distance), or explicit
    classes: a list of ids/names shared by every sample, or a B×k tensor.
    """
    b, num_classes = logits.shape
    dev = logits.device
    if not isinstance(mode, str) or mode not in REFERENCE_MODES:
        return _explicit_references(mode, b, num_classes, anchor, class_names, dev)
    k = max(0, min(int(k), num_classes - 1))
    rows = torch.arange(b, device=dev)
    if mode in ("logit-distance", "top-predicted", "taxonomy"):
        z = logits.detach().float()
        score = (z - z[rows, anchor][:, None]).abs() if mode != "top-predicted" else -z
    else:  # weight-cosine: smaller is nearer
        if classifier_weight is None:
            raise UserError("references='weight-cosine' needs a linear classifier head (model.get_classifier())")
        w = torch.nn.functional.normalize(classifier_weight.detach().float().to(dev), dim=1)
        score = -(w[anchor] @ w.T)
    if mode == "taxonomy":
        if siblings is None:
            raise UserError("references='taxonomy' needs a class tree (traits=... with genera)")
        allowed = torch.zeros(b, num_classes, dtype=torch.bool, device=dev)
        table = torch.zeros(num_classes, num_classes, dtype=torch.bool)
        for c, sib in enumerate(siblings):
            if sib:
                table[c, torch.as_tensor(list(sib), dtype=torch.long)] = True
        allowed = table.to(dev)[anchor]
        score = score.masked_fill(~allowed, float("inf"))
    # The anchor itself always sorts first, whatever ties or -0.0 say.
    score = score.scatter(1, anchor[:, None], float("-inf"))
    order = torch.argsort(score, dim=1, stable=True)[:, 1:k + 1]
    if mode == "taxonomy":
        valid = torch.gather(score, 1, order).isfinite()
        order = order.masked_fill(~valid, -1)
    return order


def _explicit_references(spec, batch: int, num_classes: int, anchor: torch.Tensor, class_names, dev) -> torch.Tensor:
    if isinstance(spec, str):
        spec = [s for s in spec.split(",") if s.strip()] if "," in spec else [spec]
    if isinstance(spec, torch.Tensor):
        refs = spec.to(device=dev, dtype=torch.long)
        if refs.dim() == 1:
            refs = refs[None].expand(batch, -1)
    else:
        ids = [class_index(s.strip() if isinstance(s, str) else s, num_classes, class_names, "reference")
               for s in spec]
        refs = torch.tensor(ids, dtype=torch.long, device=dev)[None].expand(batch, -1)
    if refs.shape[0] != batch or refs.dim() != 2 or refs.shape[1] == 0:
        raise UserError(f"references must name at least one class per image; got shape {tuple(refs.shape)}")
    if int(refs.max()) >= num_classes or int(refs.min()) < -1:
        raise UserError(f"reference class out of range 0..{num_classes - 1}")
    return refs.contiguous()


def reference_weights(logits: torch.Tensor, references: torch.Tensor, weights: str = "softmax") -> torch.Tensor:
    """w: B×k, summing to 1 over the valid references of each sample (0 where a row has none)."""
    if weights not in WEIGHTINGS:
        raise UserError(f"unknown reference weighting {weights!r}; choose one of {', '.join(WEIGHTINGS)}")
    valid = references >= 0
    zr = torch.gather(logits, 1, references.clamp(min=0))
    if weights == "uniform":
        w = valid.to(logits.dtype)
        return w / w.sum(1, keepdim=True).clamp(min=1)
    w = torch.softmax(zr.masked_fill(~valid, float("-inf")), dim=1)
    return torch.nan_to_num(w, nan=0.0)  # rows without any valid reference


def finer_target(logits: torch.Tensor, target: torch.Tensor, references: torch.Tensor, alpha: float = 1.0,
                 weights: str = "softmax", detach_weights: bool = False) -> torch.Tensor:
    """The Finer-CAM score ``T = Σ_i w_i (z_n − α z_{r_i})`` for each sample: B×K logits → B.

    Differentiable in ``logits``; a row without valid references gives ``z_n`` (the plain class score).
    """
    w = reference_weights(logits, references, weights)
    if detach_weights:
        w = w.detach()
    zn = torch.gather(logits, 1, target[:, None])[:, 0]
    zr = torch.gather(logits, 1, references.clamp(min=0))
    has_ref = (references >= 0).any(1)
    contrast = (w * zr).sum(1)
    return torch.where(has_ref, zn - alpha * contrast, zn) if torch.is_tensor(alpha) or alpha != 0 else zn


def finer_coefficients(logits: torch.Tensor, target: torch.Tensor, references: torch.Tensor,
                       alphas: Sequence[float], weights: str = "softmax",
                       detach_weights: bool = False) -> torch.Tensor:
    """∂T/∂z for the ``k + 1`` logits ``[z_n, z_{r_1}, ..., z_{r_k}]`` of each sample and each α.

    Returns A×B×(k+1). With ``z̄ = Σ w_m z_{r_m}``: ``∂T/∂z_n = 1`` and
    ``∂T/∂z_{r_i} = −α w_i (1 + z_{r_i} − z̄)`` for softmax weights that are differentiated through
    (the reference's behaviour), ``−α w_i`` when the weights are detached or uniform. (``Σ w = 1`` is
    what makes ``∂T/∂z_n`` exactly 1 — the epsilon-free form.)
    """
    z = logits.detach()
    w = reference_weights(z, references, weights)
    zr = torch.gather(z, 1, references.clamp(min=0))
    if weights == "softmax" and not detach_weights:
        zbar = (w * zr).sum(1, keepdim=True)
        per_ref = w * (1 + zr - zbar)
    else:
        per_ref = w
    per_ref = per_ref.masked_fill(references < 0, 0.0)
    a = torch.as_tensor(list(alphas), dtype=z.dtype, device=z.device)
    ones = torch.ones(a.numel(), z.shape[0], 1, dtype=z.dtype, device=z.device)
    return torch.cat([ones, -a[:, None, None] * per_ref[None]], dim=2)


def alpha_list(alpha) -> Tuple[List[float], bool]:
    """``(alphas, sweep)``: the comparison strengths as floats (each finite and ≥ 0), and whether a list was
    given. Every caller of the explain API (the CLI, the bulk runs, the adapter) goes through here, so a NaN
    or an infinity never reaches a map or a results file."""
    sweep = isinstance(alpha, (list, tuple)) or (torch.is_tensor(alpha) and alpha.dim() > 0)
    try:
        alphas = [float(a) for a in (alpha if sweep else [alpha])]
    except (TypeError, ValueError):
        raise UserError(f"alpha must be a number or a list of numbers, got {alpha!r}") from None
    if any(not math.isfinite(a) for a in alphas):
        raise UserError(f"alpha must be finite, got {alphas}; give numbers ≥ 0 such as 0.5 or 1")
    if not alphas or any(a < 0 for a in alphas):
        raise UserError(f"alpha must be ≥ 0, got {alphas}")
    return alphas, sweep


def classifier_weight(model: nn.Module) -> Optional[torch.Tensor]:
    """The K×D weight of the model's linear classifier head (timm's ``get_classifier``), or None."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.weight
    w = getattr(head, "weight", None)
    return w if torch.is_tensor(w) and w.dim() == 2 else None


def sibling_classes(traits, num_classes: int, class_names) -> Optional[List[List[int]]]:
    """For each of the model's classes, its siblings in ``traits``' class tree as model class ids (None without traits)."""
    if traits is None:
        return None
    names = list(traits.class_names if class_names is None else class_names)
    model_index = {traits.index(n): i for i, n in enumerate(names)}
    out = [[model_index[s] for s in traits.siblings(n) if s in model_index] for n in names]
    if len(out) != num_classes:
        raise UserError(f"the class tree names {len(out)} classes but the model has {num_classes}")
    return out


def model_references(model: nn.Module, logits: torch.Tensor, target: torch.Tensor, mode, k: int = 3,
                     class_names: Optional[Sequence[str]] = None, traits=None) -> torch.Tensor:
    """:func:`select_references` for ``model``'s logits (B×K) and targets (B) → B×k reference class ids.

    Supplies what a mode needs from the model: its head weight for ``weight-cosine``, the sibling lists of
    ``traits`` for ``taxonomy``.
    """
    named = mode if isinstance(mode, str) else None
    return select_references(logits, target, mode, k=k,
                             classifier_weight=classifier_weight(model) if named == "weight-cosine" else None,
                             siblings=sibling_classes(traits, logits.shape[1], class_names)
                             if named == "taxonomy" else None,
                             class_names=class_names)
