"""Segmentation scores and the measurements a biologist wants per image and trait."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch


def confusion(pred: torch.Tensor, truth: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``num_labels×num_labels`` pixel counts (rows: truth, columns: prediction) for H×W id maps."""
    idx = truth.long().flatten() * num_labels + pred.long().flatten()
    return torch.bincount(idx, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-label IoU from a confusion matrix; NaN for labels absent from both truth and prediction."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def iou(pred: torch.Tensor, truth: torch.Tensor, num_labels: int) -> torch.Tensor:
    return iou_from_confusion(confusion(pred, truth, num_labels))


def mean_iou(per_label: torch.Tensor, ignore_background: bool = True) -> float:
    """Mean over the labels that occur (NaN-aware), background excluded by default (trait mIoU)."""
    values = per_label[1:] if ignore_background else per_label
    values = values[~torch.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def measure(labels: np.ndarray, image: Optional[np.ndarray] = None) -> List[Dict[str, float]]:
    """Per trait present in an H×W label map: area (px), centroid (x, y), bounding box, mean RGB colour."""
    labels = np.asarray(labels)
    rows = []
    ids = np.unique(labels)
    ys, xs = np.indices(labels.shape)
    for k in ids[ids > 0]:
        sel = labels == k
        area = int(sel.sum())
        row = {
            "trait": int(k), "area_px": area,
            "centroid_x": float(xs[sel].mean()), "centroid_y": float(ys[sel].mean()),
            "bbox_x0": int(xs[sel].min()), "bbox_y0": int(ys[sel].min()),
            "bbox_x1": int(xs[sel].max()), "bbox_y1": int(ys[sel].max()),
        }
        if image is not None:
            colour = np.asarray(image)[sel].reshape(-1, 3).mean(0)
            row.update({"mean_r": float(colour[0]), "mean_g": float(colour[1]), "mean_b": float(colour[2])})
        rows.append(row)
    return rows
