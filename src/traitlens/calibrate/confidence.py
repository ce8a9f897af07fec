"""Confidence calibration extras: expected calibration error and temperature scaling.

Both keep the argmax, so neither restores the absent classes' accuracy; they are here to show exactly that
next to the γ bias, which does change the argmax.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from traitlens.calibrate._arrays import check_logits
from traitlens.errors import UserError


def expected_calibration_error(logits: Any, labels: Any, bins: int = 15) -> float:
    """ECE of the softmax confidence: Σ_b (|b|/N)·|accuracy(b) − confidence(b)| over equal-width bins."""
    z, y, _ = check_logits(logits, labels)
    if y is None or y.numel() == 0:
        raise UserError("ECE needs labelled samples")
    if bins < 1:
        raise UserError("bins must be >= 1")
    p = torch.softmax(z.double(), dim=1)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    idx = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)
    n = torch.bincount(idx, minlength=bins).double()
    acc_sum = torch.zeros(bins, dtype=torch.float64, device=z.device).index_add_(0, idx, correct)
    conf_sum = torch.zeros(bins, dtype=torch.float64, device=z.device).index_add_(0, idx, conf)
    return float((acc_sum - conf_sum).abs().sum() / y.numel())


def _nll(z: torch.Tensor, y: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(z / temperature, y))


def fit_temperature(logits: Any, labels: Any, lo: float = 0.05, hi: float = 20.0, iters: int = 60) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(z / T)`` on held-out labelled logits.

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search over [lo, hi] finds it.
    """
    z, y, _ = check_logits(logits, labels)
    if y is None or y.numel() == 0:
        raise UserError("temperature scaling needs labelled held-out samples")
    z = z.double()
    a, b = math.log(lo), math.log(hi)
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = _nll(z, y, math.exp(c)), _nll(z, y, math.exp(d))
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = _nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = _nll(z, y, math.exp(d))
    return math.exp((a + b) / 2)
