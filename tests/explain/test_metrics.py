"""Metrics on hand-made models and maps whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.evaluate import EvaluationResult, evaluate_explanations, mean_ci, parse_methods
from traitlens.report.plots import metrics_bar_plot
from traitlens.explain.metrics import (boxes_to_masks, confidence_drop, deletion_insertion, diagnostic_lift,
                                       diagnostic_masks, diagnostic_trait_energy, diagnostic_vs_shared,
                                       energy_in_mask, gaussian_blur, pointing_game, top_fraction_mask)


class CornerModel(nn.Module):
    """Class 0's logit is the mean of the top-left 4×4 corner of channel 0; class 1 a constant."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        corner = x[:, 0, :4, :4].mean((1, 2)) * self.scale
        return torch.stack([corner, torch.zeros_like(corner), -corner], 1)


def corner_maps(b=2, size=16, good=True):
    maps = torch.zeros(b, size, size)
    if good:
        maps[:, :4, :4] = 1.0
    else:
        maps[:, -4:, -4:] = 1.0
    return maps + torch.linspace(0, 1e-3, size * size).view(size, size)  # break ties deterministically


def test_top_fraction_mask_counts_exactly():
    maps = torch.rand(3, 10, 10)
    mask = top_fraction_mask(maps, 0.05)
    assert mask.sum((1, 2)).tolist() == [5, 5, 5]
    assert torch.equal(mask[0].flatten().nonzero()[:, 0].sort().values,
                       maps[0].flatten().topk(5).indices.sort().values)


def test_confidence_drop_rewards_the_right_region():
    model = CornerModel()
    x = torch.ones(2, 3, 16, 16)
    target = torch.zeros(2, dtype=torch.long)
    good = confidence_drop(model, x, corner_maps(good=True), target, torch.ones(2, dtype=torch.long), k=16 / 256)
    bad = confidence_drop(model, x, corner_maps(good=False), target, torch.ones(2, dtype=torch.long), k=16 / 256)
    p = torch.softmax(torch.tensor([4.0, 0, -4]), 0)
    p_star = torch.softmax(torch.tensor([0.0, 0, 0]), 0)
    assert good["relative"] == pytest.approx([float((p[0] - p_star[0]) / p[0])] * 2, abs=1e-6)
    assert good["contrastive"] == pytest.approx([float((p[0] - p_star[0]) - (p[1] - p_star[1]))] * 2, abs=1e-6)
    assert bad["relative"].abs().max() < 1e-6
    q, q_star = p[0] / (p[0] + p[1]), p_star[0] / (p_star[0] + p_star[1])  # the target against class 1 alone
    assert good["pair"] == pytest.approx([float((q - q_star) / q)] * 2, abs=1e-6)
    assert bad["pair"].abs().max() < 1e-6


def test_deletion_and_insertion_auc():
    model = CornerModel()
    x = torch.ones(2, 3, 16, 16)
    target = torch.zeros(2, dtype=torch.long)
    good = deletion_insertion(model, x, corner_maps(good=True), target, steps=16)
    bad = deletion_insertion(model, x, corner_maps(good=False), target, steps=16)
    p0 = float(torch.softmax(torch.tensor([4.0, 0, -4]), 0)[0])
    # good: the corner goes at step 1 of 16 → deletion AUC ≈ half a step at p0, then 1/3
    assert float(good["deletion"][0]) == pytest.approx((p0 + 1 / 3) / 2 / 16 + 15 / 16 / 3, abs=1e-5)
    assert float(bad["deletion"][0]) > float(good["deletion"][0]) + 0.3
    # a constant image: blurring changes nothing, so insertion sees p0 all along
    assert float(good["insertion"][0]) == pytest.approx(p0, abs=1e-5)


def test_blur_keeps_constants_and_smooths():
    x = torch.ones(1, 3, 20, 20)
    assert torch.allclose(gaussian_blur(x, 2.0), x, atol=1e-6)
    spike = torch.zeros(1, 1, 21, 21)
    spike[0, 0, 10, 10] = 1
    out = gaussian_blur(spike, 2.0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-4) and float(out.max()) < 0.05


def test_pointing_energy_and_boxes():
    maps = torch.zeros(3, 8, 8)
    maps[0, 1, 1] = 1.0
    maps[1, 6, 6] = 1.0
    maps[2, 0, 0] = 0.5
    maps[2, 7, 7] = 0.5
    masks = boxes_to_masks(torch.tensor([[0, 0, 4, 4]] * 3), 8, 8)
    assert masks[0].sum() == 16
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0, 1.0]
    assert pointing_game(maps, masks, tolerance=3)[1] == 1.0
    assert energy_in_mask(maps, masks).tolist() == [1.0, 0.0, 0.5]
    empty = torch.zeros(3, 8, 8, dtype=torch.bool)
    assert all(math.isnan(v) for v in energy_in_mask(maps, empty).tolist())


