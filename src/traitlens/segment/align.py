"""Registration of a support specimen onto a query specimen (similarity transform).

Specimen collections are photographed in roughly the same pose, up to rotation, scale and position.
Estimating that similarity transform first lets label propagation compare each query location with
the *corresponding* support location (a local window) instead of every location of the support,
which is both more accurate for small traits and much cheaper.

The transform is found by a batched search: rotations over the full circle × scales × (optionally)
mirror images, translation from the centroids of the foreground, scored by the agreement between the
warped support labels and a coarse first-pass prediction on the query and by how well the warped
support's colours match the query's; then a local refinement of angle, scale and translation. Nothing in
the search prefers the support's own orientation, so a query photographed upside down or mirrored is
registered like an upright one (as long as the features it is scored with carry no position: see
:class:`~traitlens.segment.labelprop.LabelPropOptions` ``pose``). A mirror hypothesis must beat the best
unmirrored one by ``mirror_margin``: a bilaterally symmetric specimen looks the same either way, and its
left/right labels then keep their meaning.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _centroid(fg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centroid (x, y) in normalised [-1, 1] coordinates of a soft foreground map H×W, and its mass."""
    h, w = fg.shape
    ys = torch.linspace(-1, 1, h, device=fg.device)
    xs = torch.linspace(-1, 1, w, device=fg.device)
    mass = fg.sum().clamp_min(1e-6)
    return torch.stack([(fg.sum(0) * xs).sum() / mass, (fg.sum(1) * ys).sum() / mass]), mass


