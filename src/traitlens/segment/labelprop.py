"""Label propagation: the video-segmentation protocol of self-supervised ViTs (DINO), as a backend.

Each query location takes the labels of its ``topk`` most similar memory locations, weighted by
``exp(f_q·f_k / τ)`` (τ = 0.1, k = 5 by default). Memory = the support frame(s) plus a queue of the
most recent predictions; an optional local window limits which memory locations a query may use.
Soft labels are computed on the feature grid, upsampled bilinearly to each frame's own size, and
the caller takes the argmax.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from traitlens.segment.align import is_mirrored, mirror_symmetry, refine_part, register, swap_pairs, warp
from traitlens.segment.propagator import Propagator, one_hot

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LabelPropOptions:
    """How :class:`LabelPropagation` propagates (frozen; ``dataclasses.replace`` makes a variant).

    ``work_size``: frames are resized to this (H, W) before feature extraction so any mix of sizes can
    be batched; predictions come back at each frame's own size. ``radius``: local window (in grid
    cells) for memory frames, ``None`` for global. ``memory``: how many recent predictions are kept.
    ``align``: register each support onto each query first (:mod:`traitlens.segment.align`), then
    propagate within a ``(2·local+1)²`` window of the *corresponding* support location: far more
    precise for small traits, and cheaper. ``coarse``: pooling factor of the global first pass and of
    registration (default: a grid of about 32×32 cells).
    ``iterations``: register again against the previous round's prediction. ``candidates``: rotation ×
    scale hypotheses kept for the shift search. ``fast``: score that search at half resolution.
    ``spatial_sigma``: a Gaussian prior (in grid cells) favouring keys near the corresponding location,
    so parts that share a colour are split where the registered support splits them (None: off).
    ``parts``: groups of label ids that move together (e.g. a wing and its spot); each gets its own small
    similarity transform on top of the specimen's, offered as extra keys (articulation; off by default:
    it did not help on the synthetic collection).
    ``border``: the query's own frame border (this many coarse cells wide) joins the memory as background
    keys, ``border_margin`` (in units of τ) below their similarity: backgrounds differ from photo to photo, and
    whatever looks like the query's own edge is background (0: off). ``refine`` rounds of edge-aware clean-up
    on the query itself in a ``(2·refine_local+1)²`` window (0: off; None: ``2·(side/64)²`` for a working grid
    of ``side`` cells, at most 32: a diffusion covers the same share of the frame at any resolution, and the
    rounds reuse one set of affinities, so they cost little). ``refine_tau``: the clean-up's own temperature
    (None: ``tau``). It compares a location with its neighbours in the same photograph, whose colour features
    differ by noise alone (median 1 − cos ≈ 0.009 between neighbouring pixels of the synthetic collections), far
    less than from another specimen's keys: at τ = 0.1 a neighbour across an edge weighs nearly as much as one
    alongside, and a part two or three pixels wide erodes round after round. ``exact``: a query location whose best
    key matches at cosine ≥ this takes that key's label (a repeated specimen, the support itself).
    ``pose``: ``"any"`` (default) registers and makes the coarse first pass with features that carry no
    position (the extractor's ``pose_free_channels``), so any in-plane rotation is found as readily as the
    support's own; ``"upright"`` keeps position in both, which prefers poses near the support's (the
    behaviour before rotation handling). ``mirror``: also search mirror images (True / False; None: when
    ``mirror_pairs`` are given, or when the support is not mirror-symmetric, i.e. its mirror image fits itself
    below ``mirror_symmetric`` of its own score: a symmetric specimen's mirror image is itself turned, and a
    mirrored registration would only swap its left and right labels). ``mirror_pairs``: the (left, right)
    label ids that swap when a mirrored registration wins (e.g. ``((3, 4),)`` for the wings), so a mirrored
    specimen keeps "left" for the part on its left.
    ``auto_work``: ``(low, high)`` bounds of a working resolution chosen from the supports' thinnest trait
    (:func:`traitlens.segment.support.work_side`: the thinnest trait spans 3 grid cells); ``work_size`` is
    then only the starting value, and the largest side any support asks for is used.
    Measured on the synthetic collection (12 species, one support per species, ``python benchmarks/segment_seeds.py``
    at 128 px, ``--size 64`` for 64 px): border keys 0.817 → 0.871 trait mIoU at 64 px, clean-up 0.902 → 0.923
    at 128 px (2 rounds), 0.930 (8 rounds, the default there); one registration round with 20 candidates scored
    at half resolution is as accurate as two with 40 at full, and 2.3× faster. Clean-up temperature 0.1 → 0.02
    (128 px, seed 0 unless said): birds 0.931 / 0.918 / 0.930 → 0.936 / 0.922 / 0.934 (seeds 0 / 1 / 2), beetles
    0.877 → 0.883 (antennae 0.732 → 0.768), butterflies 0.912 → 0.928 (marginal spots 0.769 → 0.846); on
    24-query subsets 0.05 and 0.03 lie between, 0.01 and 0.005 lose again (the clean-up stops removing stray
    labels once a location's own label outweighs its neighbours').
    """

    work_size: Tuple[int, int] = (64, 64)
    tau: float = 0.1
    topk: int = 5
    radius: Optional[float] = None
    memory: int = 3
    query_chunk: int = 1024
    align: bool = False
    local: int = 2
    coarse: Optional[int] = None
    iterations: int = 1
    candidates: int = 20
    parts: Optional[Sequence[Sequence[int]]] = None
    fast: bool = True
    spatial_sigma: Optional[float] = 3.0
    border: int = 1
    border_margin: float = 1.0
    refine: Optional[int] = None
    refine_local: int = 2
    exact: float = 0.999
    pose: str = "any"
    mirror: Optional[bool] = None
    mirror_symmetric: float = 0.93
    mirror_pairs: Tuple[Tuple[int, int], ...] = ()
    auto_work: Optional[Tuple[int, int]] = None
    refine_tau: Optional[float] = 0.02

    def resolved(self) -> "LabelPropOptions":
        """The options with the defaults that depend on ``work_size`` filled in and ``parts`` as tuples."""
        work_size = tuple(int(v) for v in self.work_size)
        return replace(
            self, work_size=work_size,
            # the global pass and registration run on a grid of about 32×32 cells whatever the working size
            coarse=self.coarse or max(1, round(min(work_size) / 32)),
            refine=self.refine if self.refine is not None else refine_rounds(work_size),
            parts=tuple(tuple(int(i) for i in g) for g in self.parts) if self.parts else (),
            mirror_pairs=tuple((int(a), int(b)) for a, b in self.mirror_pairs))


class LabelPropagation(Propagator):
    """Label propagation over dense features (``features``: frames B×3×H×W → B×D×h×w, unit norm).

    ``options``: a :class:`LabelPropOptions` (defaults when None). ``projection``: an optional trainable module
    applied to features (cycle-consistent fine-tuning). ``device``: where memory and affinities live.
    """

    def __init__(self, features: FeatureFn, options: Optional[LabelPropOptions] = None,
                 projection: Optional[torch.nn.Module] = None, device: str | torch.device = "cpu"):
        self.features = features
        self._given = options or LabelPropOptions()
        self.options = self._given.resolved()
        self._raw: List[Tuple[torch.Tensor, torch.Tensor]] = []  # the supports as given (auto_work re-encodes them)
        self.projection = projection
        self.device = torch.device(device)
        self._support: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._recent: deque = deque(maxlen=max(self.options.memory, 0) or None)
        self._symmetry: dict = {}  # support -> how well its mirror image fits it (mirror_symmetry)
        self.num_labels = 0

    # -- memory -------------------------------------------------------------------------------
    def reset(self, num_labels: int) -> None:
        self.num_labels = int(num_labels)
        self._support = []
        self._raw = []
        self._symmetry = {}
        self._recent = deque(maxlen=self.options.memory if self.options.memory > 0 else 1)

    def add_support(self, image: torch.Tensor, labels: torch.Tensor) -> None:
        soft = one_hot(labels.to(self.device), self.num_labels)
        if self.options.auto_work:
            from traitlens.segment.support import work_side

            side = work_side(labels if labels.dim() == 2 else labels.argmax(0), bounds=self.options.auto_work)
            if len(self._support) == 0 or side > self.options.work_size[0]:
                self._set_work_size(side)
        self._raw.append((image, soft))
        self._support.append(self._entry(image, soft))

    def _set_work_size(self, side: int) -> None:
        """Change the working resolution (the rule of ``auto_work``); the supports are encoded again."""
        if (side, side) == self.options.work_size:
            return
        base = replace(self.options, work_size=(side, side), coarse=self._given.coarse, refine=self._given.refine)
        self.options = base.resolved()
        self._support = [self._entry(im, soft) for im, soft in self._raw]
        self._recent.clear()

    def add_memory(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        if self.options.memory > 0:
            self._recent.append(self._entry(image, probs.to(self.device)))

    def _entry(self, image: torch.Tensor, soft: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frame = self._to_work(image).to(self.device)
        feats = self.encode(frame[None])[0]  # D×h×w
        soft = F.adaptive_avg_pool2d(soft[None].float(), feats.shape[-2:])[0]  # (K+1)×h×w, area-weighted
        return feats, soft, frame

    def _to_work(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == self.options.work_size:
            return image.float()
        return F.interpolate(image[None].float(), size=self.options.work_size, mode="bilinear", align_corners=False,
                             antialias=True)[0]

    # -- features -----------------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``B×3×H×W`` → unit-norm features ``B×D×h×w`` (after the optional projection)."""
        x = F.interpolate(frames.float(), size=self.options.work_size, mode="bilinear", align_corners=False,
                          antialias=True) if frames.shape[-2:] != self.options.work_size else frames.float()
        feats = self.features(x)
        if self.projection is not None:
            feats = self.projection(feats)
        return F.normalize(feats, dim=1)

    def differentiable(self) -> bool:
        return self.projection is not None

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        """Soft label maps for several frames sharing the current memory (one batched pass)."""
        if not self._support and not self._recent:
            raise RuntimeError("label propagation has no memory: add a support frame first")
        frames = torch.stack([self._to_work(im) for im in images]).to(self.device)
        q = self.encode(frames)  # B×D×h×w
        if self.options.align and self._support:
            soft = self._aligned(frames, q)
        else:
            soft = self.propagate(q)  # B×(K+1)×h×w
        return [F.interpolate(soft[i:i + 1], size=im.shape[-2:], mode="bilinear", align_corners=False)[0]
                for i, im in enumerate(images)]

    def _aligned(self, frames: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Register every support onto every query (coarse global pass), then propagate locally."""
        c = self.options.coarse
        q_coarse = self._pool(q, c)
        extra = self._border_keys(q_coarse)
        if self.options.pose == "any":
            # The first pass (what registration aims at) by colour alone: position would pull every query
            # towards the support's own orientation.
            q_pose_free = self._pool(self._for_registration(q), c)
            coarse = self.propagate(q_pose_free, pool=c, extra=self._border_keys(q_pose_free),
                                    transform=self._for_registration)
        else:
            coarse = self.propagate(q_coarse, pool=c, extra=extra)  # B×(K+1)×h/c×w/c
        out = torch.zeros(q.shape[0], self.num_labels, *q.shape[-2:], device=q.device)
        exact = None
        for feats, soft, frame in self._support:
            s_coarse = F.avg_pool2d(soft[None], c)[0] if c > 1 else soft
            s_feats = self._pool(self._for_registration(feats[None]), c)[0]
            q_feats = self._pool(self._for_registration(q), c)
            mirror = self._mirror_search(soft, s_coarse, s_feats)
            target = coarse
            for it in range(max(1, self.options.iterations)):
                # Register onto the current prediction; each round refines the one before.
                with torch.no_grad():
                    thetas = torch.stack([register(s_coarse, target[i].detach(), support_feats=s_feats.detach(),
                                                   query_feats=q_feats[i].detach(), tau=self.options.tau,
                                                   candidates=self.options.candidates, stage2_half=self.options.fast,
                                                   mirror=mirror)
                                          for i in range(q.shape[0])])
                keys, values = self._warped_support(frame, soft, thetas, q.shape[-2:])
                if self.options.parts and it == max(1, self.options.iterations) - 1:
                    # Articulation: each part group's own transform, as extra keys next to the whole-specimen ones.
                    with torch.no_grad():
                        for group in self.options.parts:
                            part_thetas = torch.stack([refine_part(thetas[i], s_coarse, s_feats.detach(),
                                                                   q_feats[i].detach(), group, tau=self.options.tau)
                                                       for i in range(q.shape[0])])
                            (k_part,), (v_part,) = self._warped_support(frame, soft, part_thetas, q.shape[-2:])
                            region = v_part[:, list(group)].sum(1, keepdim=True)
                            region = F.max_pool2d((region > 0.25).float(), 3, stride=1, padding=1)
                            keys.append(k_part * region)
                            values.append(v_part)
                local, best = self.propagate_local(q, keys, values, extra=extra, return_best=True,
                                                   exact=self.options.exact if self.options.exact < 1 else None)
                target = F.avg_pool2d(local, c) if c > 1 else local
            out += local
            exact = best if exact is None else torch.maximum(exact, best)
        out = out / len(self._support)
        refined = self.refine_own(q, out)
        # Where the query repeats the support exactly (a duplicate specimen, the support itself), keep the
        # support's labels as they are: the clean-up is for uncertain matches.
        return torch.where((exact >= self.options.exact)[:, None], out, refined)

    @torch.no_grad()
    def poses(self, images: List[torch.Tensor]) -> torch.Tensor:
        """The registration of the first support onto each frame: ``B×2×3`` thetas (query → support coordinates
        of ``grid_sample``, on the square working grid), from the coarse pose-free pass. What another
        backend uses to turn a query onto the support's pose (:class:`traitlens.segment.sam2.Sam2Propagator`).
        """
        if not self._support:
            raise RuntimeError("label propagation has no support: add one first")
        frames = torch.stack([self._to_work(im) for im in images]).to(self.device)
        q = self.encode(frames)
        c = self.options.coarse
        q_reg = self._pool(self._for_registration(q), c)
        coarse = self.propagate(q_reg, pool=c, extra=self._border_keys(q_reg), transform=self._for_registration)
        feats, soft, _ = self._support[0]
        s_coarse = F.avg_pool2d(soft[None], c)[0] if c > 1 else soft
        s_feats = self._pool(self._for_registration(feats[None]), c)[0]
        mirror = self._mirror_search(soft, s_coarse, s_feats)
        return torch.stack([register(s_coarse, coarse[i], support_feats=s_feats, query_feats=q_reg[i],
                                     tau=self.options.tau, candidates=self.options.candidates,
                                     stage2_half=self.options.fast, mirror=mirror) for i in range(q.shape[0])])

    def _mirror_search(self, soft: torch.Tensor, s_coarse: torch.Tensor, s_feats: torch.Tensor) -> bool:
        """Whether registration onto queries of this support searches mirror images (``options.mirror``)."""
        if self.options.mirror is not None:
            return bool(self.options.mirror)
        if self.options.mirror_pairs:
            return True
        key = id(soft)
        if key not in self._symmetry:
            with torch.no_grad():
                self._symmetry[key] = mirror_symmetry(s_coarse, s_feats, tau=self.options.tau)
        return self._symmetry[key] < self.options.mirror_symmetric

    def refine_own(self, q: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Edge-aware clean-up on the query itself: each location takes the labels of its most similar
        neighbours in a ``(2·refine_local+1)²`` window (``refine`` rounds), so boundaries follow the query's
        own edges and isolated mistakes vanish."""
        if self.options.refine:
            match = self.window_match(q, q, radius=self.options.refine_local, tau=self.options.refine_tau)
            for _ in range(self.options.refine):
                soft = match.labels(soft)
        return soft

    def _border_keys(self, q_coarse: torch.Tensor) -> Optional[torch.Tensor]:
        """The query's own frame border (``border`` coarse cells wide) as background keys ``B×D×m`` (or None).

        Specimen photographs show the specimen away from the frame's edge: whatever looks like the query's
        own edge is background, however different the support's background is.
        """
        if not self.options.border:
            return None
        b, d, h, w = q_coarse.shape
        e = min(self.options.border, h // 4, w // 4)
        ring = torch.ones(h, w, dtype=torch.bool, device=q_coarse.device)
        ring[e:h - e, e:w - e] = False
        return q_coarse.flatten(2)[:, :, ring.flatten()]

    def _warped_support(self, frame, soft, thetas, size):
        """The support's frame features and soft labels warped onto each query: lists of one ``B×·×h×w`` each."""
        size = tuple(size)
        warped_frames = warp(frame, thetas, self.options.work_size)
        warped_soft = warp(soft, thetas, size)
        warped_soft[:, 0] += 1 - warped_soft.sum(1)  # outside the support's frame: background
        if self.options.mirror_pairs:
            warped_soft = swap_pairs(warped_soft, self.options.mirror_pairs, is_mirrored(thetas))
        return [self.encode(warped_frames)], [warped_soft]

    def _for_registration(self, feats: torch.Tensor) -> torch.Tensor:
        """The feature channels registration scores with (all, unless the extractor names fewer): with
        ``pose="any"`` its ``pose_free_channels`` (no position), else its ``registration_channels``."""
        name = "pose_free_channels" if self.options.pose == "any" else "registration_channels"
        channels = getattr(self.features, name, None)
        if channels is None or self.projection is not None:
            return feats
        return F.normalize(feats[:, channels], dim=1)

    @staticmethod
    def _pool(feats: torch.Tensor, factor: int) -> torch.Tensor:
        return F.normalize(F.avg_pool2d(feats, factor), dim=1) if factor > 1 else feats

    def propagate_local(self, query: torch.Tensor, keys, values, extra: Optional[torch.Tensor] = None,
                        radius: Optional[int] = None, exact: Optional[float] = None, return_best: bool = False):
        """Each query location looks only at the ``(2·radius+1)²`` aligned key locations around it
        (``radius`` defaults to ``local``).

        ``query``: ``B×D×h×w``; ``keys``/``values``: ``B×D×h×w`` / ``B×(K+1)×h×w`` aligned with the query, or
        lists of them (several registered copies of the support: the top k is taken over all of them).
        ``extra``: ``B×D×m`` keys any location may use, labelled background (the query's frame border).
        ``exact``: a location whose best window key matches at cosine ≥ this takes that key's label.
        Returns soft labels ``B×(K+1)×h×w`` (and, with ``return_best``, each location's best cosine
        similarity to a window key, ``B×h×w``).
        """
        match = self.window_match(query, keys, extra=extra, radius=radius)
        soft = match.labels(values, exact=exact)
        return (soft, match.best) if return_best else soft

    def window_match(self, query: torch.Tensor, keys, extra: Optional[torch.Tensor] = None,
                     radius: Optional[int] = None, tau: Optional[float] = None) -> "WindowMatch":
        """The top-k window keys of every query location and their weights (see :meth:`propagate_local`).

        A local correlation: one ``B×h×w`` dot product per window offset (the feature volume is never
        unfolded, so memory is ``(2·local+1)²·h·w`` affinities, not ``D`` times that). The result gathers
        labels from any label maps aligned with ``keys``, so several rounds over one set of keys (the
        clean-up) compute the affinities once.
        """
        keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
        b, d, h, w = query.shape
        r = self.options.local if radius is None else radius
        side = 2 * r + 1
        hp, wp = h + 2 * r, w + 2 * r
        m = 0 if extra is None else extra.shape[-1]
        aff = torch.empty(b, side * side * len(keys) + m, h, w, device=query.device, dtype=query.dtype)
        n = 0
        for k in keys:
            kp = F.pad(k, [r, r, r, r])  # outside the frame: zero features (affinity 0), zero labels
            for dy in range(side):
                for dx in range(side):
                    aff[:, n] = (query * kp[:, :, dy:dy + h, dx:dx + w]).sum(1)
                    n += 1
        if m:
            margin = self.options.border_margin * self.options.tau
            aff[:, n:] = (extra.transpose(1, 2) @ query.flatten(2)).view(b, m, h, w) - margin
        best = aff[:, :n].amax(1)
        aff /= tau or self.options.tau
        if self.options.spatial_sigma:
            # Registration prior: among equally similar keys, prefer those near the corresponding location
            # (parts that share a colour are then split where the registered support splits them).
            off = torch.arange(-r, r + 1, device=query.device, dtype=aff.dtype)
            d2 = (off[:, None] ** 2 + off[None, :] ** 2).flatten()
            aff[:, :n] -= (d2 / (2 * self.options.spatial_sigma ** 2)).repeat(len(keys))[None, :, None, None]
        kk = min(self.options.topk, aff.shape[1])
        top, idx = aff.topk(kk, dim=1)  # B×k×h×w
        # Flat index of each chosen key in the stacked, padded label maps: copy · hp·wp + (y+dy)·wp + (x+dx).
        is_extra = idx >= n if m else None
        idx = idx.clamp_max(n - 1)
        copy, offset = idx // (side * side), idx % (side * side)
        ys = torch.arange(h, device=query.device).view(1, 1, h, 1)
        xs = torch.arange(w, device=query.device).view(1, 1, 1, w)
        flat = copy * (hp * wp) + (ys + offset // side) * wp + (xs + offset % side)  # B×k×h×w
        return WindowMatch(torch.softmax(top, dim=1), flat, is_extra, best, r)

    def propagate(self, query: torch.Tensor, pool: int = 1, extra: Optional[torch.Tensor] = None,
                  transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Query features ``B×D×h×w`` → soft labels ``B×(K+1)×h×w`` on the same grid.

        ``pool``: memory features and labels are average-pooled by this factor first (coarse pass).
        ``extra``: ``B×D×m`` further keys per query, labelled background (the query's frame border).
        ``transform``: applied to the memory's features ``1×D×h×w`` first (the pose-free channels).
        """
        tf = transform or (lambda f: f)
        entries = [(self._pool(tf(f[None]), pool)[0], F.avg_pool2d(s[None], pool)[0] if pool > 1 else s)
                   for f, s, _ in self._support + list(self._recent)]
        keys = torch.cat([f.flatten(1) for f, _ in entries], dim=1)  # D×M
        values = torch.cat([s.flatten(1) for _, s in entries], dim=1)  # (K+1)×M
        b, d, h, w = query.shape
        q = query.flatten(2).transpose(1, 2)  # B×hw×D
        window = self._window_mask([f for f, _ in entries], (h, w), query.device)
        table = values.t()  # M×(K+1); extra keys (index ≥ M) are background
        if extra is not None:
            table = torch.cat([table, _background(extra.shape[-1], values.shape[0], values)])
        out = []
        for start in range(0, h * w, self.options.query_chunk):
            sl = slice(start, start + self.options.query_chunk)
            aff = q[:, sl] @ keys / self.options.tau  # B×n×M
            if window is not None:
                aff = aff.masked_fill(~window[sl], float("-inf"))
            if extra is not None:
                aff = torch.cat([aff, q[:, sl] @ extra / self.options.tau], dim=-1)
            k = min(self.options.topk, aff.shape[-1])
            top, idx = aff.topk(k, dim=-1)  # B×n×k
            weights = torch.softmax(top, dim=-1)  # = exp(aff/τ) normalised over the top k
            gathered = table[idx]  # B×n×k×(K+1)
            out.append((weights.unsqueeze(-1) * gathered).sum(dim=2))
        soft = torch.cat(out, dim=1).transpose(1, 2).reshape(b, -1, h, w)
        return soft / soft.sum(dim=1, keepdim=True).clamp_min(1e-8)

    def _window_mask(self, entries, grid, device) -> Optional[torch.Tensor]:
        """hw×M boolean: which memory locations each query location may use (supports: all)."""
        if self.options.radius is None or not self._recent:
            return None
        h, w = grid
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
        near = (torch.cdist(pos, pos) <= self.options.radius)
        blocks = []
        for i, f in enumerate(entries):
            is_support = i < len(self._support)
            if f.shape[-2:] != (h, w) or is_support:
                blocks.append(torch.ones(h * w, f.shape[-2] * f.shape[-1], dtype=torch.bool, device=device))
            else:
                blocks.append(near)
        return torch.cat(blocks, dim=1)


def refine_rounds(work_size: Tuple[int, int]) -> int:
    """Default clean-up rounds for a working grid: ``2·(side/64)²``, between 1 and 32.

    Measured on the synthetic collection (trait mIoU, one support per species): at 64 px 2 rounds are best
    (0.886; 4 give 0.881), at 128 px 8 (0.930 vs 0.923 with 2; the beak 0.79 → 0.81), at 256 px 32 (0.936 vs
    0.922 with 8).
    """
    side = min(work_size)
    return int(min(32, max(1, round(2 * (side / 64) ** 2))))


class WindowMatch:
    """Each query location's top-k window keys (:meth:`LabelPropagation.window_match`): softmax ``weights``
    and ``flat`` indices into the padded label maps (``B×k×h×w``), which of them are background ``extra``
    keys, the ``best`` cosine similarity per location and the window ``radius``."""

    def __init__(self, weights, flat, is_extra, best, radius):
        self.weights, self.flat, self.is_extra, self.best, self.radius = weights, flat, is_extra, best, radius

    def labels(self, values, exact: Optional[float] = None) -> torch.Tensor:
        """Soft labels ``B×(K+1)×h×w`` gathered from ``values`` (one label map per key map, aligned with it)."""
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        b, kk, h, w = self.flat.shape
        r, c = self.radius, values[0].shape[1]
        padded = torch.cat([F.pad(v, [r, r, r, r]).flatten(2) for v in values], dim=2)  # B×c×(copies·hp·wp)
        gathered = padded.gather(2, self.flat.flatten(1)[:, None].expand(b, c, -1)).view(b, c, kk, h, w)
        if self.is_extra is not None:
            gathered = torch.where(self.is_extra[:, None], _background(1, c, gathered).view(1, c, 1, 1, 1), gathered)
        soft = (self.weights[:, None] * gathered).sum(2)
        soft = soft / soft.sum(dim=1, keepdim=True).clamp_min(1e-8)
        if exact is not None:
            # An exact match (a repeated specimen, the support itself) is not noise to average away: its label.
            soft = torch.where((self.best >= exact)[:, None], gathered[:, :, 0], soft)
        return soft


def _background(n: int, c: int, like: torch.Tensor) -> torch.Tensor:
    """``n×c`` one-hot rows of label 0 (background), on ``like``'s device and dtype."""
    rows = torch.zeros(n, c, device=like.device, dtype=like.dtype)
    rows[:, 0] = 1
    return rows
