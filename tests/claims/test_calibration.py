"""The paper's experiment on the synthetic collection (domain A → B), and the demo section around it.

Measured by ``make claims`` (``claims.calibration("broad", seed)``: the demo's 12 species, 60 images each,
64 px, the embedded tiny ViT, pre-trained 15 epochs in domain A, fine-tuned lr 0.003 × 10 epochs in domain B on
6 species, 1 torch thread), in %, seed 0 / 1 / 2:

    pre-trained: A y/y 84.7/83.3/84.7, B y/y 47.2/55.6/52.8, B s/y 37.5/54.2/44.4, B u/y 56.9/56.9/61.1
    fine-tuned:  s/y 86.1/84.7/88.9, u/y 25.0/9.7/4.2, y/y 55.6/47.2/46.5
    NCM u/u:     pre-trained 79.2/73.6/72.2, fine-tuned 79.2/70.8/72.2
    ALG:         γ 1.39/1.32/0.93, u/y 37.5/37.5/18.1, s/y 86.1/81.9/88.9, y/y 61.8/59.7/53.5
    PCV:         γ 1.81/2.57/1.65, u/y 38.9/61.1/31.9, s/y 84.7/69.4/87.5, y/y 61.8/65.3/59.7
    oracle:      γ 2.94/2.20/2.87, u/y 65.3/61.1/54.2, y/y 72.2/68.8/66.7
    AUSUC:       pre-trained .377/.395/.375, fine-tuned .637/.597/.562
    ECE:         fine-tuned .064/.151/.191, after temperature scaling .067/.096/.123

Fragile, so reported and not asserted: PCV keeps the fine-tuning species (s/y −1.4 / −15.3 / −1.4 points) only
where its γ stays below the oracle's; at seed 1 it overshoots (2.57 against 2.20). Temperature scaling lowers
ECE at seeds 1 and 2 but raises it slightly at seed 0 (.0643 → .0672): the validation split it is fitted on
(72 images) is small. ALG's cost on the fine-tuning species is at most 2.8 points (2 images).

The same with ``backbone="embedded-cnn"`` (not asserted; why the ViT is the default):

    pre-trained: B y/y 52.1/46.5/45.8, u/y 56.9/56.9/31.9;  fine-tuned: s/y 86.1/91.7/81.9, u/y 0.0/0.0/0.0
    NCM u/u:     pre-trained 79.2/75.0/87.5, fine-tuned 81.9/68.1/79.2
    ALG:         γ 6.97/7.87/6.36 (oracle 5.95/8.13/6.79), u/y 47.2/34.7/40.3, s/y 76.4/76.4/75.0

Every margin below holds for all three seeds with room for the small numeric drift of an embedded backbone
pretrained afresh on another machine (1 test image = 1.4 points of u/y or s/y).
"""

import pytest

from traitlens.studies import claims



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
    # one bias brings absent species back (measured +12.5 / +27.8 / +13.9 points of u/y with ALG, +13.9 / +51.4 /
    # +27.8 with PCV) and lifts the overall accuracy (y/y +6.2 / +12.5 / +7.0 ALG, +6.2 / +18.1 / +13.2 PCV)
    for m in ("alg", "pcv"):
        assert t[m]["u/y"] > t["fine-tuned"]["u/y"] + 0.06, m
        assert t[m]["y/y"] >= t["fine-tuned"]["y/y"] + 0.03, m
    # ALG's bias costs the fine-tuning species little (0 / −2.8 / 0 points); PCV's is fragile (docstring)
    assert t["alg"]["s/y"] >= t["fine-tuned"]["s/y"] - 0.05
    assert t["oracle"]["y/y"] >= t["pcv"]["y/y"] and t["oracle"]["y/y"] >= t["alg"]["y/y"]
    # the best single bias recovers most of what fine-tuning took from the absent species (126 / 109 / 88%
    # measured); ALG chooses a third to a half of its γ here, so it recovers less
    lost = t["pre-trained"]["u/y"] - t["fine-tuned"]["u/y"]
    assert t["oracle"]["u/y"] - t["fine-tuned"]["u/y"] >= 0.7 * lost
    assert 0 < r["gamma"]["alg"] < r["gamma"]["oracle"]
    assert r["ausuc"]["fine-tuned"] > r["ausuc"]["pre-trained"] + 0.1
    assert r["mean_logit"]["fine-tuned absent"] < r["mean_logit"]["fine-tuned seen"]
    # Temperature scaling's ECE and PCV's cost on the fine-tuning species are fragile: reported, not asserted.
