"""Input checks shared by the calibration functions: numpy or torch in, the same kind out."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch

from traitlens.errors import UserError

# Rows per chunk for the per-sample reductions: about 16M logits (64 MB of float32) at a time, so a
# 1,000,000 × 1,000 matrix never needs a second full-size copy.
CHUNK_ELEMENTS = 1 << 24


def to_tensor(x: Any, name: str) -> Tuple[torch.Tensor, bool]:
    """``(tensor, was_numpy)``; numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        return x.detach(), False
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if isinstance(x, (list, tuple)):
        return torch.as_tensor(np.asarray(x)), True
    raise UserError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def like(t: torch.Tensor, as_numpy: bool):
    """Return ``t`` as the caller's kind (numpy array or tensor)."""
    return t.cpu().numpy() if as_numpy else t


def check_logits(logits: Any, labels: Any = None) -> Tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Validate ``logits`` N×C (floating) and ``labels`` N (ints in [0, C))."""
    z, as_numpy = to_tensor(logits, "logits")
    if z.ndim != 2 or z.shape[1] < 2:
        raise UserError(f"logits must be N×C with C >= 2, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        z = z.float()
    y = None
    if labels is not None:
        y, _ = to_tensor(labels, "labels")
        y = y.reshape(-1).to(device=z.device, dtype=torch.long) if y.ndim <= 1 else y
        if y.ndim != 1 or y.numel() != z.shape[0]:
            raise UserError(f"labels must have one entry per logit row ({z.shape[0]}), got shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
            raise UserError(f"labels must be class ids in [0, {z.shape[1]}), got {int(y.min())}..{int(y.max())}")
    return z, y, as_numpy


def seen_mask(seen: Any, num_classes: int, device=None, need_unseen: bool = True) -> torch.Tensor:
    """A boolean mask over the C classes from a list of seen class ids (or a C-long boolean mask)."""
    s, _ = to_tensor(seen, "seen") if not isinstance(seen, (set, frozenset, range)) else (
        torch.as_tensor(sorted(seen), dtype=torch.long), False)
    s = s.reshape(-1)
    if s.dtype == torch.bool:
        if s.numel() != num_classes:
            raise UserError(f"a boolean seen mask needs {num_classes} entries, got {s.numel()}")
        mask = s.clone()
    else:
        if s.is_floating_point() and s.numel() and not torch.equal(s, s.round()):
            raise UserError("seen must list integer class ids")
        s = s.long()
        if s.numel() and (int(s.min()) < 0 or int(s.max()) >= num_classes):
            raise UserError(f"seen class ids must lie in [0, {num_classes}), got {int(s.min())}..{int(s.max())}")
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[s] = True
    if not bool(mask.any()):
        raise UserError("seen must name at least one class present in fine-tuning")
    if need_unseen and bool(mask.all()):
        raise UserError("every class is in seen: there are no absent classes to calibrate")
    return mask.to(device) if device is not None else mask


def row_chunks(n_rows: int, n_cols: int):
    """Row slices of at most CHUNK_ELEMENTS logits."""
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
