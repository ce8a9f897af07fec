"""Accuracy table, NCM, ECE and temperature scaling."""

import numpy as np
import pytest
import torch

from traitlens.calibrate import (accuracy_table, expected_calibration_error, fit_temperature, ncm_accuracy,
                                 ncm_logits)


def test_accuracy_table_by_hand():
    seen = [0, 1]
    z = np.array([[5, 0, 1, 0],    # y=0 seen: correct everywhere
                  [0, 2, 3, 0],    # y=1 seen: wrong over all (2 wins), right over seen
                  [0, 3, 2, 0],    # y=2 absent: wrong over all, right over absent
                  [0, 0, 1, 4]], dtype=np.float32)  # y=3 absent: correct
    y = np.array([0, 1, 2, 3])
    t = accuracy_table(z, y, seen)
    assert t == {"y/y": 0.5, "s/y": 0.5, "u/y": 0.5, "s/s": 1.0, "u/u": 1.0, "top1": 0.5, "top5": 1.0}
    t2 = accuracy_table(torch.from_numpy(z), torch.from_numpy(y), seen, gamma=0.5)  # sample 2: 2.5 < 3, still wrong
    assert t2["u/y"] == 0.5 and t2["s/y"] == 0.5
    t3 = accuracy_table(z, y, seen, gamma=2.0)  # sample 1: 2 vs 5 -> wrong; sample 2: class 2 = 4 > 3 -> right
    assert t3["u/y"] == 1.0 and t3["s/y"] == 0.5 and t3["s/s"] == 1.0


def test_ncm_on_clustered_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16)) * 3
    ry = np.repeat(np.arange(6), 20)
    ref = centers[ry] + rng.normal(size=(120, 16))
    y = rng.integers(0, 6, 60)
    f = centers[y] + rng.normal(size=(60, 16))
    t = ncm_accuracy(f, y, ref, ry, [0, 1, 2], 6)
    assert t["y/y"] == 1.0
    sim = ncm_logits(torch.tensor(f), torch.tensor(ref), torch.tensor(ry), 8)
    assert isinstance(sim, torch.Tensor) and sim.shape == (60, 8) and torch.isinf(sim[:, 6:]).all()


def test_ece_and_temperature():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4000, 5)) * 1.5
    p = np.exp(base) / np.exp(base).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((4000, 1))).argmax(1)  # labels drawn from softmax(base): calibrated at T=1
    assert expected_calibration_error(base, y) < 0.03
    over = base * 3  # over-confident logits, true temperature 3
    assert expected_calibration_error(over, y) > 0.1
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(over / t, y) < 0.03
    # temperature keeps the argmax: accuracy unchanged
    assert ((over / t).argmax(1) == over.argmax(1)).all()