def test_diagnostic_masks_follow_the_pair_table():
    # 3 species, 4 parts: 0 vs 1 differ in part 2; 0 vs 2 in parts 1 and 3
    table = torch.zeros(3, 3, 4, dtype=torch.bool)
    table[0, 1, 2] = table[1, 0, 2] = True
    table[0, 2, [1, 3]] = table[2, 0, [1, 3]] = True
    parts = torch.tensor([[[0, 1], [2, 3]]] * 2)
    m = diagnostic_masks(parts, torch.tensor([0, 0]), torch.tensor([1, 2]), table)
    assert m.tolist() == [[[False, False], [True, False]], [[False, True], [False, True]]]
    maps = torch.tensor([[[0.0, 1.0], [3.0, 0.0]]] * 2)
    energy = diagnostic_trait_energy(maps, parts, torch.tensor([0, 0]), torch.tensor([1, 2]), table)
    assert energy.tolist() == [0.75, 0.25]


def test_diagnostic_lift_and_shared_split():
    # 1 species pair differing in part 2; a 4×4 image: background row, 8 shared (part 1) pixels, 4 diagnostic.
    table = torch.zeros(2, 2, 3, dtype=torch.bool)
    table[0, 1, 2] = table[1, 0, 2] = True
    parts = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2]]])
    t, r = torch.tensor([0]), torch.tensor([1])
    flat = torch.ones(1, 4, 4)
    assert diagnostic_lift(flat, parts, t, r, table).item() == pytest.approx(1.0)  # a flat map: no lift
    split = diagnostic_vs_shared(flat, parts, t, r, table)
    assert split["fraction"].item() == pytest.approx(4 / 12) and split["density_ratio"].item() == pytest.approx(1.0)
    maps = torch.zeros(1, 4, 4)
    maps[0, 0] = 5.0  # background energy is ignored by the split, counted by the lift
    maps[0, 3] = 1.0
    maps[0, 1, :2] = 1.0
    assert diagnostic_lift(maps, parts, t, r, table).item() == pytest.approx((4 / 26) / (4 / 16))
    split = diagnostic_vs_shared(maps, parts, t, r, table)
    assert split["fraction"].item() == pytest.approx(4 / 6)
    assert split["density_ratio"].item() == pytest.approx((4 / 4) / (2 / 8))
    # a pair without a difference: NaN
    same = diagnostic_vs_shared(maps, parts, t, t, table)
    assert math.isnan(same["fraction"].item()) and math.isnan(same["density_ratio"].item())


def test_mean_ci_and_method_parsing():
    s = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert s["mean"] == 2.0 and s["n"] == 3 and s["ci95"] == pytest.approx(1.96 / math.sqrt(3))
    specs = parse_methods("gradcam,finer-Grad-CAM++,finer-scorecam")
    assert [(p.name, p.base, p.finer) for p in specs] == [
        ("gradcam", "gradcam", False), ("finer-gradcam++", "gradcam++", True), ("finer-scorecam", "scorecam", True)]


def test_evaluate_table_on_a_small_batch(gap_linear):
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(4, 3, 16, 16, generator=g), "label": torch.tensor([0, 1, 2, 3]),
             "mask": (torch.rand(4, 16, 16, generator=g) > 0.5).long(), "path": list("abcd")}
    res = evaluate_explanations(gap_linear, [batch, batch], "gradcam,finer-gradcam", steps=4,
                                target_layer="features")
    assert res.metrics == ["drop", "contrastive_drop", "pair_drop", "deletion", "insertion", "pointing", "energy"]
    assert len(res.per_image["finer-gradcam"]["drop"]) == 8 and len(res.paths) == 8
    rows = res.table()
    assert [r["method"] for r in rows] == ["gradcam", "finer-gradcam"] and "drop_ci95" in rows[0]
    assert metrics_bar_plot(res) is not None


def test_evaluate_filters_correct_images_and_scales(gap_linear):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g)
    with torch.no_grad():
        pred = gap_linear(x).argmax(1)
    labels = pred.clone()
    labels[:2] = (pred[:2] + 1) % 6  # two wrong
    batch = {"image": x, "label": labels, "path": list("abcdef")}
    res = evaluate_explanations(gap_linear, [batch], "gradcam", metrics=["drop"], target="predicted",
                                target_layer="features", only_correct=True)
    assert res.paths == list("cdef") and len(res.per_image["gradcam"]["drop"]) == 4
    parts = torch.zeros(6, 16, 16, dtype=torch.long)
    parts[:, 4:12, 4:12] = 1
    res2 = evaluate_explanations(gap_linear, [dict(batch, mask=parts)], "gradcam", metrics=["energy"],
                                 target_layer="features", scale=2.0)
    assert len(res2.paths) == 6 and all(0 <= v <= 1 for v in res2.per_image["gradcam"]["energy"])
    with pytest.raises(UserError):
        evaluate_explanations(gap_linear, [batch], "gradcam", metrics=["drop"], target_layer="features", scale=0)


def test_recommended_settings_follow_resolution_and_pooling():
    from traitlens import backbones
    from traitlens.explain.evaluate import recommended_settings

    torch.manual_seed(0)
    cnn = backbones.create("tiny-cnn", num_classes=4)
    vit = backbones.create("tiny-vit", num_classes=4)
    assert recommended_settings(cnn) == {"target_layer": None, "scale": 1.0}  # the layout's last stage
    assert recommended_settings(vit) == {"target_layer": "blocks.3", "scale": 2.0}  # max-pooled tokens, 8×8 grid
    assert recommended_settings(vit, (128, 128)) == {"target_layer": "blocks.3", "scale": 1.0}
