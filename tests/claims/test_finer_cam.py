"""The Finer-CAM claims on ground truth (:func:`traitlens.studies.claims.finer_cam`).

Broad scale (``make claims``): the demo's classifiers (tiny ViT and tiny CNN fine-tuned from the embedded
pretrained backbones on the 12-species, 64 px demo collection, ``traitlens.studies.demo.prepare(seed)``), for
the seeds of ``recipes.finer_cam("broad")``. Tiny scale (``make test``): the tiny-vit and tiny-cnn presets
trained from scratch on 6 species at 32 px (10 and 8 epochs, seconds), the same protocol.

Protocol (as the paper): correctly classified test images, target = the predicted species, references = its
sibling species (every demo species has two), α = 1, every test image; ``pytest -s`` prints the figures.

Findings at broad scale, Grad-CAM → Finer-CAM (mean over the scored images; paired win rate in brackets), seeds
0 / 1 / 2 (``make claims``):

ViT, last block output at 2× input (16×16 grid; top-1 0.792 / 0.757 / 0.736; 114 / 109 / 106 images scored):
    diagnostic energy 0.017 → 0.069 / 0.017 → 0.084 / 0.018 → 0.069 (win 0.79 / 0.86 / 0.71), lift 1.68 → 7.10 /
    1.44 → 7.82 / 1.69 → 5.33, diagnostic share of the specimen's energy 0.054 → 0.162 / 0.055 → 0.195 / 0.056 →
    0.184 (win 0.87 / 0.82 / 0.83), density over shared parts 0.90 → 3.72 / 0.80 → 4.56 / 0.80 → 3.36;
    contrastive drop +0.131 / +0.127 / +0.092 (win 0.80 / 0.73 / 0.71).
    Fragile, reported and not asserted: the top-5% relative drop (faithfulness) rises +0.097 / +0.075 at seeds 0
    and 1 (win 0.66 / 0.61) but not at seed 2 (−0.002, win 0.54).
ViT, the layout's default (last block norm1, 64 px, 8×8): the lift gains less (+2.27 / +2.70 / +2.65 against
    +5.42 / +6.38 / +3.64) and the relative drop does not move (+0.019 / −0.004 / −0.037). (Seed 0 of the
    previous release measured a smaller default-layer gain, +0.73: the gap between layers is real but smaller
    than it then looked.)
CNN, layer4 (8×8; top-1 0.722 / 0.715 / 0.764; 103-110 images): energy moves from the shared to the diagnostic
    parts (share +0.036 / +0.028 / +0.021, win 0.79 / 0.67 / 0.56; density ×1.62 / ×1.56 / ×1.47) and the
    contrastive drop rises (+0.043 / +0.033 / +0.045), but the raw diagnostic energy barely moves (0.036 → 0.042 /
    0.041 → 0.045 / 0.044 → 0.045) and the top-5% relative drop is LOWER (0.458 → 0.392 / 0.500 → 0.365 / 0.567 →
    0.498); other layers and a 2× input did not help (seed 0 of the previous release).

Why the CNN's relative drop falls (issue 18; seeds 0 / 1 / 2, the same classifiers): Finer-CAM's top 5% moves
    off the specimen (66% → 54% / 67% → 53% / 64% → 56% of those pixels lie on it), so masking them costs p_c
    less; what it removes is what tells the target from the sibling it is compared with. Measured against that
    sibling, the drop RISES at every seed: ``pair_drop`` (the relative drop of q = p_c / (p_c + p_d), d the
    nearest sibling) 0.186 → 0.272 / 0.183 → 0.246 / 0.266 → 0.326 (win 0.70 / 0.59 / 0.58), and explaining
    against that one sibling only (k = 1) gives +0.081 / +0.066 / +0.067 on the same measure. Also tried
    (relative drop of p_c, Grad-CAM → Finer-CAM): torchcam's setting (α = γ = 0.6, uniform weights) 0.458 →
    0.421 / 0.500 → 0.509 / 0.567 → 0.578 (the fall goes at seeds 1 and 2: α = 1 with softmax weights is
    strong for this CNN); the 3 classes nearest in logit instead of the siblings 0.458 → 0.378 / 0.500 → 0.374 /
    0.567 → 0.498; layer3 (16×16) 0.361 → 0.239 / 0.447 → 0.329 / 0.516 → 0.423; Layer-CAM at layer4 flat
    (0.431 → 0.430 / 0.470 → 0.464 / 0.483 → 0.467). The pooling (global average, fixed by the tiny-cnn
    preset) was not varied. The Finer-CAM reference repository ships no evaluation code, so the paper's exact
    relative-drop formula could not be checked against code; ``drop`` is (p_c − p_c*) / p_c.

So the localisation claim holds clearly for the ViT where the map resolves the traits and reads the features the
logits read, and only partly for the CNN; the faithfulness claim is fragile even on the ViT. Margins are about
half the smallest measured effect.
"""

import pytest

from traitlens.studies import claims
from traitlens.studies.recipes import finer_cam


METRICS = ["diagnostic_energy", "diagnostic_lift", "diagnostic_fraction", "diagnostic_density", "drop", "pair_drop",
           "contrastive_drop"]


def _report(name, r):
    print(f"{name}: acc {r['acc']:.3f} n {r['n']} " + " ".join(
        f"{m} {g:.3f}->{f:.3f} (win {w:.2f})" for m, (g, f, w) in ((m, r[m]) for m in METRICS)))


