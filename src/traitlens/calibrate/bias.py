"""The absent-class logit bias γ of Mai et al. (2024): apply it, and choose it by ALG or PCV.

Calibrated prediction: ``argmax_c z_c(x) + γ·[c ∈ U]`` with U the classes absent from fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch

from traitlens.calibrate._arrays import check_logits, like, row_chunks, seen_mask
from traitlens.calibrate.seen_unseen import best_gamma, steps, switch_stats
from traitlens.errors import UserError


def apply_gamma(logits: Any, seen: Any, gamma: float) -> Any:
    """Add ``gamma`` to the logits of the classes not in ``seen``. logits N×C → N×C, same kind and dtype."""
    z, _, as_numpy = check_logits(logits)
    mask = seen_mask(seen, z.shape[1], device=z.device, need_unseen=False)
    bias = (~mask).to(z.dtype) * float(gamma)
    return like(z + bias, as_numpy)


def alg_gamma(logits: Any, labels: Any, seen: Any) -> float:
    """Average logit gap, computed on the fine-tuning **training** data (labels all in ``seen``).

    γ = mean over samples of the mean non-true seen-class logit − mean over samples of the mean absent-class
    logit. logits N×C of the fine-tuned model on its own training images; labels N.
    """
    z, y, _ = check_logits(logits, labels)
    if y is None or y.numel() == 0:
        raise UserError("ALG needs the fine-tuning training logits and labels")
    mask = seen_mask(seen, z.shape[1], device=z.device)
    if not bool(mask[y].all()):
        raise UserError("ALG is computed on fine-tuning training data: every label must be a seen class "
                        "(pass the training logits, not test logits)")
    n_seen = int(mask.sum())
    if n_seen < 2:
        raise UserError("ALG needs at least two seen classes (a non-true seen class must exist)")
    wm = mask.to(torch.float64)
    seen_other = torch.empty(z.shape[0], dtype=torch.float64)
    absent = torch.empty(z.shape[0], dtype=torch.float64)
    for rows in row_chunks(z.shape[0], z.shape[1]):
        zc = z[rows].double()
        true = zc.gather(1, y[rows, None]).squeeze(1)
        seen_other[rows] = ((zc @ wm - true) / (n_seen - 1)).cpu()
        absent[rows] = ((zc @ (1 - wm)) / (z.shape[1] - n_seen)).cpu()
    return float(seen_other.mean() - absent.mean())


@dataclass
class PCVResult:
    """The PCV γ (mean over folds and seeds) and each fold's record."""

    gamma: float
    folds: List[Dict[str, Any]] = field(default_factory=list)

    def __float__(self) -> float:
        return self.gamma


def pcv_fold_gamma(logits: Any, labels: Any, train_classes: Any, pseudo_absent: Any,
                   reference_accuracy: float) -> Dict[str, Any]:
    """One PCV fold: the best-overall-accuracy γ subject to the pseudo-absent accuracy staying ≥ a reference.

    logits N×C: the model fine-tuned on ``train_classes`` evaluated on held-out data of the fine-tuning classes
    (labels N, each in ``train_classes`` or ``pseudo_absent``). γ is added to every class outside
    ``train_classes``. ``reference_accuracy``: the pre-trained model's accuracy on the pseudo-absent samples
    (over all classes). When no γ reaches it, the γ with the best pseudo-absent accuracy is taken.
    """
    z, y, _ = check_logits(logits, labels)
    st = steps(switch_stats(z, y, train_classes))
    pa_mask = seen_mask(pseudo_absent, z.shape[1], need_unseen=False)
    if not bool(pa_mask[y].any()):
        raise UserError("PCV needs held-out samples of the pseudo-absent classes")
    n_pa = int(pa_mask[y].sum())
    # Pseudo-absent samples are the only unseen-labelled ones here (U has no fine-tuning data).
    pa_acc = st.unseen_hits.double() / n_pa
    overall = (st.seen_hits + st.unseen_hits).double() / y.numel()
    feasible = pa_acc >= float(reference_accuracy) - 1e-12
    met = bool(feasible.any())
    gamma = best_gamma(st, overall, feasible) if met else best_gamma(st, pa_acc)
    g = torch.tensor([gamma], dtype=torch.float64)
    k = int(torch.searchsorted(st.edges, g, right=True)) - 1
    return {"gamma": gamma, "overall_accuracy": float(overall[k]), "pseudo_absent_accuracy": float(pa_acc[k]),
            "reference_accuracy": float(reference_accuracy), "constraint_met": met}


def pcv_gamma(finetune: Callable[[List[int], int], Any], pretrained_logits: Any, labels: Any, seen: Sequence[int],
              seeds: Sequence[int] = (0,)) -> PCVResult:
    """Pseudo cross-validation: split the fine-tuning classes S in halves, fine-tune on one half, treat the
    other as absent, pick γ per fold (:func:`pcv_fold_gamma`) and average over folds and seeds.

    ``finetune(train_classes, seed)`` (caller supplied) fine-tunes the pre-trained model on ``train_classes``
    only and returns its N×C logits on a fixed held-out set of the classes in S, whose labels are ``labels``;
    ``pretrained_logits`` N×C are the pre-trained model's logits on that same set (the reference accuracy).
    """
    pre, y, _ = check_logits(pretrained_logits, labels)
    s_ids = torch.nonzero(seen_mask(seen, pre.shape[1], need_unseen=False)).flatten()
    if s_ids.numel() < 2:
        raise UserError("PCV needs at least two fine-tuning classes to split")
    folds = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        perm = s_ids[torch.randperm(s_ids.numel(), generator=gen)]
        half = perm.numel() // 2
        a, b = sorted(perm[:half].tolist()), sorted(perm[half:].tolist())
        for train, held in ((a, b), (b, a)):
            keep = torch.isin(y, torch.tensor(train + held))
            pa = torch.isin(y, torch.tensor(held))
            ref = float((pre[pa].argmax(1) == y[pa]).double().mean()) if bool(pa.any()) else 0.0
            fz, _, _ = check_logits(finetune(list(train), int(seed)))
            if fz.shape != pre.shape:
                raise UserError(f"the PCV fine-tune function returned logits of shape {tuple(fz.shape)}, "
                                f"expected {tuple(pre.shape)}")
            rec = pcv_fold_gamma(fz[keep], y[keep], train, held, ref)
            rec.update(seed=int(seed), train_classes=train, pseudo_absent=held)
            folds.append(rec)
    return PCVResult(float(np.mean([f["gamma"] for f in folds])), folds)
