"""Prompt-CAM frozen on the broad embedded tiny ViT (200 pretraining species): the claims'
90% (figures and the fragility of the 90% in tests/claims/test_interpretable.py's docstring).

Its own module, so that ``make claims`` (one module a worker) pretrains the broad backbone (24.6 min on 2 quiet
cores) on one worker while the other runs every other claim.
"""

import pytest

from traitlens.studies import claims
from traitlens.studies.recipes import interpretable

SEEDS = interpretable("broad").seeds


@pytest.fixture(scope="module")
def scores():
    """Every seed's Prompt-CAM on the broad backbone, and on the standard one for the contrast (made once: the
    other worker may be training it, and the memo cache lets this one wait for it)."""
    out = {seed: claims.interpretable("broad", seed, models=("prompt-cam-broad", "prompt-cam")) for seed in SEEDS}
    for seed, s in out.items():
        b = s["prompt-cam-broad"]
        print(f"seed {seed}: broad top-1 {b['top1']:.3f}, trait share {b['trait_ratio']:.2f}, "
              f"drop {b['drop_top']:.3f} vs {b['drop_random']:.3f}; standard top-1 {s['prompt-cam']['top1']:.3f}")
    return out


@pytest.mark.claims
@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_cam_on_the_broad_backbone_comes_close_to_90_percent(scores, seed):
    # The 90% is fragile: measured 0.900 / 0.871 / 0.871 (the previous release's backbone: 0.914 at seed 0).
    # Asserted: about 2 binomial standard errors (0.012 each at 720 images) below the lowest seed.
    assert scores[seed]["prompt-cam-broad"]["n"] == 720
    assert scores[seed]["prompt-cam-broad"]["top1"] >= 0.85


@pytest.mark.claims
@pytest.mark.parametrize("seed", SEEDS)
def test_pretraining_breadth_is_what_frozen_prompt_cam_needs(scores, seed):
    s = scores[seed]
    assert s["prompt-cam-broad"]["top1"] >= s["prompt-cam"]["top1"] + 0.15  # measured +0.25 / +0.27 / +0.25


@pytest.mark.claims
@pytest.mark.parametrize("seed", SEEDS)
def test_best_head_looks_at_the_traits(scores, seed):
    # the thinnest margin of the claims: measured 3.54 / 4.96 / 8.06 against the claim's 3
    assert scores[seed]["prompt-cam-broad"]["trait_ratio"] >= 3.0


@pytest.mark.claims
@pytest.mark.parametrize("seed", SEEDS)
def test_removing_the_attended_region_hurts_more_than_a_random_one(scores, seed, region_removal_holds):
    region_removal_holds(scores[seed]["prompt-cam-broad"])
