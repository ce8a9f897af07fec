"""The trait atlas names the right trait (:func:`traitlens.studies.claims.atlas`).

For every sibling pair of the collection, is the atlas' top-ranked part one of the pair's diagnostic parts
(the pair table of ``traits.json``)? Precision@1 and mean reciprocal rank per evidence source: Finer-CAM
alone, Grad-CAM alone (the control), the intervention alone (removing the part vs a random region of the same
area, p(A) − p(B) over the pair), and the combined ranking; parts from the true masks and propagated by
segmentation by tracking from one labelled training specimen per species. ``pytest -s`` prints the tables.

Broad scale (``make claims``): the demo's classifiers (tiny ViT and CNN fine-tuned from the embedded backbones,
12 species, 12 sibling pairs, the 144 test images), seed 0, measured on the classifiers CI trained (its cache).
Precision@1 (MRR):

    ViT, true masks:  Finer-CAM 0.667 (0.833), Grad-CAM 0.250 (0.388), intervention 0.833 (0.917),
                      combined 0.917 (0.958); SST parts: the same (Grad-CAM MRR 0.384)
    CNN, true masks:  Finer-CAM 0.750 (0.824), Grad-CAM 0.333 (0.497), intervention 0.750 (0.836),
                      combined 0.750 (0.840); SST parts: Finer-CAM 0.667, intervention 0.667, combined 0.750

The CNN's CAMs are taken at its finest stage with at least 14 cells along the side (``layer1``, 16×16; before,
the 8×8 last stage: Finer-CAM 0.417, Grad-CAM 0.250, combined 0.750 and 0.667 with SST parts):
:func:`traitlens.atlas.evidence.fine_cnn_stage`. Classifiers of training seeds 1 and 2 (the Finer-CAM claim's)
agree: Finer-CAM 0.417 → 0.667 / 0.750, combined 0.750 → 0.833 / 0.750. So the issue's ViT figure holds (≥ 0.90:
11 of 12 pairs) and the CNN's does not (0.750, not ≥ 0.80): the pairs it misses are Chlorornis modesta vs alba
(2 of 12 images of modesta classified correctly; no source finds the tail band), C. robusta vs alba (Finer-CAM
names the wing spot, the intervention the crest, not significantly above its control) and Xanthura fusca vs
occidentalis (Finer-CAM names the crest, removing the head it sits on hurts more). Neither a rank fusion of the
sources, Layer-CAM, nor ranking the intervention by its interval's lower bound reached 0.80 on all three seeds.
The ViT's 0.917 is seed 0's: seeds 1 and 2 give 0.750 and 0.833. The issue's "SST within 5 points of the true
masks" cannot be resolved with 12 pairs (one pair is 8.3 points): it is asserted as "at most one pair of 12
differs" (measured 0 for both models). Asserted: what holds, and the CNN's figures with a margin of about two
pairs. Cost (process CPU time, one thread): the ViT's evidence pass with masks 8.0 s (CNN 5.4 s), SST for the
144 images 11.8 s; pairs without a localised trait: 1 (ViT) and 2 (CNN) of 12.

Tiny scale (``make test``): the Finer-CAM claim's tiny-vit and tiny-cnn (trained from scratch on 6 species at
32 px; the same memo entries, so ``make test`` trains them once), 6 sibling pairs, seed 0. Measured precision@1
(one pair = 0.167): ViT Finer-CAM 0.667, Grad-CAM 0.000, intervention 0.833, combined 0.833 (SST parts: the
same); CNN Finer-CAM 0.333, Grad-CAM 0.000, intervention 0.667, combined 0.500. The CNN's test images are resized
to its 64 px input, so the stage rule takes ``layer1`` (16×16) there too; its figures did not change with it.
Earlier, before the control regions were seeded per image, seeds 0 / 1 / 2 gave ViT combined 0.83 / 0.67 / 0.67,
Finer-CAM 0.67 / 0.33 / 0.50, Grad-CAM 0.00 at all three; CNN combined 0.50 / 0.33 / 0.67. Margins: about half
the smallest measured gap.
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
    # Finer-CAM adds over Grad-CAM (for the CNN at its 16×16 stage), the intervention most; the CNN's 80% does not
    # hold (0.750), asserted as measured with a margin
    assert _p1(vit, "masks", "finer") >= _p1(vit, "masks", "gradcam") + 0.3
    assert _p1(vit, "masks", "intervention") >= _p1(vit, "masks", "gradcam") + 0.4
    assert _p1(cnn, "masks", "finer") >= 0.6 and _p1(cnn, "masks", "finer") >= _p1(cnn, "masks", "gradcam") + 0.25
    assert _p1(cnn, "masks", "combined") >= 0.6 and _p1(cnn, "masks", "combined") >= _p1(cnn, "masks", "gradcam") + 0.25
    assert vit["masks"]["combined"]["mrr"] >= 0.9
    # cost: the evidence pass of the demo collection well under 2 minutes of one core (measured 8 s and 5 s)
    assert vit["cpu_seconds"] < 60 and cnn["cpu_seconds"] < 60
