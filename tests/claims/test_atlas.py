"""The trait atlas names the right trait (:func:`traitlens.studies.claims.atlas`).

For every sibling pair of the collection, is the atlas' top-ranked part one of the pair's diagnostic parts
(the pair table of ``traits.json``)? Precision@1 and mean reciprocal rank per evidence source: Finer-CAM
alone, Grad-CAM alone (the control), the intervention alone (removing the part vs a random region of the same
area, p(A) − p(B) over the pair), and the combined ranking; parts from the true masks and propagated by
segmentation by tracking from one labelled training specimen per species. ``pytest -s`` prints the tables.

Broad scale (``make claims``): the demo's classifiers (tiny ViT and CNN fine-tuned from the embedded backbones,
12 species, 12 sibling pairs, the 144 test images; test top-1 ViT 0.764, CNN 0.722), seed 0, measured on the
classifiers CI trained (its cache).
Precision@1 (MRR):

    ViT, true masks:  Finer-CAM 0.667 (0.833), Grad-CAM 0.250 (0.388), intervention 0.833 (0.917),
                      combined 0.917 (0.958); SST parts: the same but intervention 0.750 (0.875)
    CNN, true masks:  Finer-CAM 0.750 (0.824), Grad-CAM 0.333 (0.497), intervention 0.750 (0.847),
                      combined 0.750 (0.850); SST parts: Finer-CAM 0.667, intervention 0.750, combined 0.750

The CNN's CAMs are taken at its finest stage with at least 14 cells along the side (``layer1``, 16×16; before,
the 8×8 last stage: Finer-CAM 0.417, Grad-CAM 0.250, combined 0.750 and 0.667 with SST parts), and each part's
control is the mean of 4 random regions (one region: the CNN's combined read 0.833 / 0.750 / 0.750 for three
draws of the regions, with 4 it reads 0.750 at all three; the ViT 0.917 either way):
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
pairs. Cost (process CPU time, one thread): the ViT's evidence pass with masks 19.7 s (CNN 14.8 s; a third of
it with one control region), SST for the 144 images 15.6 s; pairs without a localised trait: 1 of 12 each.
Control regions are seeded by ``<species>/<file>`` (as in the bulk job), not by the full path, so the figures do
not depend on where the collection lives.

Body plans (``test_broad_atlas_on_other_body_plans``, :func:`traitlens.studies.claims.atlas_plan`): the same
question on a butterfly and a beetle collection, 12 species in 4 genera (12 sibling pairs), 100 images a species
at 64 px (240 test images), the tiny ViT and CNN fine-tuned from the embedded backbones for 24 epochs (the demo's
recipe at 60 images and 12 epochs gave the butterfly CNN 0.49 validation top-1 and 0.25 precision@1). Butterfly
siblings differ in the hindwing bar, the discal spot or the marginal spots; beetle siblings in the elytral spots,
the elytral stripe or the pronotum mark. Seed 0, precision@1 (MRR):

    butterfly ViT (test top-1 0.837), masks: Finer-CAM 0.583 (0.670), Grad-CAM 0.167 (0.311), intervention
        0.750 (0.847), combined 0.667 (0.806); SST parts: Finer-CAM 0.500, Grad-CAM 0.250, intervention 0.667,
        combined 0.667 (0.792)
    butterfly CNN (test top-1 0.717), masks: Finer-CAM 0.667 (0.739), Grad-CAM 0.083 (0.356), intervention
        0.667 (0.804), combined 0.667 (0.792); SST parts: intervention 0.583, combined 0.583, the rest the same
    beetle ViT (test top-1 0.762), masks: Finer-CAM 0.667 (0.753), Grad-CAM 0.333 (0.475), intervention 0.917
        (0.958), combined 1.000 (1.000); SST parts: Grad-CAM 0.250, intervention 0.833, the rest the same
    beetle CNN (test top-1 0.887), masks: Finer-CAM 0.667 (0.785), Grad-CAM 0.333 (0.538), intervention 0.917
        (0.958), combined 0.917 (0.958); SST parts: Finer-CAM 0.500, Grad-CAM 0.250, the rest the same

On beetles the atlas meets the bird goals (ViT ≥ 0.90, CNN ≥ 0.80); on butterflies neither model does (0.667):
their diagnostic parts are thin wing patterns (a bar, a spot, a row of dots a pixel or two wide at 64 px) on
large wings. Asserted: each model's combined precision@1 within two pairs of the measured one, above the Grad-CAM
control by the smallest measured gap less about two pairs, Finer-CAM above Grad-CAM, SST parts within two pairs
of the masks (measured 0-1), and test top-1 ≥ 0.6 (measured 0.717-0.887). Cost per plan: rendering 12 s,
training the two classifiers about 190 s (CNN) and 265 s (ViT) of wall time on a loaded 2-core machine, the
evidence passes 20-33 s of CPU, SST 26 s.

Tiny scale (``make test``): the Finer-CAM claim's tiny-vit and tiny-cnn (trained from scratch on 6 species at
32 px; the same memo entries, so ``make test`` trains them once), 6 sibling pairs, seed 0. Measured precision@1
(one pair = 0.167): ViT Finer-CAM 0.667, Grad-CAM 0.000, intervention 0.833, combined 0.833 (SST parts: the
same); CNN Finer-CAM 0.333, Grad-CAM 0.000, intervention 0.833, combined 0.500 (SST parts: combined 0.667;
with one control region instead of 4 the CNN's intervention read 0.667). The CNN's test images are resized
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
    print(f"{name}: test top-1 {r['test_top1']:.3f}, evidence {r['cpu_seconds']:.1f} s CPU, "
          f"SST {r['sst_cpu_seconds']:.1f} s, not localised: {r['not_localised']}")


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
    # cost: the evidence pass of the demo collection well under 2 minutes of one core (measured 20 s and 15 s)
    assert vit["cpu_seconds"] < 60 and cnn["cpu_seconds"] < 60


# combined precision@1 with the true masks, measured (module docstring)
PLAN_MEASURED = {"butterfly": {"vit": 0.667, "cnn": 0.667}, "beetle": {"vit": 1.000, "cnn": 0.917}}


@pytest.mark.claims
@pytest.mark.parametrize("plan", ["butterfly", "beetle"])
def test_broad_atlas_on_other_body_plans(plan):
    r = claims.atlas_plan(plan, "broad", 0)
    two_pairs = 2 / 12 + 1e-9
    for kind, m in r.items():
        _report(f"{plan} {kind}", m)
        assert m["pairs"] == 12
        assert m["test_top1"] >= 0.6  # measured 0.717-0.887
        assert _p1(m, "masks", "combined") >= PLAN_MEASURED[plan][kind] - two_pairs
        # the smallest measured gaps: combined over Grad-CAM 0.500, Finer-CAM over Grad-CAM 0.333
        assert _p1(m, "masks", "combined") >= _p1(m, "masks", "gradcam") + 0.33
        assert _p1(m, "masks", "finer") >= _p1(m, "masks", "gradcam") + 0.16
        assert abs(_p1(m, "sst", "combined") - _p1(m, "masks", "combined")) <= two_pairs
        assert m["cpu_seconds"] < 90  # measured 20-33 s
