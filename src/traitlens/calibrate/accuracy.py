"""The accuracy table of the paper (y/y, s/y, u/y, s/s, u/u, top-1, top-5) and the nearest-class-mean
diagnostic that asks whether fine-tuning damaged the features of the absent classes."""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from traitlens.calibrate._arrays import check_logits, row_chunks, seen_mask, to_tensor
from traitlens.errors import UserError

TABLE_KEYS = ("y/y", "s/y", "u/y", "s/s", "u/u", "top1", "top5")


def accuracy_table(logits: Any, labels: Any, seen: Any, gamma: float = 0.0) -> Dict[str, float]:
    """Accuracies of ``argmax z + γ·[c ∈ U]`` (fractions in [0, 1]).

    ``y/y``: all samples over all classes (= ``top1``); ``s/y`` / ``u/y``: samples of seen / absent classes over
    all classes; ``s/s`` / ``u/u``: seen / absent samples over their own group's classes only (γ-free);
    ``top5``: over all classes. A group without samples gives NaN. logits N×C, labels N.
    """
    z, y, _ = check_logits(logits, labels)
    if y is None or y.numel() == 0:
        raise UserError("the accuracy table needs labelled samples")
    mask = seen_mask(seen, z.shape[1], device=z.device, need_unseen=False)
    bias = (~mask).to(z.dtype) * float(gamma)
    neg = torch.tensor(-float("inf"), dtype=z.dtype, device=z.device)
    k = min(5, z.shape[1])
    hit, hit_own, hit5 = (torch.empty(y.numel(), dtype=torch.bool) for _ in range(3))
    for rows in row_chunks(z.shape[0], z.shape[1]):
        zc = z[rows] + bias
        yc = y[rows]
        hit[rows] = (zc.argmax(1) == yc).cpu()
        # in the top k: fewer than k classes score strictly higher (ties count for the label, so the result
        # does not depend on how a device's topk orders equal scores)
        true = zc.gather(1, yc[:, None])
        hit5[rows] = ((zc > true).sum(1) < k).cpu()
        # restrict each sample to its own group's classes (γ cancels within a group)
        own = mask[None, :] == mask[yc][:, None]
        hit_own[rows] = (torch.where(own, zc, neg).argmax(1) == yc).cpu()
    is_seen = mask.cpu()[y.cpu()]

    def mean(v: torch.Tensor) -> float:
        return float(v.double().mean()) if v.numel() else float("nan")

    return {"y/y": mean(hit), "s/y": mean(hit[is_seen]), "u/y": mean(hit[~is_seen]),
            "s/s": mean(hit_own[is_seen]), "u/u": mean(hit_own[~is_seen]), "top1": mean(hit), "top5": mean(hit5)}


def ncm_logits(features: Any, ref_features: Any, ref_labels: Any, num_classes: int) -> Any:
    """Cosine similarity of each L2-normalised feature to each class's mean normalised reference feature.

    features N×D, ref_features M×D with ref_labels M (data of **all** classes, e.g. their training images);
    returns N×C (same kind as ``features``); classes without reference samples get −inf.
    """
    f, as_numpy = to_tensor(features, "features")
    r, _ = to_tensor(ref_features, "ref_features")
    ry, _ = to_tensor(ref_labels, "ref_labels")
    if f.ndim != 2 or r.ndim != 2 or f.shape[1] != r.shape[1]:
        raise UserError(f"features N×D and ref_features M×D must share D, got {tuple(f.shape)} and {tuple(r.shape)}")
    ry = ry.long().reshape(-1)
    if ry.numel() != r.shape[0] or (ry.numel() and (int(ry.min()) < 0 or int(ry.max()) >= num_classes)):
        raise UserError("ref_labels must give a class id in [0, num_classes) for every reference feature")
    f = F.normalize(f.double(), dim=1)
    r = F.normalize(r.double(), dim=1)
    sums = torch.zeros(num_classes, r.shape[1], dtype=torch.float64).index_add_(0, ry, r)
    counts = torch.bincount(ry, minlength=num_classes)
    means = F.normalize(sums / counts.clamp(min=1)[:, None], dim=1)
    sim = f @ means.T
    sim[:, counts == 0] = -float("inf")
    return sim.numpy() if as_numpy else sim


def ncm_accuracy(features: Any, labels: Any, ref_features: Any, ref_labels: Any, seen: Any,
                 num_classes: int) -> Dict[str, float]:
    """The accuracy table of a nearest-class-mean classifier on the features (γ = 0): the paper's test that
    the fine-tuned features still separate the absent classes."""
    return accuracy_table(ncm_logits(features, ref_features, ref_labels, num_classes), labels, seen)
