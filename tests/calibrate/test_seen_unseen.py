"""The exact seen-unseen curve and AUSUC against brute-force γ sweeps."""

import numpy as np
import pytest
import torch

from traitlens.calibrate import apply_gamma, ausuc, oracle_gamma, seen_unseen_curve
from traitlens.errors import UserError


def _accs(z, y, seen, gamma):
    pred = apply_gamma(z, seen, gamma).argmax(1)
    is_seen = np.isin(y, seen)
    return (pred == y)[is_seen].mean(), (pred == y)[~is_seen].mean()


def _trapezoid(points):
    xs = np.array([p[1] for p in points])
    ys = np.array([p[0] for p in points])
    order = np.lexsort((-ys, xs))  # by x, then y descending (a vertical step goes down)
    xs, ys = xs[order], ys[order]
    return float(((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1])).sum() / 2)


def _naive_breakpoints(z, seen):
    unseen = [c for c in range(z.shape[1]) if c not in set(seen)]
    return sorted({max(row[c] for c in seen) - max(row[c] for c in unseen) for row in z.tolist()})


def _brute_ausuc_midpoints(z, y, seen):
    b = _naive_breakpoints(z, seen)
    gammas = [b[0] - 10] + [(lo + hi) / 2 for lo, hi in zip(b[:-1], b[1:])] + [b[-1] + 10]
    return _trapezoid([_accs(z, y, seen, g) for g in gammas])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ausuc_equals_brute_force_on_continuous_logits(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(300, 12))
    z[:, :6] += 1.0  # seen classes score higher, as after fine-tuning
    y = rng.integers(0, 12, 300)
    z[np.arange(300), y] += 1.5
    seen = [0, 1, 2, 3, 4, 5]
    assert ausuc(z, y, seen) == pytest.approx(_brute_ausuc_midpoints(z, y, seen), abs=1e-6)


def test_ausuc_equals_dense_grid_sweep_with_ties():
    # Integer logits: many samples share a breakpoint, and classes tie inside the seen and unseen groups.
    rng = np.random.default_rng(3)
    z = rng.integers(-2, 3, size=(400, 8)).astype(np.float64)
    y = rng.integers(0, 8, 400)
    seen = [0, 2, 4, 6]
    assert len(_naive_breakpoints(z, seen)) < 10  # heavy ties
    grid = np.arange(-6.005, 6.0, 0.01)  # never on an integer breakpoint, hits every interval
    dense = _trapezoid([_accs(z, y, seen, g) for g in grid])
    assert ausuc(z, y, seen) == pytest.approx(dense, abs=1e-6)
    assert ausuc(torch.tensor(z, dtype=torch.float32), torch.tensor(y), seen) == pytest.approx(dense, abs=1e-6)


def test_curve_points_match_argmax_inside_each_interval():
    rng = np.random.default_rng(4)
    z = rng.integers(-3, 4, size=(250, 7)).astype(np.float32)
    y = rng.integers(0, 7, 250)
    seen = [1, 3, 5]
    g, acc_s, acc_u = seen_unseen_curve(z, y, seen)
    assert isinstance(g, np.ndarray) and g.dtype == np.float64 and np.isneginf(g[0])
    assert np.all(np.diff(g[1:]) > 0) and np.all(np.diff(acc_u) >= 0) and np.all(np.diff(acc_s) <= 0)
    inside = np.concatenate([[g[1] - 1], (g[1:-1] + g[2:]) / 2, [g[-1] + 1]])
    for k, gamma in enumerate(inside):
        s, u = _accs(z, y, seen, gamma)
        assert (acc_s[k], acc_u[k]) == pytest.approx((s, u), abs=1e-12)
    # endpoints: (s/s, 0) at -inf and (0, u/u) at +inf
    assert acc_u[0] == 0 and acc_s[-1] == 0


def test_ausuc_is_one_for_perfect_logits_and_shift_invariant():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 10, 500)
    z = rng.normal(scale=0.1, size=(500, 10))
    z[np.arange(500), y] += 5
    seen = [0, 1, 2, 3]
    assert ausuc(z, y, seen) == pytest.approx(1.0, abs=1e-12)
    # A constant bias on the absent classes moves the curve along γ but does not change it.
    z2 = rng.normal(size=(500, 10))
    z2[np.arange(500), y] += 1
    assert ausuc(apply_gamma(z2, seen, -3.7), y, seen) == pytest.approx(ausuc(z2, y, seen), abs=1e-12)


def test_oracle_gamma_beats_every_grid_gamma():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(400, 10))
    y = rng.integers(0, 10, 400)
    z[np.arange(400), y] += 2
    z[:, :5] += 2.5  # absent classes suppressed
    seen = [0, 1, 2, 3, 4]
    g = oracle_gamma(z, y, seen)
    best = (apply_gamma(z, seen, g).argmax(1) == y).mean()
    grid = max((apply_gamma(z, seen, t).argmax(1) == y).mean() for t in np.linspace(-10, 10, 2001))
    assert best >= grid and g > 0
    # nothing to gain -> γ = 0 exactly
    z0 = rng.normal(scale=0.01, size=(50, 4))
    y0 = rng.integers(0, 4, 50)
    z0[np.arange(50), y0] += 1
    assert oracle_gamma(z0, y0, [0, 1]) == 0.0


def test_user_errors():
    z = np.zeros((4, 3))
    with pytest.raises(UserError):
        ausuc(z, np.array([0, 0, 1, 1]), [0, 1])  # no absent-class samples
    with pytest.raises(UserError):
        ausuc(z, np.array([0, 0, 1, 2]), [0, 1, 2])  # no absent classes
    with pytest.raises(UserError):
        ausuc(z, np.array([0, 0, 1, 5]), [0, 1])  # label out of range
    with pytest.raises(UserError):
        ausuc(np.zeros(3), np.zeros(3), [0])
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError):
        ausuc(bad, np.array([0, 0, 1, 2]), [0, 1])


def test_scattered_seen_classes_take_the_gather_path_and_agree():
    # 20 seen runs + 20 absent runs: more than the slice path handles, so the gather path runs.
    rng = np.random.default_rng(7)
    z = rng.integers(-2, 3, size=(300, 40)).astype(np.float32)
    y = rng.integers(0, 40, 300)
    seen = list(range(0, 40, 2))
    grid = np.arange(-6.005, 6.0, 0.01)
    dense = _trapezoid([_accs(z, y, seen, g) for g in grid])
    assert ausuc(z, y, seen) == pytest.approx(dense, abs=1e-6)
    # same problem with the classes renumbered so that seen is one contiguous run (the slice path)
    perm = np.array(seen + list(range(1, 40, 2)))
    inv = np.argsort(perm)
    assert ausuc(z[:, perm], inv[y], list(range(20))) == pytest.approx(dense, abs=1e-6)
