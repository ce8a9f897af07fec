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
    """The clean-up's rounds gather from one set of window affinities: the same as a full pass each round
    (at the clean-up's own temperature; here the propagation's, which ``propagate_local`` uses)."""
    img, lab = scene(seed=3)
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), refine=3, refine_tau=0.1))
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


def test_sharp_cleanup_temperature_keeps_thin_parts():
    """The clean-up on rendered beetles (legs and antennae 2-3 px wide at 128 px), started from their true part
    maps blurred by a 3×3 box (every boundary a pixel uncertain): at its own temperature (0.02) the thin parts
    keep more of their IoU than at the propagation's τ = 0.1, whose averaging reaches across edges."""
    import numpy as np

    from traitlens.data.synthetic import SynthConfig, generate_arrays
    from traitlens.segment.propagator import one_hot

    cfg = SynthConfig(species=2, per_species=2, size=128, seed=0, body_plan="beetle", rotation=35.0,
                      split=(1.0, 0.0, 0.0))
    images, labels, _ = generate_arrays(cfg, "train")
    thin_ids = torch.tensor([5, 6])  # legs, antennae
    scores = {}
    for refine_tau in (0.1, LabelPropOptions().refine_tau):
        prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(128, 128), refine_tau=refine_tau))
        inter = union = 0
        for img, lab in zip(images, labels):
            frame = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
            truth = torch.from_numpy(lab.astype(np.int64))
            soft = one_hot(truth, int(truth.max()) + 1)[None].float()
            guess = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(soft, [1] * 4, mode="replicate"), 3, stride=1)
            pred = prop.refine_own(prop.encode(frame[None]), guess)[0].argmax(0)
            thin, pred_thin = torch.isin(truth, thin_ids), torch.isin(pred, thin_ids)
            inter += int(((pred == truth) & thin).sum())
            union += int((thin | pred_thin).sum())
        scores[refine_tau] = inter / union
    # measured 0.865 at τ = 0.1 and 0.887 at 0.02 (each of the 4 beetles gains 0.01-0.04; on seeds 1 and 2 all 8 gain, 0.002-0.06)
    assert scores[0.02] >= scores[0.1] + 0.012, scores
    assert scores[0.02] >= 0.87, scores
