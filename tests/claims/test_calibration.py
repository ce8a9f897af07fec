"""The paper's experiment on the synthetic collection (domain A → B), and the demo section around it.

Margins measured with ``ExperimentConfig(seed=s)`` (the demo's 12 species, 60 images each, 64 px, embedded tiny
ViT, pre-trained 15 epochs in domain A, fine-tuned lr 0.003 × 10 epochs in domain B on 6 species, 1 torch thread)
for seeds 0, 1, 2 (in %, seed 0 / 1 / 2):

    pre-trained: A y/y 83.3/84.0/84.0, B y/y 45.1/53.5/48.6, B u/y 55.6/58.3/55.6
    fine-tuned:  s/y 81.9/81.9/87.5, u/y 22.2/8.3/5.6, y/y 52.1/45.1/46.5
    NCM u/u:     pre-trained 79.2/73.6/72.2, fine-tuned 79.2/75.0/73.6
    ALG:         γ 1.35/1.24/0.96, u/y 33.3/33.3/15.3, s/y 81.9/81.9/87.5, y/y 57.6/57.6/51.4
    PCV:         γ 1.58/1.39/1.71, u/y 33.3/37.5/33.3, s/y 81.9/80.6/87.5, y/y 57.6/59.0/60.4
    oracle:      γ 2.88/2.59/2.61, u/y 59.7/62.5/48.6, s/y 75.0/68.1/84.7, y/y 67.4/65.3/66.7
    AUSUC:       pre-trained .348/.403/.353, fine-tuned .554/.540/.574

The same with ``backbone="embedded-cnn"`` (not asserted; why the ViT is the default):

    pre-trained: B y/y 52.1/46.5/45.8, u/y 56.9/56.9/31.9;  fine-tuned: s/y 86.1/91.7/81.9, u/y 0.0/0.0/0.0
    NCM u/u:     pre-trained 79.2/75.0/87.5, fine-tuned 81.9/68.1/79.2
    ALG:         γ 6.97/7.87/6.36 (oracle 5.95/8.13/6.79), u/y 47.2/34.7/40.3, s/y 76.4/76.4/75.0

The tests run seeds 0, 1 and 2; every margin below holds for all three with room for the small numeric drift of an
embedded backbone pretrained afresh in the test session (1 test image = 1.4 points of u/y or s/y).
"""

import pytest

from traitlens.studies import claims

# make claims runs each group on one worker (--dist loadgroup): the Prompt-CAM/INTR claims on one, these on the other
pytestmark = pytest.mark.xdist_group("other-claims")


def _report(scale, seed, r):
    t = r["tables"]
    print(f"{scale} seed {seed}: " + ", ".join(f"{k} u/y {t[k]['u/y']:.3f} s/y {t[k]['s/y']:.3f}" for k in t)
          + f"; gamma {r['gamma']}; ECE {r['ece']}")


# Tiny (make test): the tiny CNN from random weights, 6 species at 32 px, pre-trained 15 epochs in domain A
# (A y/y 0.46 / 0.27 / 0.38 at seeds 0 / 1 / 2, chance 0.17), fine-tuned on 3 species. Measured: absent
# species' u/y 0.21 / 0.38 / 0.21 → 0.00 / 0.00 / 0.00 after fine-tuning; ALG brings 0.21 / 0.25 / 0.17 back,
# PCV 0.08 / 0.29 / 0.25; the over-confident fine-tuned model's ECE 0.29 / 0.27 / 0.25 falls to 0.17 / 0.06 /
# 0.13 with temperature scaling. (24 absent test images: one image is 0.04 of u/y.)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_fine_tuning_forgets_and_one_bias_restores(seed):
    r = claims.calibration("tiny", seed)
    _report("tiny", seed, r)
    t = r["tables"]
    assert t["fine-tuned"]["u/y"] <= t["pre-trained"]["u/y"] - 0.15
    assert t["alg"]["u/y"] >= t["fine-tuned"]["u/y"] + 0.1
    assert t["pcv"]["u/y"] >= t["fine-tuned"]["u/y"] + 0.04
    assert r["ece"]["fine-tuned + temperature"] < r["ece"]["fine-tuned"] - 0.05


@pytest.mark.claims
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_restores_absent_classes(seed):
    r = claims.calibration("broad", seed)  # the session's embedded ViT: pretrained once per session
    _report("broad", seed, r)
    t, ncm = r["tables"], r["ncm"]
    # a moderate domain gap: the pre-trained model is good in A and still far above chance (8%) in B
    assert t["pre-trained (domain A)"]["y/y"] > 0.75 and 0.35 < t["pre-trained"]["y/y"] < 0.65
    # fine-tuning on half the species learns them and collapses the other half's accuracy ...
    assert t["fine-tuned"]["s/y"] > t["pre-trained"]["s/y"] + 0.2
    assert t["fine-tuned"]["u/y"] < t["pre-trained"]["u/y"] - 0.25
    # ... while their features stay (NCM on the fine-tuned features is no worse than before)
    assert ncm["fine-tuned"]["u/u"] >= ncm["pre-trained"]["u/u"] - 0.04
    # one bias brings absent species back and the fine-tuning species do not pay for it (≤ 2 points)
    for m in ("alg", "pcv"):
        assert t[m]["u/y"] > t["fine-tuned"]["u/y"] + 0.06, m
        assert t[m]["y/y"] >= t["fine-tuned"]["y/y"] + 0.02, m
    assert t["alg"]["s/y"] >= t["fine-tuned"]["s/y"] - 0.02
    assert t["pcv"]["s/y"] >= t["fine-tuned"]["s/y"] - 0.03
    assert t["oracle"]["y/y"] >= t["pcv"]["y/y"] and t["oracle"]["y/y"] >= t["alg"]["y/y"]
    # the best single bias recovers most of what fine-tuning took from the absent species (86-112% measured);
    # ALG and PCV choose about half of its γ here (see the module docstring), so they recover less
    lost = t["pre-trained"]["u/y"] - t["fine-tuned"]["u/y"]
    assert t["oracle"]["u/y"] - t["fine-tuned"]["u/y"] >= 0.7 * lost
    assert 0 < r["gamma"]["alg"] < r["gamma"]["oracle"]
    assert r["ausuc"]["fine-tuned"] > r["ausuc"]["pre-trained"] + 0.1
    assert r["mean_logit"]["fine-tuned absent"] < r["mean_logit"]["fine-tuned seen"]
    # Temperature scaling's ECE is not asserted here: it is fragile (module docstring).
