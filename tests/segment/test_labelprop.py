"""Label propagation: exactness on the support itself, equivariance to shifts, the DINO top-k protocol."""

from __future__ import annotations

import torch

from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.metrics import iou, mean_iou
from traitlens.segment.tracking import track


def _miou(pred, truth, k=4):
    return mean_iou(iou(pred, truth, k))


def test_support_onto_itself_is_exact(scene):
    img, lab = scene()
    for align in (False, True):
        prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), align=align))
        prop.reset(4)
        prop.add_support(img, lab)
        pred = prop.predict(img).argmax(0)
        assert _miou(pred, lab) >= 0.99, align


def test_shifted_query_gives_shifted_prediction(scene):
    img, lab = scene()
    moved, moved_lab = scene(shift=(5, 3), seed=1)
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), align=True))
    prop.reset(4)
    prop.add_support(img, lab)
    pred = prop.predict(moved).argmax(0)
    # measured 1.0 on this scene; the unshifted support mask scores far lower on the moved frame
    assert _miou(pred, moved_lab) >= 0.95
    assert _miou(lab, moved_lab) < 0.7


def test_predictions_at_each_frame_size_and_batched_equals_single(scene):
    img, lab = scene()
    q1, _ = scene(shift=(2, 2), seed=2)
    q2 = torch.nn.functional.interpolate(q1[None], size=(40, 56), mode="bilinear", align_corners=False)[0]
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48)))
    out = dict(track(prop, [(img, lab)], [("a", q1), ("b", q2)], order="pairwise", batch_size=2))
    assert out["a"].shape == (4, 48, 48) and out["b"].shape == (4, 40, 56)
    assert torch.allclose(out["a"].sum(0), torch.ones(48, 48), atol=1e-4)
    single = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48)))
    single.reset(4)
    single.add_support(img, lab)
    assert torch.allclose(single.predict(q1), out["a"], atol=1e-5)


def test_topk_weights_follow_exp_affinity_over_tau():
    """One query location, keys with known similarities: the soft label is the top-k softmax(aff/τ)."""
    prop = LabelPropagation(lambda x: x, LabelPropOptions(work_size=(1, 3), topk=2, tau=0.1))
    prop.reset(3)
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    prop._support = [(keys.t().reshape(2, 1, 3), torch.eye(3)[:, [0, 1, 2]].reshape(3, 1, 3), None)]
    query = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    soft = prop.propagate(query)[0, :, 0, 0]
    w = torch.softmax(torch.tensor([1.0, 0.8]) / 0.1, 0)  # the third key is outside the top 2
    assert torch.allclose(soft, torch.tensor([w[0], w[1], 0.0]), atol=1e-5)


def test_cleanup_reuses_affinities_and_matches_repeated_window_passes(scene):
    """The clean-up's rounds gather from one set of window affinities: the same as a full pass each round."""
    img, lab = scene(seed=3)
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), refine=3))
    q = prop.encode(img[None])
    soft = torch.softmax(torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0)), dim=1)
    expected = soft
    for _ in range(3):
        expected = prop.propagate_local(q, q, expected, radius=prop.options.refine_local)
    assert torch.allclose(prop.refine_own(q, soft), expected, atol=1e-6)


def test_cleanup_rounds_scale_with_the_square_of_the_grid():
    from traitlens.segment.labelprop import refine_rounds

    assert [refine_rounds((s, s)) for s in (32, 64, 128, 256, 512)] == [1, 2, 8, 32, 32]
    # the smaller side sets the rounds
    assert LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(128, 96))).options.refine == 4
    assert LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(128, 128), refine=0)).options.refine == 0
