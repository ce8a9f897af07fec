"""The trait atlas names the right trait (:func:`traitlens.studies.claims.atlas`).

For every sibling pair of the collection, is the atlas' top-ranked part one of the pair's diagnostic parts
(the pair table of ``traits.json``)? Precision@1 and mean reciprocal rank per evidence source: Finer-CAM
alone, Grad-CAM alone (the control), the intervention alone (removing the part vs a random region of the same
area, p(A) − p(B) over the pair), and the combined ranking; parts from the true masks and propagated by
segmentation by tracking from one labelled training specimen per species. ``pytest -s`` prints the tables.

Broad scale (``make claims``): the demo's classifiers (tiny ViT and CNN fine-tuned from the embedded backbones,
12 species, 12 sibling pairs, the 144 test images), seed 0. Measured precision@1 (MRR):

    ViT, true masks:  Finer-CAM 0.667 (0.833), Grad-CAM 0.250 (0.388), intervention 0.833 (0.917),
                      combined 0.917 (0.958); SST parts: the same but intervention 0.750 (0.875)
    CNN, true masks:  Finer-CAM 0.417 (0.629), Grad-CAM 0.250 (0.512), intervention 0.667 (0.790),
                      combined 0.667 (0.792); SST parts: Finer-CAM 0.333, intervention 0.667, combined 0.667
    CNN in CI (classifiers trained afresh on the CI machine): true masks intervention 0.750 (0.836), combined
                      0.750 (0.840); SST parts intervention 0.667, combined 0.667 (0.792)

So the issue's ViT figure holds (≥ 0.90: 11 of 12 pairs), but the CNN's does not (0.667–0.750, not ≥ 0.80):
its 8×8 maps cannot tell a crest or an eye ring from the head they sit on, and the head often wins. The issue's
"SST within 5 points of the true masks" cannot be resolved with 12 pairs (one pair is 8.3 points): it is
asserted as "at most one pair of 12 differs". The ViT's SST ranking equals its masks ranking; the CNN's was
equal locally and one pair lower (0.667 vs 0.750) in CI. Asserted: what holds, and the CNN's figure with a margin.
Cost (process CPU time, one thread): the ViT's evidence pass with masks 10.2 s (CNN 5.7 s), SST for the 144
images 15.3 s; pairs without a localised trait: 1 (ViT) and 3 (CNN) of 12.

Tiny scale (``make test``): the Finer-CAM claim's tiny-vit and tiny-cnn (trained from scratch on 6 species at
32 px; the same memo entries, so ``make test`` trains them once), 6 sibling pairs, seed 0. Measured seeds 0 /
1 / 2 (precision@1, before the control regions were seeded per image; seed 0 after: ViT intervention 0.67, CNN
0.83, the rest unchanged): ViT combined 0.83 / 0.67 / 0.67, Finer-CAM 0.67 / 0.33 / 0.50, intervention 0.83 /
1.00 / 0.67, Grad-CAM 0.00 / 0.00 / 0.00; CNN combined 0.50 / 0.33 / 0.67, Grad-CAM 0.00; SST parts: ViT
combined the same as with masks at every seed. Margins: about half the smallest measured gap (one pair = 0.167).
"""

import pytest

from traitlens.studies import claims
from traitlens.studies.recipes import atlas


def _report(name, r):
    for parts in ("masks", "sst"):
        print(f"{name} {parts}: " + ", ".join(f"{k} P@1 {v['precision_at_1']:.3f} MRR {v['mrr']:.3f}"
                                               for k, v in r[parts].items()))
    print(f"{name}: evidence {r['cpu_seconds']:.1f} s CPU, SST {r['sst_cpu_seconds']:.1f} s, "
          f"not localised: {r['not_localised']}")


def _p1(r, parts, source):
    return r[parts][source]["precision_at_1"]


@pytest.mark.parametrize("seed", atlas("tiny").seeds)
def test_tiny_atlas_finds_diagnostic_parts_better_than_grad_cam(seed):
    r = claims.atlas("tiny", seed)
    vit, cnn = r["vit"], r["cnn"]
    _report(f"tiny vit seed {seed}", vit)
    _report(f"tiny cnn seed {seed}", cnn)
    assert vit["pairs"] == cnn["pairs"] == 6
    assert _p1(vit, "masks", "combined") >= _p1(vit, "masks", "gradcam") + 0.5
    assert _p1(vit, "masks", "finer") >= _p1(vit, "masks", "gradcam") + 0.16
    assert _p1(vit, "masks", "intervention") >= _p1(vit, "masks", "gradcam") + 0.5
    assert _p1(cnn, "masks", "combined") >= _p1(cnn, "masks", "gradcam") + 0.16
    assert abs(_p1(vit, "sst", "combined") - _p1(vit, "masks", "combined")) <= 0.17
    assert vit["cpu_seconds"] < 30 and cnn["cpu_seconds"] < 30


@pytest.mark.claims
@pytest.mark.parametrize("seed", atlas("broad").seeds)
def test_broad_atlas_names_the_diagnostic_part(seed):
    r = claims.atlas("broad", seed)
    vit, cnn = r["vit"], r["cnn"]
    _report(f"broad vit seed {seed}", vit)
    _report(f"broad cnn seed {seed}", cnn)
    assert vit["pairs"] == cnn["pairs"] == 12
    # the figures: ViT >= 90% (holds); SST parts as good as the true masks, to the resolution of 12 pairs
    # (at most one pair differs: measured 0 for the ViT, 0 or 1 for the CNN)
    assert _p1(vit, "masks", "combined") >= 0.90
    one_pair = 1 / vit["pairs"] + 1e-9
    for m in (vit, cnn):
        assert abs(_p1(m, "sst", "combined") - _p1(m, "masks", "combined")) <= one_pair
    # Finer-CAM adds over Grad-CAM, the intervention most; the CNN's 80% does not hold (0.667), asserted as measured
    assert _p1(vit, "masks", "finer") >= _p1(vit, "masks", "gradcam") + 0.3
    assert _p1(vit, "masks", "intervention") >= _p1(vit, "masks", "gradcam") + 0.4
    assert _p1(cnn, "masks", "combined") >= 0.6 and _p1(cnn, "masks", "combined") >= _p1(cnn, "masks", "gradcam") + 0.3
    assert vit["masks"]["combined"]["mrr"] >= 0.9
    # cost: the evidence pass of the demo collection well under 2 minutes of one core (measured 12 s and 6 s)
    assert vit["cpu_seconds"] < 60 and cnn["cpu_seconds"] < 60
