"""How good an explanation is: faithfulness (what masking the map does to the model) and localisation
(where the map puts its energy, against masks, part maps and the diagnostic parts of ``traits.json``).

Every function takes batches (maps B×H×W in [0, 1], images B×3×H×W normalised) on any device and
returns one value per image (B), so a caller can average, bootstrap or keep them per image.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError

BASELINES = ("zero", "blur")


def gaussian_blur(images: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of B×C×H×W images (reflect padding), the RISE insertion start."""
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, (min(images.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_images(images: torch.Tensor, baseline: str = "zero", sigma: float = 5.0) -> torch.Tensor:
    """What a removed pixel becomes: zero in normalised space (the dataset mean) or the blurred image."""
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images, sigma)
    raise UserError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")


def top_fraction_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """B×H×W bool: each map's top ``fraction`` of pixels (exactly ``round(fraction·H·W)`` of them)."""
    if not 0 <= fraction <= 1:
        raise UserError(f"fraction must be in [0, 1], got {fraction}")
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    n = int(round(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n:
        mask.scatter_(1, flat.topk(n, dim=1).indices, True)
    return mask.view_as(maps)


@torch.no_grad()
def _probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images).float(), dim=-1)


@torch.no_grad()
def confidence_drop(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                    other: Optional[torch.Tensor] = None, k: float = 0.05, baseline: str = "zero",
                    probs: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Mask each image's top ``k`` of map pixels and re-score it (the Finer-CAM paper's headline metric).

    Returns ``relative`` = ``(p_c − p_c*) / p_c`` (B) and, when ``other`` (B, e.g. the most similar
    class) is given, ``contrastive`` = ``(p_c − p_c*) − (p_d − p_d*)`` and ``pair`` = ``(q − q*) / q`` with
    ``q = p_c / (p_c + p_d)``: the relative drop of the target's confidence against the class it is told
    apart from (what a contrastive map should remove, whatever happens to the other classes). ``probs``:
    the unmasked softmax (B×K), if already known.
    """
    was_training = model.training
    model.eval()
    try:
        p = _probs(model, images) if probs is None else probs
        mask = top_fraction_mask(maps.to(images.device), k)[:, None]
        masked = torch.where(mask, baseline_images(images, baseline), images)
        p_star = _probs(model, masked)
    finally:
        model.train(was_training)
    rows = torch.arange(images.shape[0], device=images.device)
    pc, pc_star = p[rows, target], p_star[rows, target]
    out = {"relative": (pc - pc_star) / pc.clamp(min=1e-12)}
    if other is not None:
        pd, pd_star = p[rows, other], p_star[rows, other]
        out["contrastive"] = (pc - pc_star) - (pd - pd_star)
        q, q_star = pc / (pc + pd).clamp(min=1e-12), pc_star / (pc_star + pd_star).clamp(min=1e-12)
        out["pair"] = (q - q_star) / q.clamp(min=1e-12)
    return out


def relative_confidence_drop(model, images, maps, target, k: float = 0.05, baseline: str = "zero") -> torch.Tensor:
    """``(p_c − p_c*) / p_c`` after masking the top ``k`` of each map: B."""
    return confidence_drop(model, images, maps, target, k=k, baseline=baseline)["relative"]


def contrastive_confidence_drop(model, images, maps, target, other, k: float = 0.05,
                                baseline: str = "zero") -> torch.Tensor:
    """``(p_c − p_c*) − (p_d − p_d*)`` after masking the top ``k`` of each map: B."""
    return confidence_drop(model, images, maps, target, other, k=k, baseline=baseline)["contrastive"]


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                       steps: int = 20, baseline: str = "zero", sigma: float = 5.0) -> Dict[str, torch.Tensor]:
    """Deletion and insertion AUC (RISE protocol): B each.

    Pixels are ranked by the map. Deletion replaces the top ``i/steps`` of them by the baseline and
    tracks ``p_c``; insertion starts from the blurred image and puts the top ``i/steps`` original pixels
    back. The AUC is the trapezoid over the fraction of pixels (0..1), ``steps + 1`` points.
    """
    if steps < 1:
        raise UserError(f"steps must be ≥ 1, got {steps}")
    was_training = model.training
    model.eval()
    b, _, h, w = images.shape
    rows = torch.arange(b, device=images.device)
    order = maps.to(images.device).reshape(b, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    removed = baseline_images(images, baseline, sigma)
    blurred = gaussian_blur(images, sigma)
    dele, ins = [], []
    try:
        for i in range(steps + 1):
            top = rank < int(round(i * h * w / steps))
            both = torch.cat([torch.where(top, removed, images), torch.where(top, images, blurred)])
            p = _probs(model, both)[torch.cat([rows, rows + b]), torch.cat([target, target])]
            dele.append(p[:b])
            ins.append(p[b:])
    finally:
        model.train(was_training)
    x = torch.linspace(0, 1, steps + 1, device=images.device)
    return {"deletion": torch.trapezoid(torch.stack(dele, 1), x, dim=1),
            "insertion": torch.trapezoid(torch.stack(ins, 1), x, dim=1)}


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×4 boxes (x0, y0, x1, y1 in pixels, exclusive end) → B×H×W bool masks."""
    ys = torch.arange(height, device=boxes.device)[None, :, None]
    xs = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """1.0 where the map's maximum falls inside the mask (grown by ``tolerance`` pixels), else 0: B.

    Images whose mask is empty give NaN (nothing to point at).
    """
    masks = masks.to(maps.device).bool()
    if tolerance > 0:
        masks = F.max_pool2d(masks[:, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0
    b = maps.shape[0]
    idx = maps.reshape(b, -1).argmax(1)
    hit = masks.reshape(b, -1).gather(1, idx[:, None])[:, 0].float()
    return torch.where(masks.reshape(b, -1).any(1), hit, torch.full_like(hit, float("nan")))


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Σ map·mask / Σ map`` per image: B (NaN for an empty mask or an all-zero map)."""
    masks = masks.to(maps.device).to(maps.dtype)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    ok = (masks.flatten(1).sum(1) > 0) & (total > 0)
    return torch.where(ok, inside / total.clamp(min=1e-12), torch.full_like(total, float("nan")))


def diagnostic_table(traits, class_names=None) -> torch.Tensor:
    """K×K×P bool: ``[a, b, p]`` is True when species a and b differ in part p (from ``traits.json``).

    ``class_names`` maps the model's class order to the table's species (default: the table's order).
    """
    names = list(class_names) if class_names is not None else traits.class_names
    ids = [traits.index(n) for n in names]
    k, p = len(ids), len(traits.parts)
    table = torch.zeros(k, k, p, dtype=torch.bool)
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            parts = traits.diagnostic_parts(a, b)
            if parts:
                table[i, j, torch.as_tensor(parts, dtype=torch.long)] = True
    return table


def diagnostic_masks(part_maps: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
                     table: torch.Tensor) -> torch.Tensor:
    """B×H×W part-id maps → B×H×W bool: the pixels of the parts in which target and reference differ."""
    table = table.to(part_maps.device)
    parts = table[target, reference.clamp(min=0)] & (reference >= 0)[:, None]  # B×P
    ids = part_maps.long().clamp(0, parts.shape[1] - 1)
    return parts.gather(1, ids.flatten(1)).view_as(part_maps)


def diagnostic_trait_energy(maps: torch.Tensor, part_maps: torch.Tensor, target: torch.Tensor,
                            reference: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Energy of each map inside the parts in which its target species differs from its reference: B.

    ``table`` from :func:`diagnostic_table`; NaN where the pair shares every part or none of its
    diagnostic parts is visible.
    """
    return energy_in_mask(maps, diagnostic_masks(part_maps, target, reference, table))


def diagnostic_lift(maps: torch.Tensor, part_maps: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
                    table: torch.Tensor) -> torch.Tensor:
    """Diagnostic-trait energy over the diagnostic parts' share of the image: B (1 = no better than a flat
    map, NaN where :func:`diagnostic_trait_energy` is NaN).

    The diagnostic parts cover a few percent of the pixels, so the raw energy share is small for every
    method; the lift says how many times more energy a diagnostic pixel gets than an average pixel.
    """
    diag = diagnostic_masks(part_maps.to(maps.device), target, reference, table)
    share = diag.flatten(1).float().mean(1)
    return energy_in_mask(maps, diag) / share.clamp(min=1e-12)


def diagnostic_vs_shared(maps: torch.Tensor, part_maps: torch.Tensor, target: torch.Tensor, reference: torch.Tensor,
                         table: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Where a map's energy on the specimen goes: the diagnostic parts of the pair vs the parts both share.

    Returns ``fraction`` (B): ``Σ map·diag / Σ map·specimen``, the diagnostic parts' share of the energy on
    the specimen (background energy left out), and ``density_ratio`` (B): the mean map value on a diagnostic
    pixel over the mean on a shared specimen pixel (> 1: the diagnostic parts are brighter, per pixel, than
    the shared parts). Finer-CAM's claim is that it moves energy from the shared to the distinguishing
    parts, i.e. both rise. NaN where the pair has no visible diagnostic or no shared pixel, or the map is
    zero on the specimen.
    """
    part_maps = part_maps.to(maps.device)
    diag = diagnostic_masks(part_maps, target, reference, table).flatten(1)
    shared = (part_maps > 0).flatten(1) & ~diag
    m = maps.flatten(1)
    e_diag = (m * diag).sum(1)
    e_shared = (m * shared).sum(1)
    n_diag, n_shared = diag.sum(1), shared.sum(1)
    nan = torch.full_like(e_diag, float("nan"))
    ok = (n_diag > 0) & (n_shared > 0) & (e_diag + e_shared > 0)
    fraction = torch.where(ok, e_diag / (e_diag + e_shared).clamp(min=1e-12), nan)
    d_diag = e_diag / n_diag.clamp(min=1)
    d_shared = e_shared / n_shared.clamp(min=1)
    ratio = torch.where(ok & (d_shared > 0), d_diag / d_shared.clamp(min=1e-12), nan)
    return {"fraction": fraction, "density_ratio": ratio}
