"""The Finer-CAM claims on ground truth (:func:`traitlens.studies.claims.finer_cam`).

Broad scale (``make claims``): the demo's classifiers (tiny ViT and tiny CNN fine-tuned from the embedded
pretrained backbones on the 12-species, 64 px demo collection, ``traitlens.studies.demo.prepare(seed)``), for
the seeds of ``recipes.finer_cam("broad")``. Tiny scale (``make test``): the tiny-vit and tiny-cnn presets
trained from scratch on 6 species at 32 px (10 and 8 epochs, seconds), the same protocol.

Protocol (as the paper): correctly classified test images, target = the predicted species, references = its
sibling species (every demo species has two), α = 1, every test image; ``pytest -s`` prints the figures.

Findings at broad scale, seed 0, Grad-CAM → Finer-CAM (mean over the scored images; paired win rate in brackets):

ViT, last block output at 2× input (16×16 grid, top-1 0.771, 111 images scored):
    diagnostic energy 0.018 → 0.067, lift 1.68 → 6.53 (0.78), diagnostic share of the specimen's energy
    0.055 → 0.155 (0.85), density over shared parts 0.93 → 3.29; top-5% relative drop 0.227 → 0.357
    (+0.130 ± 0.048, 0.73), contrastive drop 0.067 → 0.195 (+0.128 ± 0.029, 0.84).
ViT, the layout's default (last block norm1, 64 px, 8×8, top-1 0.715, 103 images):
    lift 1.87 → 2.61 (0.63), relative drop 0.202 → 0.193 (−0.009 ± 0.042), contrastive +0.021 ± 0.026.
    The norm1 gradient passes one more attention layer before the max-pooled tokens and is smeared; the
    coarse grid does the rest. That is why the earlier finding ("not clearly more") did not see the effect.
CNN, layer4 (8×8, top-1 0.750, 108 images): energy moves from the shared to the diagnostic parts (share
    0.076 → 0.109, win 0.70) and the contrastive drop rises (+0.066), but the raw diagnostic energy barely
    moves and the top-5% relative drop is LOWER (0.463 → 0.396); other layers and a 2× input did not help.

So the claim holds clearly for the ViT where the map resolves the traits and reads the features the logits
read (not at an 8×8 norm1 map), and only partly for the CNN. Margins are about half the measured effects.
"""

import pytest

from traitlens.studies import claims
from traitlens.studies.recipes import finer_cam

# make claims runs each group on one worker (--dist loadgroup): the Prompt-CAM/INTR claims on one, these on the other
pytestmark = pytest.mark.xdist_group("other-claims")

METRICS = ["diagnostic_energy", "diagnostic_lift", "diagnostic_fraction", "diagnostic_density", "drop",
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


# ------------------------------------------------------------------------------------------ broad (make claims)
@pytest.mark.claims
@pytest.mark.parametrize("seed", finer_cam("broad").seeds)
def test_vit_finer_cam_moves_energy_to_diagnostic_traits_and_is_more_faithful(seed):
    r = claims.finer_cam("broad", seed)
    best, default = r["vit"], r["vit default layer"]
    _report(f"vit recommended seed {seed}", best)
    _report(f"vit default seed {seed}", default)
    assert best["settings"] == {"target_layer": "blocks.3", "scale": 2.0}
    assert best["acc"] > 0.7 and best["n"] >= 90  # measured 0.771, 111
    g, f, win = best["diagnostic_energy"]
    assert f > 2 * g and win > 0.65  # measured 0.018 → 0.067, win 0.78
    g, f, win = best["diagnostic_lift"]
    assert g < 3 and f > 4 and win > 0.65  # measured 1.68 → 6.53
    g, f, win = best["diagnostic_fraction"]  # energy moves from the shared parts to the distinguishing ones
    assert f > g + 0.05 and win > 0.7  # measured 0.055 → 0.155, win 0.85
    g, f, win = best["diagnostic_density"]
    assert f > 2 * g and f > 2  # measured 0.93 → 3.29
    g, f, win = best["drop"]
    assert f > g + 0.05 and win > 0.6  # measured 0.227 → 0.357 (+0.130 ± 0.048), win 0.73
    g, f, win = best["contrastive_drop"]
    assert f > g + 0.06 and win > 0.7  # measured 0.067 → 0.195 (+0.128 ± 0.029), win 0.84

    # The layout's default (norm1 of the last block, 8×8): the effect mostly disappears.
    g, f, _ = default["drop"]
    assert abs(f - g) < 0.08  # measured −0.009 ± 0.042
    gain_default = default["diagnostic_lift"][1] - default["diagnostic_lift"][0]
    gain_best = best["diagnostic_lift"][1] - best["diagnostic_lift"][0]
    assert gain_best > 2 * gain_default  # measured +4.85 vs +0.73


@pytest.mark.claims
@pytest.mark.parametrize("seed", finer_cam("broad").seeds)
def test_cnn_finer_cam_shifts_energy_but_not_the_relative_drop(seed):
    """Tiny CNN, layout default (layer4, 8×8; top-1 0.750, 108 images scored), Grad-CAM → Finer-CAM:
    diagnostic share of the specimen's energy 0.076 → 0.109 (win 0.70), density over shared parts 1.33 → 2.20
    (win 0.70), contrastive drop 0.249 → 0.315 (+0.066 ± 0.036, win 0.60) — but raw diagnostic energy only
    0.033 → 0.038 (win 0.43) and the top-5% relative drop 0.463 → 0.396 (−0.067 ± 0.045): the paper's headline
    does not reproduce on this CNN. Also measured, not better: layer1 (16×16): relative drop −0.116, fraction
    +0.022; layer2: relative drop −0.109; 2× input: accuracy 0.583. Layer-CAM at layer1 localises best (lift
    6.7 → 8.1 with Finer, win 0.71) but its relative drop is also lower (−0.035).
    """
    r = claims.finer_cam("broad", seed)["cnn"]
    _report(f"cnn default seed {seed}", r)
    assert r["settings"] == {}
    assert r["acc"] > 0.65 and r["n"] >= 90  # measured 0.750, 108
    g, f, win = r["diagnostic_fraction"]
    assert f > g + 0.015 and win > 0.6  # measured 0.076 → 0.109, win 0.70
    g, f, win = r["diagnostic_density"]
    assert f > 1.3 * g  # measured 1.33 → 2.20
    g, f, win = r["contrastive_drop"]
    assert f > g + 0.02  # measured +0.066 ± 0.036
    # The findings that do not reproduce, pinned: no clear gain in raw diagnostic energy, a lower relative drop.
    g, f, win = r["diagnostic_energy"]
    assert f < 1.6 * g  # measured 0.033 → 0.038
    g, f, win = r["drop"]
    assert f < g + 0.03  # measured 0.463 → 0.396
