"""apply_gamma, ALG and PCV."""

import numpy as np
import pytest
import torch

from traitlens.calibrate import accuracy_table, alg_gamma, apply_gamma, pcv_fold_gamma, pcv_gamma
from traitlens.errors import UserError


def test_gamma_zero_changes_nothing_and_kind_is_kept():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 6, 50)
    out = apply_gamma(z, [0, 1, 2], 0.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and np.array_equal(out, z)
    t = torch.from_numpy(z)
    out_t = apply_gamma(t, torch.tensor([0, 1, 2]), 0.0)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, t)
    assert accuracy_table(z, y, [0, 1, 2], 0.0)["y/y"] == pytest.approx((z.argmax(1) == y).mean())
    shifted = apply_gamma(z, [0, 1, 2], 2.5)
    assert np.allclose(shifted[:, 3:] - z[:, 3:], 2.5) and np.array_equal(shifted[:, :3], z[:, :3])


def test_alg_equals_hand_computed_example():
    # seen = {0, 1, 2}, absent = {3}
    z = np.array([[3.0, 1.0, 2.0, 0.0],     # y=0: non-true seen mean (1+2)/2 = 1.5, absent mean 0
                  [0.0, 4.0, -1.0, -2.0]])  # y=1: non-true seen mean (0-1)/2 = -0.5, absent mean -2
    y = np.array([0, 1])
    # γ = mean(1.5, -0.5) - mean(0, -2) = 0.5 + 1 = 1.5
    assert alg_gamma(z, y, [0, 1, 2]) == pytest.approx(1.5)
    assert alg_gamma(torch.tensor(z, dtype=torch.float32), torch.tensor(y), [0, 1, 2]) == pytest.approx(1.5)


def test_alg_refuses_test_data_with_absent_labels():
    z = np.zeros((3, 4))
    with pytest.raises(UserError, match="training"):
        alg_gamma(z, np.array([0, 1, 3]), [0, 1, 2])
    with pytest.raises(UserError):
        alg_gamma(z, np.array([0, 0, 0]), [0])  # one seen class: no non-true seen logit


def _toy_problem(seed=0, n=600, c=12, suppress=3.0):
    """Pre-trained logits that are fair for all classes; 'fine-tuning' on T sharpens every class's margin (better
    features, as the paper finds) but adds `suppress` to T's logits (the logit-scale gap)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    pre = rng.normal(size=(n, c))
    pre[np.arange(n), y] += 1.5

    def finetune(train, s):
        z = np.random.default_rng(100 + s).normal(size=pre.shape)
        z[np.arange(n), y] += 2.5
        z[:, train] += suppress
        return z
    return pre, y, finetune


def test_pcv_fold_respects_the_reference_accuracy():
    pre, y, finetune = _toy_problem()
    train, held = [0, 1, 2], [3, 4, 5]
    keep = np.isin(y, train + held)
    z = finetune(train, 0)[keep]
    pa = np.isin(y[keep], held)
    ref = (pre[keep][pa].argmax(1) == y[keep][pa]).mean()
    rec = pcv_fold_gamma(z, y[keep], train, held, ref)
    assert rec["constraint_met"]
    pred = apply_gamma(z, train, rec["gamma"]).argmax(1)
    assert (pred == y[keep])[pa].mean() == pytest.approx(rec["pseudo_absent_accuracy"])
    assert rec["pseudo_absent_accuracy"] >= ref
    # unreachable reference: falls back to the best pseudo-absent accuracy
    rec2 = pcv_fold_gamma(z, y[keep], train, held, 1.01)
    assert not rec2["constraint_met"] and rec2["gamma"] > rec["gamma"] - 1e-9


def test_pcv_recovers_the_suppression_scale():
    pre, y, finetune = _toy_problem(suppress=3.0)
    seen = list(range(6))
    keep = np.isin(y, seen)
    calls = []

    def ft(train, seed):
        calls.append((tuple(train), seed))
        return finetune(train, seed)[keep]
    res = pcv_gamma(ft, pre[keep], y[keep], seen, seeds=(0, 1))
    assert len(res.folds) == 4 and len(calls) == 4
    assert float(res) == pytest.approx(np.mean([f["gamma"] for f in res.folds]))
    for f in res.folds:
        assert sorted(f["train_classes"] + f["pseudo_absent"]) == seen
    # the true offset is 3: PCV's γ lands near it and restores absent accuracy on the real split
    assert 1.5 < res.gamma < 4.5
    z = finetune(seen, 0)
    before = accuracy_table(z, y, seen, 0.0)
    after = accuracy_table(z, y, seen, res.gamma)
    assert after["u/y"] > before["u/y"] + 0.3 and after["y/y"] > before["y/y"]