def similarity_theta(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, centre: torch.Tensor,
                     flip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """N×2×3 affine matrices for ``grid_sample`` mapping query coordinates to support coordinates.

    A query point ``q`` samples the support at ``centre + R(angle) M (q - shift) / scale``, i.e. the support
    specimen is rotated by ``-angle``, scaled by ``scale`` and centred on ``shift``; ``flip`` (N values ±1,
    default +1) sets ``M = diag(flip, 1)``: -1 mirrors the query's x axis first (a mirror image).
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    f = torch.ones_like(cos) if flip is None else flip.to(cos)
    rot = torch.stack([torch.stack([cos * f, -sin], -1), torch.stack([sin * f, cos], -1)], -2) / scale[:, None, None]
    trans = centre[None, :, None] - rot @ shift[:, :, None] if shift.dim() == 2 else centre[None, :, None] - rot @ shift[None, :, None].expand(len(angle), 2, 1)
    return torch.cat([rot, trans], dim=2)


def warp(maps: torch.Tensor, theta: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Warp ``N×C×h×w`` (or ``C×h×w`` broadcast to N) with N×2×3 ``theta`` to ``N×C×size``; outside = 0."""
    if maps.dim() == 3:
        maps = maps[None].expand(theta.shape[0], *maps.shape)
    grid = F.affine_grid(theta, (theta.shape[0], maps.shape[1], *size), align_corners=False)
    return F.grid_sample(maps, grid, mode=mode, padding_mode="zeros", align_corners=False)


def register(support_soft: torch.Tensor, query_soft: torch.Tensor, angles: int = 72,
             scales: Tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.25), refine: int = 2,
             support_feats: Optional[torch.Tensor] = None, query_feats: Optional[torch.Tensor] = None,
             tau: float = 0.1, shifts: int = 2, candidates: int = 12,
             stage2_half: bool = False, mirror: bool = True, mirror_margin: float = 0.03) -> torch.Tensor:
    """The 2×3 ``theta`` that best maps the support's soft labels onto the query's coarse prediction.

    ``support_soft``, ``query_soft``: ``(K+1)×h×w`` label probabilities on the same grid (channel 0 =
    background). With ``support_feats``/``query_feats`` (``D×h×w`` unit-norm, same grid) a hypothesis
    is also scored photometrically: how well the warped support's foreground matches the query's
    features. Coarse to fine: every rotation × scale (centroids matched) on a half-resolution grid; the
    ``candidates`` best, each with ``shifts`` grid steps of translation around the centroid, at full
    resolution; then a finer grid of angle, scale and shift around the best one (``refine`` rounds).
    ``mirror``: also try every hypothesis mirrored (a negative-determinant ``theta``); a mirrored one wins
    only when it scores ``mirror_margin`` (a fraction) above the best unmirrored one.
    """
    feats = None if support_feats is None else (support_feats, query_feats, tau)
    s_fg, q_fg = 1 - support_soft[0], 1 - query_soft[0]
    s_c, s_mass = _centroid(s_fg)
    q_c, q_mass = _centroid(q_fg)
    size = tuple(query_soft.shape[-2:])
    dev = support_soft.device
    base_scale = float((q_mass / s_mass).sqrt())
    angle = torch.arange(angles, device=dev) * (2 * math.pi / angles)
    scale = torch.tensor(scales, device=dev) * base_scale
    # Stage 1: every rotation × scale (× mirror) with the centroids matched, scored on a half-resolution grid.
    flips = torch.tensor([1.0, -1.0] if mirror else [1.0], device=dev)
    a, s, f = (x.flatten() for x in torch.meshgrid(angle, scale, flips, indexing="ij"))
    t = q_c[None].expand(len(a), 2)
    penalty = 1 - mirror_margin * (f < 0).float()  # a mirror image must be clearly better
    small = tuple(max(4, n // 2) for n in size)
    half = (F.adaptive_avg_pool2d(support_soft[None], small)[0], F.adaptive_avg_pool2d(query_soft[None], small)[0])
    half_feats = None if feats is None else (
        F.normalize(F.adaptive_avg_pool2d(support_feats[None], small)[0], dim=0),
        F.normalize(F.adaptive_avg_pool2d(query_feats[None], small)[0], dim=0), tau)
    coarse = _score(*half, similarity_theta(a, s, t, s_c, f), small, half_feats) * penalty
    keep = coarse.topk(min(candidates, len(coarse))).indices
    # Stage 2: the best few, each with a grid of shifts around the centroid, at full resolution.
    offsets = torch.arange(-shifts, shifts + 1, device=dev) * (4.0 / max(size))
    dx, dy = (x.flatten() for x in torch.meshgrid(offsets, offsets, indexing="ij"))
    n_off = len(dx)
    a = a[keep].repeat_interleave(n_off)
    s = s[keep].repeat_interleave(n_off)
    f = f[keep].repeat_interleave(n_off)
    t = q_c[None] + torch.stack([dx, dy], 1).repeat(len(keep), 1)
    # ... and the identity (same framing: a collection photographed on one stand, or the support itself).
    a = torch.cat([a, a.new_zeros(1)])
    s = torch.cat([s, s.new_ones(1)])
    f = torch.cat([f, f.new_ones(1)])
    t = torch.cat([t, s_c[None]])
    theta = similarity_theta(a, s, t, s_c, f)
    penalty = 1 - mirror_margin * (f < 0).float()
    if stage2_half:
        best = (_score(*half, theta, small, half_feats) * penalty).argmax()
    else:
        best = (_score(support_soft, query_soft, theta, size, feats) * penalty).argmax()
    a0, s0, t0, f0 = a[best], s[best], t[best], f[best]
    # Local refinement: translation and a finer angle/scale around the best hypothesis.
    step_t = 2.0 / max(size)
    step_a = 2 * math.pi / angles / 2
    for _ in range(refine):
        da, ds, dx, dy = torch.meshgrid(
            torch.tensor([-step_a, 0.0, step_a]), torch.tensor([0.96, 1.0, 1.04]),
            torch.tensor([-step_t, 0.0, step_t]), torch.tensor([-step_t, 0.0, step_t]), indexing="ij")
        ca = (a0 + da.flatten().to(a0)).contiguous()
        cs = (s0 * ds.flatten().to(s0)).contiguous()
        ct = t0[None] + torch.stack([dx.flatten(), dy.flatten()], 1).to(t0)
        theta = similarity_theta(ca, cs, ct, s_c, f0.expand(len(ca)))
        i = _score(support_soft, query_soft, theta, size, feats).argmax()
        a0, s0, t0 = ca[i], cs[i], ct[i]
        step_a, step_t = step_a / 2, step_t / 2
    return similarity_theta(a0[None], s0[None], t0[None], s_c, f0[None])[0]


def mirror_symmetry(support_soft: torch.Tensor, support_feats: Optional[torch.Tensor] = None,
                    tau: float = 0.1) -> float:
    """How well a specimen's mirror image fits the specimen itself, turned and shifted (1 = perfectly).

    The foreground and colours of the mirror image (``(K+1)×h×w`` soft labels, ``D×h×w`` features) are
    registered, without mirroring, onto the original and scored against the original's own score. Labels
    are reduced to foreground/background: a mirrored left wing is a right wing, not a mismatch.
    """
    fg = 1 - support_soft[0]
    two = torch.stack([1 - fg, fg])
    mirrored = two.flip(-1)
    feats = support_feats.flip(-1) if support_feats is not None else None
    theta = register(mirrored, two, support_feats=feats, query_feats=support_feats, tau=tau, mirror=False)
    fit = _score(mirrored, two, theta[None], tuple(two.shape[-2:]),
                 None if feats is None else (feats, support_feats, tau))[0]
    own = _score(two, two, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=two.device)[None], tuple(two.shape[-2:]),
                 None if feats is None else (support_feats, support_feats, tau))[0]
    return float(fit / own.clamp_min(1e-6))


def is_mirrored(theta: torch.Tensor) -> torch.Tensor:
    """Whether each N×2×3 (or 2×3) ``theta`` mirrors (negative determinant): N bools (or one)."""
    m = theta[..., :2, :2]
    return (m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]) < 0


