"""Labelled support images: frames from decoded images, and support pairs read and checked from files.

A support's label map sizes every one-hot tensor of a run (``(K+1)×H×W``, K its largest id), so its ids are
checked before anything is allocated: ids above :data:`MAX_TRAIT_ID` are refused (an id of 60000 would ask
for more than 9 GB at 200 px).
"""

from __future__ import annotations

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
