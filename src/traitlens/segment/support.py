"""Labelled support images: frames from decoded images, and support pairs read and checked from files.

A support's label map sizes every one-hot tensor of a run (``(K+1)×H×W``, K its largest id), so its ids are
checked before anything is allocated: ids above :data:`MAX_TRAIT_ID` are refused (an id of 60000 would ask
for more than 9 GB at 200 px).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from traitlens.data.imageio import load_image, load_mask
from traitlens.errors import BadImageError, UserError
from traitlens.segment.tracking import Frame, Support

#: Largest trait id a label map may hold (label maps are saved as 16-bit PNGs above 255).
MAX_TRAIT_ID = 1023


def to_frame(image: np.ndarray) -> Frame:
    """H×W×3 uint8 → 3×H×W float in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def check_labels(labels: torch.Tensor, where: str) -> None:
    """Refuse a support label map (H×W ids) without trait pixels or with ids outside 0..MAX_TRAIT_ID."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > MAX_TRAIT_ID:
        raise UserError(f"support mask {where}: label ids run from {lo} to {hi}; trait ids from 1 to "
                        f"{MAX_TRAIT_ID} are supported (0 = background)")
    if hi == 0:
        raise UserError(f"support mask {where}: no trait pixels (every id is 0)")


def load_support(image_path: Path, mask_path: Path) -> Support:
    """A support pair (frame 3×H×W in [0, 1], labels H×W long) from files; UserError when they do not fit."""
    try:
        image = load_image(image_path)
        labels = load_mask(mask_path, max_label=MAX_TRAIT_ID)
    except BadImageError as exc:
        raise UserError(f"support {exc.path}: {exc.reason}") from None
    if labels.shape != (image.height, image.width):
        raise UserError(f"support mask {mask_path}: size {labels.shape[1]}×{labels.shape[0]} differs from the "
                        f"support image's {image.width}×{image.height}")
    labels = torch.from_numpy(labels.astype(np.int64))
    check_labels(labels, str(mask_path))
    return to_frame(np.asarray(image)), labels


def load_frames(named, skipped, max_pixels: Optional[int] = None) -> List[Tuple[str, Frame]]:
    """``(id, image file)`` pairs → ``(id, frame 3×H×W)`` for every readable image, all in memory (for
    fine-tuning on a handful of images); unreadable files go to ``skipped`` (a SkippedFiles)."""
    frames = []
    for iid, path in named:
        try:
            frames.append((iid, to_frame(np.asarray(load_image(path, max_pixels=max_pixels)))))
        except BadImageError as exc:
            skipped.add_error(exc)
    return frames


#: The working-resolution rule (:func:`work_side`): the thinnest trait spans this many grid cells ...
MIN_CELLS = 3
#: ... within these bounds on the working side (pixels); traits smaller than ``MIN_TRAIT_PIXELS`` are ignored.
WORK_BOUNDS = (128, 256)
MIN_TRAIT_PIXELS = 16
_WIDTH_GRID = 1024  # label maps are measured at most this large (nearest resampling): bounded memory


def trait_widths(labels: torch.Tensor, max_width: Optional[float] = None) -> dict:
    """Width in pixels of every trait in an ``H×W`` label map: ``{id: width}``, ``2n+1`` when ``n`` 3×3
    erosions leave pixels of it and ``n+1`` do not (the thickness of its thickest point).

    Maps larger than 1,024 px are measured on a nearest-resampled copy (widths scaled back). With
    ``max_width``, erosion stops once every remaining trait is known to be wider (reported as that bound).
    """
    labels = torch.as_tensor(labels)
    h, w = labels.shape[-2:]
    factor = max(1.0, max(h, w) / _WIDTH_GRID)
    if factor > 1:
        labels = torch.nn.functional.interpolate(labels[None, None].float(), scale_factor=1 / factor,
                                                 mode="nearest")[0, 0].long()
    ids = [int(k) for k in torch.unique(labels) if int(k) > 0]
    if not ids:
        return {}
    masks = torch.stack([labels == k for k in ids]).float()[None]  # 1×T×h×w
    limit = None if max_width is None else int(max_width / factor // 2) + 1
    widths = {}
    n = 0
    alive = masks.flatten(2).amax(-1)[0] > 0
    while bool(alive.any()) and (limit is None or n < limit):
        masks = -torch.nn.functional.max_pool2d(-masks, 3, stride=1, padding=1)
        n += 1
        now = masks.flatten(2).amax(-1)[0] > 0
        for i in torch.nonzero(alive & ~now).flatten().tolist():
            widths[ids[i]] = (2 * (n - 1) + 1) * factor
        alive = now
    for i in torch.nonzero(alive).flatten().tolist():
        widths[ids[i]] = (2 * n + 1) * factor
    return widths


def work_side(labels: torch.Tensor, min_cells: int = MIN_CELLS, bounds: Tuple[int, int] = WORK_BOUNDS,
              min_pixels: int = MIN_TRAIT_PIXELS) -> int:
    """The working resolution for a support's ``H×W`` label map (the documented rule).

    The smallest multiple of 16 at which the support's thinnest trait spans ``min_cells`` grid cells across
    (``side = min_cells · max(H, W) / width``), within ``bounds``. Traits of fewer than ``min_pixels`` pixels
    are left out of the rule (a speck cannot set the resolution of a whole run; it is flagged instead).
    """
    labels = torch.as_tensor(labels)
    lo, hi = int(bounds[0]), int(bounds[1])
    big = max(labels.shape[-2:])
    counts = torch.bincount(labels.flatten().long().clamp_min(0))
    widths = trait_widths(labels, max_width=min_cells * big / lo)
    usable = [wd for k, wd in widths.items() if k < len(counts) and int(counts[k]) >= min_pixels]
    if not usable:
        return lo
    side = min_cells * big / min(usable)
    return int(min(hi, max(lo, 16 * math.ceil(side / 16))))


def small_traits(labels: torch.Tensor, min_pixels: int = MIN_TRAIT_PIXELS) -> List[int]:
    """Trait ids with fewer than ``min_pixels`` pixels in a support's label map (they may not be found)."""
    counts = torch.bincount(torch.as_tensor(labels).flatten().long().clamp_min(0))
    return [k for k in range(1, len(counts)) if 0 < int(counts[k]) < min_pixels]