def invert(theta: torch.Tensor) -> torch.Tensor:
    """The inverse of N×2×3 (or 2×3) affine maps: ``warp(warp(x, theta), invert(theta)) ≈ x`` inside both frames."""
    m, t = theta[..., :2, :2], theta[..., :2, 2:]
    mi = torch.linalg.inv(m)
    return torch.cat([mi, -mi @ t], dim=-1)


def swap_pairs(soft: torch.Tensor, pairs, where: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Swap the channels of left/right label ``pairs`` in ``soft`` (B×(K+1)×h×w), for the batch items
    ``where`` (B bools; all when None): a mirror image keeps "left" for what appears on the left."""
    if not pairs:
        return soft
    order = torch.arange(soft.shape[1], device=soft.device)
    for a, b in pairs:
        if a < soft.shape[1] and b < soft.shape[1]:
            order[a], order[b] = b, a
    swapped = soft[:, order]
    if where is None:
        return swapped
    return torch.where(where.view(-1, 1, 1, 1).to(soft.device), swapped, soft)


def _score(support_soft: torch.Tensor, query_soft: torch.Tensor, theta: torch.Tensor, size,
           feats=None) -> torch.Tensor:
    """Per hypothesis (N): label agreement Σ p_query · p_warped_support, plus, with features, the
    photometric agreement of the warped support foreground, Σ fg · exp((f_q · f_s − 1) / τ)."""
    scores = []
    for chunk in theta.split(256):
        warped = warp(support_soft, chunk, size)
        warped[:, 0] += 1 - warped.sum(1)  # outside the support frame counts as background
        score = (warped * query_soft[None]).sum(dim=(1, 2, 3))
        if feats is not None:
            s_feats, q_feats, tau = feats
            wf = warp(s_feats, chunk, size)  # N×D×h×w
            match = torch.exp(((wf * q_feats[None]).sum(1) - 1) / tau)  # N×h×w
            score = score + ((1 - warped[:, 0]) * match).sum(dim=(1, 2))
        scores.append(score)
    return torch.cat(scores)


def compose(theta: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``theta ∘ inner`` for N×2×3 (or 2×3) affine maps: a point goes through ``inner`` first."""
    def h(m):
        bottom = torch.tensor([0.0, 0.0, 1.0], device=m.device, dtype=m.dtype).expand(*m.shape[:-2], 1, 3)
        return torch.cat([m, bottom], dim=-2)
    return (h(theta) @ h(inner))[..., :2, :]


def refine_part(theta: torch.Tensor, support_soft: torch.Tensor, support_feats: torch.Tensor,
                query_feats: torch.Tensor, group, tau: float = 0.1, max_angle: float = 12.0,
                angles: int = 9, scales=(0.94, 1.0, 1.06), shifts: int = 2, margin: int = 2) -> torch.Tensor:
    """A part's own similarity transform on top of the specimen's ``theta`` (articulation: wings, tail, head).

    ``group``: the label ids that move together (a part and the traits it carries). The part is rotated,
    scaled and shifted about its own centroid (in query coordinates); each hypothesis is scored by the
    photometric agreement ``Σ exp((f_q · f_s − 1) / τ)`` over the part's region grown by ``margin`` cells,
    so the part's outline against its neighbours decides. Returns the part's 2×3 ``theta``.
    """
    size = tuple(query_feats.shape[-2:])
    dev = query_feats.device
    part = warp(support_soft[list(group)].sum(0, keepdim=True), theta[None], size)[0, 0]  # h×w
    if float(part.sum()) < 1:
        return theta
    region = F.max_pool2d((part > 0.25).float()[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0]
    centre, _ = _centroid(part)
    da = torch.linspace(-max_angle, max_angle, angles, device=dev) * math.pi / 180
    ds = torch.tensor(scales, device=dev)
    off = torch.arange(-shifts, shifts + 1, device=dev) * (2.0 / max(size))
    a, s, dx, dy = (x.flatten() for x in torch.meshgrid(da, ds, off, off, indexing="ij"))
    # inner map in query coordinates: q -> c + R(a)(q - c)/s - t, i.e. the part moved by t, turned by -a
    inner = similarity_theta(a, s, centre[None] + torch.stack([dx, dy], 1), centre)
    thetas = compose(theta.expand(len(a), 2, 3), inner)
    scores = []
    for chunk in thetas.split(128):
        wf = warp(support_feats, chunk, size)
        match = torch.exp(((wf * query_feats[None]).sum(1) - 1) / tau)
        scores.append((match * region).sum(dim=(1, 2)))
    return thetas[torch.cat(scores).argmax()]
