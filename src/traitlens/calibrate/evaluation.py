"""One call that evaluates a fine-tuned model's logits before and after each γ method.

:func:`calibration_result` gathers the accuracy table per method, the γ values, AUSUC and the seen-unseen
curve into one JSON-ready dict (:func:`traitlens.report.plots.seen_unseen_figure` draws that curve).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from traitlens.calibrate._arrays import check_logits, seen_mask
from traitlens.calibrate.accuracy import accuracy_table
from traitlens.calibrate.bias import alg_gamma
from traitlens.calibrate.seen_unseen import ausuc, oracle_gamma, seen_unseen_curve
from traitlens.errors import UserError

METHODS = ("alg", "pcv", "oracle")
# The plot keeps at most this many curve points (the AUSUC itself always uses all of them).
MAX_PLOT_POINTS = 4000


def parse_methods(spec: str) -> list:
    """``"all"`` or a comma-separated subset of alg, pcv, oracle."""
    names = list(METHODS) if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise UserError(f"unknown calibration method {','.join(bad) or spec!r}; choose alg, pcv, oracle or all")
    return names


def calibration_result(logits: Any, labels: Any, seen: Any, methods: Sequence[str] = METHODS, *,
                       train_logits: Any = None, train_labels: Any = None,
                       gammas: Optional[Mapping[str, float]] = None,
                       extra_tables: Optional[Mapping[str, Dict[str, float]]] = None) -> Dict[str, Any]:
    """Evaluate test ``logits`` N×C (``labels`` N) of a model fine-tuned on ``seen`` before/after calibration.

    ``alg`` needs ``train_logits``/``train_labels`` (the fine-tuned model on its own training data: ALG never
    looks at test data); ``oracle`` uses the test labels (an upper bound); ``pcv`` needs re-fine-tuning, so its γ
    comes in through ``gammas={"pcv": ...}``. A method that cannot run is listed under ``skipped`` with the
    reason. ``extra_tables`` (e.g. the pre-trained model, NCM) are added to ``tables`` as they are.
    """
    z, y, _ = check_logits(logits, labels)
    mask = seen_mask(seen, z.shape[1])
    seen_ids = torch.nonzero(mask).flatten().tolist()
    chosen: Dict[str, float] = {}
    skipped: Dict[str, str] = {}
    given = dict(gammas or {})
    for m in methods:
        if m in given:
            chosen[m] = float(given[m])
        elif m == "alg":
            if train_logits is None or train_labels is None:
                skipped[m] = "needs the fine-tuned model's logits on its training data (train_logits, train_labels)"
            else:
                chosen[m] = alg_gamma(train_logits, train_labels, seen_ids)
        elif m == "oracle":
            chosen[m] = oracle_gamma(z, y, seen_ids)
        elif m == "pcv":
            skipped[m] = "needs re-fine-tuning on halves of the seen classes (use --pretrained/--finetuned/--data)"
    tables = dict(extra_tables or {})
    tables["fine-tuned"] = accuracy_table(z, y, seen_ids, 0.0)
    for m, g in chosen.items():
        tables[m] = accuracy_table(z, y, seen_ids, g)
    result: Dict[str, Any] = {"num_classes": int(z.shape[1]), "seen": seen_ids,
                              "num_samples": int(z.shape[0]), "gamma": chosen, "skipped": skipped,
                              "tables": tables, "ausuc": None, "curve": None}
    is_seen = mask[y]
    if bool(is_seen.any()) and bool((~is_seen).any()):
        result["ausuc"] = ausuc(z, y, seen_ids)
        g, acc_s, acc_u = seen_unseen_curve(z, y, seen_ids)
        keep = _thin(g.numel())
        result["curve"] = {"gamma_from": g[keep].tolist(), "acc_seen": acc_s[keep].tolist(),
                           "acc_unseen": acc_u[keep].tolist(), "points": int(g.numel())}
    return result


def _thin(n: int) -> torch.Tensor:
    if n <= MAX_PLOT_POINTS:
        return torch.arange(n)
    return torch.unique(torch.linspace(0, n - 1, MAX_PLOT_POINTS).round().long())


# The table's columns (Mai et al., NeurIPS 2024): which images are counted, among which classes predicted.
CALIBRATION_HEADINGS = {
    "y/y": "accuracy on all test images, predicting among all classes",
    "s/y": "accuracy on the classes seen in fine-tuning, predicting among all classes",
    "u/y": "accuracy on the classes absent from fine-tuning, predicting among all classes (what calibration "
           "restores)",
    "s/s": "accuracy on the seen classes, predicting among the seen classes only",
    "u/u": "accuracy on the absent classes, predicting among the absent classes only (how good their features are)",
    "top5": "top-5 accuracy on all test images",
}


def format_table(tables: Mapping[str, Mapping[str, float]], gammas: Mapping[str, float]) -> str:
    """A plain-text table, columns aligned to the longest entry: one row per model/method, accuracies as
    fractions, followed by what each column means."""
    keys = [k for k in CALIBRATION_HEADINGS if any(k in t for t in tables.values())]
    header = ["model", "γ"] + keys
    body = []
    for name, t in tables.items():
        g = gammas.get(name, 0.0 if name == "fine-tuned" else None)
        body.append([name, "" if g is None else f"{g:.3f}"] + [_fraction(t.get(k)) for k in keys])
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body] + [""]
    lines += [f"{k:>4}  {CALIBRATION_HEADINGS[k]}" for k in keys]
    return "\n".join(lines)


def _fraction(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def load_logits_npz(path) -> Dict[str, np.ndarray]:
    """Read ``logits`` N×C, ``labels`` N, ``seen`` and optionally ``train_logits``/``train_labels`` from .npz."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"logits file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read {p} as a .npz of arrays: {exc}") from None
    missing = [k for k in ("logits", "labels", "seen") if k not in arrays]
    if missing:
        raise UserError(f"{p} lacks the array(s) {', '.join(missing)} (need logits N×C, labels N, seen)")
    if ("train_logits" in arrays) != ("train_labels" in arrays):
        raise UserError(f"{p} must hold both train_logits and train_labels, or neither")
    if "train_logits" in arrays and arrays["train_logits"].shape[1:] != arrays["logits"].shape[1:]:
        raise UserError(f"{p}: train_logits must have the same number of classes as logits")
    return arrays
