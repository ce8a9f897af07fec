"""The seen-unseen accuracy trade-off as an exact function of the absent-class bias γ.

Adding γ to the absent (unseen) classes' logits changes a sample's prediction at exactly one γ: its
*breakpoint* ``b = max_seen z − max_unseen z``. Below ``b`` the best seen class wins, above it the best unseen
class does. Every accuracy is therefore piecewise constant in γ with steps only at the N breakpoints, so
sorting them (O(N log N)) gives the whole curve, the area under it (AUSUC, Chao et al. 2016, as used by
Mai et al. 2024) and the best γ for any accuracy-based criterion, exactly and without a γ grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np
import torch

from traitlens.calibrate._arrays import check_logits, like, row_chunks, seen_mask
from traitlens.errors import UserError


@dataclass
class SwitchStats:
    """Per-sample facts that decide every γ-dependent accuracy (all length N, on the CPU).

    ``breakpoint``: float64 ``max_seen z − max_unseen z`` (the sample predicts an unseen class for γ above it);
    ``seen_correct``: the best seen class is the label; ``unseen_correct``: the best unseen class is the label;
    ``is_seen``: the label is a seen class.
    """

    breakpoint: torch.Tensor
    seen_correct: torch.Tensor
    unseen_correct: torch.Tensor
    is_seen: torch.Tensor


def switch_stats(logits: Any, labels: Any, seen: Any) -> SwitchStats:
    """Reduce N×C logits to the per-sample :class:`SwitchStats`, in row chunks (memory stays ~64 MB)."""
    z, y, _ = check_logits(logits, labels)
    if y is None:
        raise UserError("labels are required")
    mask = seen_mask(seen, z.shape[1])
    seen_ids = torch.nonzero(mask).flatten().to(z.device)
    unseen_ids = torch.nonzero(~mask).flatten().to(z.device)
    s_runs, u_runs = _runs(mask), _runs(~mask)
    # Few contiguous runs of class ids (the usual case): reduce over column-slice views, no copy. Otherwise one
    # gather per chunk puts the seen classes first. Either way each group is scanned in ascending class id, so
    # ties resolve to the lowest id exactly as a plain argmax over all classes does.
    sliced = len(s_runs) + len(u_runs) <= 16
    order = torch.cat([seen_ids, unseen_ids])
    n_seen = seen_ids.numel()
    n = z.shape[0]
    brk = torch.empty(n, dtype=torch.float64)
    s_ok = torch.empty(n, dtype=torch.bool)
    u_ok = torch.empty(n, dtype=torch.bool)
    for rows in row_chunks(n, z.shape[1]):
        if sliced:
            ms, cls_s = _group_max(z[rows], s_runs)
            mu, cls_u = _group_max(z[rows], u_runs)
        else:
            zc = z[rows].index_select(1, order)
            ms, arg_s = zc[:, :n_seen].max(dim=1)
            mu, arg_u = zc[:, n_seen:].max(dim=1)
            cls_s, cls_u = seen_ids[arg_s], unseen_ids[arg_u]
        yc = y[rows]
        brk[rows] = (ms.double() - mu.double()).cpu()
        s_ok[rows] = (cls_s == yc).cpu()
        u_ok[rows] = (cls_u == yc).cpu()
    if not bool(torch.isfinite(brk).all()):
        raise UserError("logits contain NaN or infinite values")
    return SwitchStats(brk, s_ok, u_ok, mask[y.cpu()])


def _runs(mask: torch.Tensor):
    """Contiguous ``(start, stop)`` runs of True in a 1-D boolean mask."""
    m = mask.cpu().to(torch.int8)
    d = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), m, torch.zeros(1, dtype=torch.int8)]))
    starts = torch.nonzero(d == 1).flatten().tolist()
    stops = torch.nonzero(d == -1).flatten().tolist()
    return list(zip(starts, stops))


def _group_max(z: torch.Tensor, runs):
    """Row-wise max over the union of column runs (ascending) and the class id of the first maximum."""
    best, cls = None, None
    for a, b in runs:
        v, i = z[:, a:b].max(dim=1)
        if best is None:
            best, cls = v, i + a
        else:
            better = v > best  # strict: an earlier (lower-id) run keeps ties
            best = torch.where(better, v, best)
            cls = torch.where(better, i + a, cls)
    return best, cls


@dataclass
class Steps:
    """Accuracy counts on each γ interval. ``edges`` has K+1 entries (−inf first): interval k is
    ``(edges[k], edges[k+1])`` with ``edges[K+1] = +inf``; counts are per interval (K+1 of them)."""

    edges: torch.Tensor
    seen_hits: torch.Tensor      # correct seen-labelled samples (over all classes)
    unseen_hits: torch.Tensor    # correct unseen-labelled samples (over all classes)
    n_seen: int
    n_unseen: int

    def representative(self) -> torch.Tensor:
        """A γ strictly inside each interval (midpoints; one unit beyond the outer breakpoints)."""
        e = self.edges
        if e.numel() == 1:
            return torch.zeros(1, dtype=torch.float64)
        inner = (e[1:-1] + e[2:]) / 2
        lo = e[1] - max(1.0, abs(float(e[1])) * 1e-3)
        hi = e[-1] + max(1.0, abs(float(e[-1])) * 1e-3)
        return torch.cat([torch.tensor([lo], dtype=torch.float64), inner, torch.tensor([hi], dtype=torch.float64)])


def steps(stats: SwitchStats) -> Steps:
    """Sweep γ from −inf to +inf through the sorted unique breakpoints (ties switch together)."""
    b = stats.breakpoint
    order = torch.argsort(b, stable=True)
    b_sorted = b[order]
    gain_u = (stats.unseen_correct & ~stats.is_seen)[order].long()
    loss_s = (stats.seen_correct & stats.is_seen)[order].long()
    uniq, counts = torch.unique_consecutive(b_sorted, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1   # last sorted index of each tie group
    gained = torch.cumsum(gain_u, 0)[ends]
    lost = torch.cumsum(loss_s, 0)[ends]
    zero = torch.zeros(1, dtype=torch.long)
    seen0 = int(loss_s.sum())
    seen_hits = torch.cat([zero + seen0, seen0 - lost])
    unseen_hits = torch.cat([zero, gained])
    edges = torch.cat([torch.tensor([-float("inf")], dtype=torch.float64), uniq])
    return Steps(edges, seen_hits, unseen_hits, int(stats.is_seen.sum()), int((~stats.is_seen).sum()))


def _need_both(st: Steps) -> None:
    if st.n_seen == 0 or st.n_unseen == 0:
        raise UserError("the seen-unseen curve needs test samples from both seen and absent classes "
                        f"(got {st.n_seen} seen, {st.n_unseen} absent)")


def seen_unseen_curve(logits: Any, labels: Any, seen: Any) -> Tuple[Any, Any, Any]:
    """The exact seen-unseen accuracy curve traced by the absent-class bias γ.

    logits N×C, labels N, seen: the fine-tuning class ids. Returns ``(gammas, acc_seen, acc_unseen)``,
    each K+1 long (K = number of distinct breakpoints), float64, numpy or torch like ``logits``:
    point k holds for every γ in ``(gammas[k], gammas[k+1])`` (``gammas[0] = -inf``, last interval open to
    +inf). ``acc_seen`` is Acc s/y and ``acc_unseen`` Acc u/y (both over all C classes); the first point is
    ``(s/s, 0)`` and the last ``(0, u/u)``, the endpoints the AUSUC of Chao et al. includes.
    """
    _, _, as_numpy = check_logits(logits)
    st = steps(switch_stats(logits, labels, seen))
    _need_both(st)
    acc_s = st.seen_hits.double() / st.n_seen
    acc_u = st.unseen_hits.double() / st.n_unseen
    return like(st.edges, as_numpy), like(acc_s, as_numpy), like(acc_u, as_numpy)


def ausuc(logits: Any, labels: Any, seen: Any) -> float:
    """Area under the seen-unseen accuracy curve (x: Acc u/y, y: Acc s/y), exact, O(N log N).

    The curve runs from ``(0, s/s)`` at γ = −inf to ``(u/u, 0)`` at γ = +inf; consecutive points are joined by
    straight lines (trapezoids), as the reference implementations do. 1.0 for perfect logits.
    """
    st = steps(switch_stats(logits, labels, seen))
    _need_both(st)
    x = st.unseen_hits.double() / st.n_unseen
    yv = st.seen_hits.double() / st.n_seen
    return float(((x[1:] - x[:-1]) * (yv[1:] + yv[:-1])).sum() / 2)


def best_gamma(st: Steps, score: torch.Tensor, feasible: torch.Tensor | None = None) -> float:
    """The γ (inside its interval) maximising ``score`` over the intervals of ``st``; among equal scores the
    interval nearest γ = 0 wins (the smallest change to the model). ``feasible`` masks allowed intervals."""
    g = st.representative()
    score = score.double()
    if feasible is not None:
        if not bool(feasible.any()):
            raise ValueError("no feasible γ")
        score = torch.where(feasible, score, torch.full_like(score, -float("inf")))
    best = score.max()
    cand = torch.nonzero(score == best).flatten()
    # distance of each candidate interval to 0 (0 when 0 lies inside it)
    lo = st.edges[cand]
    hi = torch.cat([st.edges[1:], torch.tensor([float("inf")], dtype=torch.float64)])[cand]
    dist = torch.where((lo < 0) & (hi > 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    k = int(cand[torch.argmin(dist)])
    if float(st.edges[k]) < 0 < (float(st.edges[k + 1]) if k + 1 < st.edges.numel() else float("inf")):
        return 0.0
    return float(g[k])


def oracle_gamma(logits: Any, labels: Any, seen: Any) -> float:
    """The γ maximising overall accuracy (Acc y/y) on labelled data: the upper bound that peeks at test labels."""
    st = steps(switch_stats(logits, labels, seen))
    return best_gamma(st, st.seen_hits + st.unseen_hits)
