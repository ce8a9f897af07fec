"""Orderings, re-inserting the support, the similarity path, cycles, metrics and measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.metrics import confusion, iou, mean_iou, measure
from traitlens.segment.tracking import cycle_predict, similarity_order, track


def test_chain_memory_is_bounded_and_support_reinserted(scene):
    img, lab = scene()
    queries = [(str(i), scene(shift=(i % 3, i % 2), seed=i)[0]) for i in range(7)]
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), memory=2))
    out = list(track(prop, [(img, lab)], queries, order="chain", reinsert_every=3))
    assert [q for q, _ in out] == [str(i) for i in range(7)]
    assert len(prop._recent) == 2 and len(prop._support) == 1
    for qid, soft in out:
        truth = scene(shift=(int(qid) % 3, int(qid) % 2), seed=int(qid))[1]
        assert mean_iou(iou(soft.argmax(0), truth, 4)) > 0.9


def test_similarity_order_walks_to_nearest_neighbours():
    feats = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([0.7, 0.7])}
    frames = [torch.full((1,), float(i)) for i in range(3)]
    support = [(torch.full((1,), -1.0), None)]
    describe = lambda f: feats[int(f[0])] if f[0] >= 0 else torch.tensor([1.0, 0.1])  # noqa: E731
    assert similarity_order(describe, support, frames) == [0, 2, 1]


def test_unknown_order_and_empty_support(scene):
    img, lab = scene()
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48)))
    with pytest.raises(ValueError, match="order"):
        list(track(prop, [(img, lab)], [("a", img)], order="random"))
    with pytest.raises(ValueError):
        list(track(prop, [], [("a", img)]))


def test_cycle_predict_is_a_real_reverse_pass(scene):
    img, lab = scene()
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), align=True))
    blank = torch.full_like(img, 0.45)
    forward, back = cycle_predict(prop, (img, lab), blank, num_labels=4)
    # a blank query carries no trait, so nothing can come back: the support's labels did not leak
    assert float((back.argmax(0) > 0).float().mean()) < 0.05


def test_confusion_iou_and_measurements():
    truth = torch.tensor([[0, 1, 1], [0, 2, 2], [0, 0, 2]])
    pred = torch.tensor([[0, 1, 0], [0, 2, 2], [0, 2, 2]])
    cm = confusion(pred, truth, 4)
    assert cm.sum() == 9 and cm[1, 1] == 1 and cm[1, 0] == 1 and cm[0, 2] == 1
    per = iou(pred, truth, 4)
    assert per[1] == pytest.approx(0.5) and per[2] == pytest.approx(0.75) and torch.isnan(per[3])
    assert mean_iou(per) == pytest.approx(0.625)
    image = np.zeros((3, 3, 3), np.uint8)
    image[..., 0] = 200
    rows = measure(truth.numpy(), image)
    assert [r["trait"] for r in rows] == [1, 2]
    r2 = rows[1]
    assert (r2["area_px"], r2["centroid_x"], r2["centroid_y"]) == (3, pytest.approx(5 / 3), pytest.approx(4 / 3))
    assert (r2["bbox_x0"], r2["bbox_y0"], r2["bbox_x1"], r2["bbox_y1"]) == (1, 1, 2, 2)
    assert r2["mean_r"] == 200 and r2["mean_g"] == 0