# ------------------------------------------------------------------------------------------ tiny (make test)
# Measured, seeds 0 / 1 / 2 (ViT at blocks.3, 2× input; 16-20 correctly classified test images of 48, top-1
# 0.33-0.42): diagnostic fraction 0.048 → 0.187 / 0.047 → 0.203 / 0.071 → 0.158 (win 0.80-0.94), contrastive
# drop +0.141 / +0.362 / +0.140, relative drop +0.087 / +0.294 / +0.074. CNN (layer4, 26-39 images): fraction
# +0.041 / +0.022 / +0.036, density ×1.8 / ×1.4 / ×1.8, relative drop lower (−0.078 / −0.069 / −0.062), as at
# broad scale. Margins: about half the smallest measured effect.
@pytest.mark.parametrize("seed", finer_cam("tiny").seeds)
def test_tiny_finer_cam_points_at_the_diagnostic_parts(seed):
    r = claims.finer_cam("tiny", seed)
    vit, cnn = r["vit"], r["cnn"]
    _report(f"tiny vit seed {seed}", vit)
    _report(f"tiny cnn seed {seed}", cnn)
    assert vit["n"] >= 10 and cnn["n"] >= 15
    g, f, win = vit["diagnostic_fraction"]
    assert f > g + 0.04 and win > 0.65
    g, f, win = vit["contrastive_drop"]
    assert f > g + 0.07
    g, f, win = vit["drop"]
    assert f > g + 0.03
    g, f, win = cnn["diagnostic_fraction"]
    assert f > g + 0.01
    g, f, win = cnn["diagnostic_density"]
    assert f > 1.2 * g
    g, f, win = cnn["drop"]  # the finding that does not reproduce on the CNN, pinned at both scales
    assert f < g + 0.02
    # Against the compared sibling the drop does not fall (measured +0.017 / +0.005 / +0.014; the ViT +0.152 /
    # +0.290 / +0.133): at tiny scale too small to call a rise.
    g, f, win = cnn["pair_drop"]
    assert f > g - 0.01
    g, f, win = vit["pair_drop"]
    assert f > g + 0.06


# ------------------------------------------------------------------------------------------ broad (make claims)
@pytest.mark.claims
@pytest.mark.parametrize("seed", finer_cam("broad").seeds)
def test_vit_finer_cam_moves_energy_to_diagnostic_traits(seed):
    r = claims.finer_cam("broad", seed)
    best, default = r["vit"], r["vit default layer"]
    _report(f"vit recommended seed {seed}", best)
    _report(f"vit default seed {seed}", default)
    assert best["settings"] == {"target_layer": "blocks.3", "scale": 2.0}
    assert best["acc"] > 0.7 and best["n"] >= 90  # measured 0.736-0.792, 106-114
    g, f, win = best["diagnostic_energy"]
    assert f > 2 * g and win > 0.65  # measured ×3.8-4.9, win 0.71-0.86
    g, f, win = best["diagnostic_lift"]
    assert g < 3 and f > 4 and win > 0.65  # measured 1.44-1.69 → 5.33-7.82
    g, f, win = best["diagnostic_fraction"]  # energy moves from the shared parts to the distinguishing ones
    assert f > g + 0.05 and win > 0.7  # measured +0.108 to +0.140, win 0.82-0.87
    g, f, win = best["diagnostic_density"]
    assert f > 2 * g and f > 2  # measured ×4.1-5.7
    g, f, win = best["contrastive_drop"]
    assert f > g + 0.05 and win > 0.65  # measured +0.092 to +0.131, win 0.71-0.80
    # the top-5% relative drop is fragile (module docstring): printed above, not asserted

    # The layout's default (norm1 of the last block, 8×8): a smaller gain, and no faithfulness change.
    g, f, _ = default["drop"]
    assert abs(f - g) < 0.08  # measured +0.019 / −0.004 / −0.037
    gain_default = default["diagnostic_lift"][1] - default["diagnostic_lift"][0]
    gain_best = best["diagnostic_lift"][1] - best["diagnostic_lift"][0]
    assert gain_best > 1.15 * gain_default  # measured ×2.4 / ×2.4 / ×1.37


@pytest.mark.claims
@pytest.mark.parametrize("seed", finer_cam("broad").seeds)
def test_cnn_finer_cam_shifts_energy_but_not_the_relative_drop(seed):
    """The paper's headline does not reproduce on this CNN (figures in the module docstring). Also measured in the
    previous release (seed 0), not better: layer1 (16×16): relative drop −0.116, fraction +0.022; layer2: relative
    drop −0.109; 2× input: accuracy 0.583. Layer-CAM at layer1 localises best (lift 6.7 → 8.1 with Finer, win
    0.71) but its relative drop is also lower (−0.035).
    """
    r = claims.finer_cam("broad", seed)["cnn"]
    _report(f"cnn default seed {seed}", r)
    assert r["settings"] == {}
    assert r["acc"] > 0.65 and r["n"] >= 90  # measured 0.715-0.764, 103-110
    g, f, win = r["diagnostic_fraction"]
    assert f > g + 0.01 and win > 0.5  # measured +0.021 to +0.036, win 0.56-0.79
    g, f, win = r["diagnostic_density"]
    assert f > 1.25 * g  # measured ×1.47-1.62
    g, f, win = r["contrastive_drop"]
    assert f > g + 0.015  # measured +0.033 to +0.045
    # The findings that do not reproduce, pinned: no clear gain in raw diagnostic energy, a lower relative drop.
    g, f, win = r["diagnostic_energy"]
    assert f < 1.6 * g  # measured ×1.02-1.17
    g, f, win = r["drop"]
    assert f < g + 0.03  # measured −0.066 / −0.135 / −0.069
    # Why (module docstring): measured against the sibling it is told apart from, the drop rises.
    g, f, win = r["pair_drop"]
    assert f > g + 0.03 and win > 0.5  # measured +0.086 / +0.063 / +0.060, win 0.70 / 0.59 / 0.58
