"""Segmentation by tracking on the butterfly and beetle body plans, in any pose
(:func:`traitlens.studies.claims.body_plan_segmentation`).

One support per species (its first image), label propagation on colour features with registration over any
rotation and mirror (``LabelPropOptions(work_size=(128, 128), align=True, local=3, mirror_pairs=...)``); the
queries upright (the collection's ±35°), and three per species again turned by 90°, 180°, 270°, re-rendered
at an angle uniform over the full circle, and mirrored. Thin traits: trait instances under 3% of the image
side wide in the ground truth (the narrow forewing band, rays, legs, antennae, ...), IoU pooled over them.

Broad (8 species × 16 queries = 128 per plan, 128 px), seed 0 — figures in the test below and README.
Tiny (2 species × 2 queries at 64 px, one each turned 180°, at any angle, mirrored; legs, antennae and rays
are a pixel wide there): the direction only. Measured seeds 0 / 1 / 2: butterfly mIoU 0.917 / 0.870 / 0.835
(copy 0.072 / 0.094 / 0.075), beetle 0.828 / 0.497 / 0.780 (copy 0.046 / 0.066 / 0.028); the largest drop of
a pose below the upright queries 0.088 (beetle, mirrored, seed 0).
"""

import pytest

from traitlens.studies import claims


@pytest.mark.parametrize("plan", ["butterfly", "beetle"])
def test_tiny_plans_beat_copying_and_hold_in_any_pose(plan):
    r = claims.body_plan_segmentation(plan, "tiny", 0)
    assert r["queries"] == 4 and r["predictions"] == 4 + 3 * 2
    assert r["miou"] >= r["miou_copy"] + 0.5
    for pose in ("180", "random", "mirror"):
        assert r["poses"][pose] >= r["poses"]["upright-subset"] - 0.15, (pose, r["poses"])
        assert r["poses"][pose] >= r["miou_copy"] + 0.5


@pytest.mark.claims
@pytest.mark.parametrize("plan", ["butterfly", "beetle"])
def test_body_plans_in_any_pose(plan):
    r = claims.body_plan_segmentation(plan, "broad", 0)
    parts = {p["part"]: round(p["iou"], 3) for p in r["parts"]}
    print(f"{plan}: mIoU {r['miou']:.3f} (copy {r['miou_copy']:.3f}), thin {r['thin_iou']:.3f} over "
          f"{r['thin_instances']}, poses {({k: round(v, 3) for k, v in r['poses'].items()})}, {parts}, "
          f"{r['images_per_s']:.2f} img/s")
    assert r["queries"] == 128
    assert r["miou"] >= MIOU[plan] and r["miou"] >= r["miou_copy"] + 0.6
    assert min(parts.values()) >= WEAKEST[plan], parts
    assert r["thin_iou"] >= THIN[plan]
    for pose in ("90", "180", "270", "mirror"):
        assert r["poses"][pose] >= r["poses"]["upright-subset"] - 0.03, (pose, r["poses"])
    assert r["poses"]["random"] >= r["poses"]["upright-subset"] - RANDOM_GAP[plan], r["poses"]


# Measured at seed 0, 128 px, work 128, the clean-up at its own temperature (LabelPropOptions.refine_tau 0.02;
# at the propagation's 0.1 before: butterfly 0.912, marginal spots 0.769, thin 0.866; beetle 0.877, antennae
# 0.732, thin 0.823):
#   butterfly: mIoU 0.928 (copy 0.074), weakest part marginal spots 0.846, thin traits 0.893 (248 instances);
#              upright subset 0.939, turned 90° / 180° / 270° 0.938, any angle 0.940, mirrored 0.937
#   beetle:    mIoU 0.883 (copy 0.049), weakest part antennae 0.768 (legs 0.790; both 2-3 px wide), thin traits
#              0.841 (470 instances); upright subset 0.887, turned 0.888 / 0.888 / 0.887, any angle 0.901,
#              mirrored 0.866
# Seeds 1 / 2 (not asserted, measured once): butterfly 0.882 / 0.909, weakest marginal spots 0.767 / 0.847, thin
#   0.864 / 0.893, poses within 0.012 of upright; beetle 0.789 / 0.872, antennae 0.534 / 0.716, legs 0.687 / 0.752,
#   thin 0.734 / 0.830 (seed 1: registration failures, the specimen taken for background under other lighting,
#   and legs the colour of the ground)
# The issue asks mIoU >= 0.85, every trait >= 0.75, thin traits >= 0.80, every pose within 0.03 of upright.
MIOU = {"butterfly": 0.90, "beetle": 0.85}
WEAKEST = {"butterfly": 0.80, "beetle": 0.75}
THIN = {"butterfly": 0.86, "beetle": 0.82}
RANDOM_GAP = {"butterfly": 0.03, "beetle": 0.03}
