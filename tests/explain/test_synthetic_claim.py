"""The Finer-CAM claims on ground truth, with the demo's classifiers (tiny ViT and tiny CNN fine-tuned from the
embedded pretrained backbones on the 12-species, 64 px demo collection; trained once per test session by
``traitlens.studies.demo.prepare``, reused from ``$TRAITLENS_TEST_CACHE`` while developing).

Protocol (as the paper): correctly classified test images, target = the predicted species, references = its
sibling species (every demo species has two), α = 1, the 144 test images; the numbers below are what
``evaluate_explanations`` gave exactly as called here (``pytest -s`` prints them).

Findings, Grad-CAM → Finer-CAM (mean over the scored images; paired win rate in brackets):

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

from __future__ import annotations

import numpy as np
import pytest
import torch

CLAIM_METRICS = ["drop", "contrastive_drop", "diagnostic_energy", "diagnostic_lift", "diagnostic_fraction",
                 "diagnostic_density"]


@pytest.fixture(scope="module")
def demo():
    from traitlens.studies.demo import prepare

    torch.set_num_threads(1)
    return prepare()


def _batch(ctx, kind):
    from traitlens.data.folders import ImageFolderDataset, collate
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.methods import load_model
    from traitlens.engine.train import eval_transform

    model, meta = load_model(ctx.checkpoints[kind])
    data = ImageFolderDataset(ctx.data, split="test", transform=eval_transform(model, config_from_meta(meta)),
                              classes=meta["class_names"], masks="auto")
    return model.eval(), meta, collate([data[i] for i in range(len(data))])


def _evaluate(ctx, model, meta, batch, **settings):
    from traitlens.explain.evaluate import evaluate_explanations

    res = evaluate_explanations(model, [batch], "gradcam,finer-gradcam", metrics=CLAIM_METRICS, alpha=1.0,
                                references="taxonomy", target="predicted", only_correct=True, traits=ctx.traits,
                                class_names=meta["class_names"], **settings)
    out = {"n": res.counts["scored"], "acc": res.counts["correct"] / res.counts["images"]}
    for m in CLAIM_METRICS:
        g = np.array(res.per_image["gradcam"][m])
        f = np.array(res.per_image["finer-gradcam"][m])
        ok = ~(np.isnan(g) | np.isnan(f))
        out[m] = (float(g[ok].mean()), float(f[ok].mean()), float(np.mean(f[ok] > g[ok])))
    return out


def _report(name, r):
    print(f"{name}: acc {r['acc']:.3f} n {r['n']} " + " ".join(
        f"{m} {g:.3f}->{f:.3f} (win {w:.2f})" for m, (g, f, w) in ((m, r[m]) for m in CLAIM_METRICS)))


@pytest.mark.slow
def test_vit_finer_cam_moves_energy_to_diagnostic_traits_and_is_more_faithful(demo):
    from traitlens.explain.evaluate import recommended_settings

    model, meta, batch = _batch(demo, "vit")
    settings = recommended_settings(model, batch["image"].shape[-2:])
    assert settings == {"target_layer": "blocks.3", "scale": 2.0}
    best = _evaluate(demo, model, meta, batch, **settings)
    _report("vit recommended", best)
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
    default = _evaluate(demo, model, meta, batch)
    _report("vit default", default)
    g, f, _ = default["drop"]
    assert abs(f - g) < 0.08  # measured −0.009 ± 0.042
    gain_default = default["diagnostic_lift"][1] - default["diagnostic_lift"][0]
    gain_best = best["diagnostic_lift"][1] - best["diagnostic_lift"][0]
    assert gain_best > 2 * gain_default  # measured +4.85 vs +0.73


@pytest.mark.slow
def test_cnn_finer_cam_shifts_energy_but_not_the_relative_drop(demo):
    """Tiny CNN, layout default (layer4, 8×8; top-1 0.750, 108 images scored), Grad-CAM → Finer-CAM:
    diagnostic share of the specimen's energy 0.076 → 0.109 (win 0.70), density over shared parts 1.33 → 2.20
    (win 0.70), contrastive drop 0.249 → 0.315 (+0.066 ± 0.036, win 0.60) — but raw diagnostic energy only
    0.033 → 0.038 (win 0.43) and the top-5% relative drop 0.463 → 0.396 (−0.067 ± 0.045): the paper's headline
    does not reproduce on this CNN. Also measured, not better: layer1 (16×16): relative drop −0.116, fraction
    +0.022; layer2: relative drop −0.109; 2× input: accuracy 0.583. Layer-CAM at layer1 localises best (lift
    6.7 → 8.1 with Finer, win 0.71) but its relative drop is also lower (−0.035).
    """
    from traitlens.explain.evaluate import recommended_settings

    model, meta, batch = _batch(demo, "cnn")
    assert recommended_settings(model, batch["image"].shape[-2:]) == {"target_layer": None, "scale": 1.0}
    r = _evaluate(demo, model, meta, batch)
    _report("cnn default", r)
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
