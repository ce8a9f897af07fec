"""Measured accuracy on the synthetic collection (one support per species, part maps as ground truth).

Numbers (64 px, 12 species × 4 test specimens, support = each species' first train image), measured with
``LabelPropagation(ColourPositionFeatures(), work_size=(64, 64), align=True, local=3)`` (defaults: colour
context 1, registration prior σ = 3 cells): trait mIoU 0.817 vs 0.095 for copying the support's mask; per
part 0.63 (beak), 0.70 (tail), 0.76 (body), 0.83-0.92 for the others.
The issue's targets (mIoU ≥ 0.85, every part ≥ 0.8) are NOT met; these tests pin what is reached.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation
from traitlens.segment.metrics import confusion, iou, iou_from_confusion, mean_iou
from traitlens.segment.tracking import track

K = 11


def _support(synth, sp):
    tr_i, tr_l, tr_s = synth["train"]
    s = int(np.where(tr_s == sp)[0][0])
    return synth["to_frame"](tr_i[s]), torch.from_numpy(tr_l[s].astype(np.int64))


def test_self_propagation_on_specimens(synth64):
    prop = LabelPropagation(ColourPositionFeatures(), work_size=(64, 64), align=True, local=3)
    scores = []
    for sp in (0, 5, 11):
        img, lab = _support(synth64, sp)
        prop.reset(K)
        prop.add_support(img, lab)
        scores.append(mean_iou(iou(prop.predict(img).argmax(0), lab, K)))
    # measured 0.959, 0.981, 0.974: the 0.99 holds on clean scenes (test_labelprop) but not here, where
    # the top-5 average over the window blurs 1-2 px parts (beak tips, eye rings); topk=1 gives 1.0.
    assert min(scores) >= 0.94, scores


def test_shifted_specimen_gives_shifted_prediction(synth64):
    img, lab = _support(synth64, 3)
    dy, dx = 5, -4
    moved = torch.roll(img, (dy, dx), dims=(1, 2))
    moved_lab = torch.roll(lab, (dy, dx), dims=(0, 1))
    prop = LabelPropagation(ColourPositionFeatures(), work_size=(64, 64), align=True, local=3)
    prop.reset(K)
    prop.add_support(img, lab)
    pred = prop.predict(moved).argmax(0)
    assert mean_iou(iou(pred, moved_lab, K)) >= 0.95
    assert mean_iou(iou(lab, moved_lab, K)) < 0.5  # without the shift, far off


@pytest.mark.slow
def test_collection_miou_beats_copying_the_mask(synth64):
    te_i, te_l, te_s = synth64["test"]
    prop = LabelPropagation(ColourPositionFeatures(), work_size=(64, 64), align=True, local=3)
    cm = torch.zeros(K, K, dtype=torch.long)
    cm_copy = torch.zeros(K, K, dtype=torch.long)
    for sp in range(12):
        support = _support(synth64, sp)
        queries = [(str(i), synth64["to_frame"](te_i[i])) for i in np.where(te_s == sp)[0]]
        for qid, soft in track(prop, [support], queries, order="pairwise", batch_size=4, num_labels=K):
            truth = torch.from_numpy(te_l[int(qid)].astype(np.int64))
            cm += confusion(soft.argmax(0), truth, K)
            cm_copy += confusion(support[1], truth, K)
    per = iou_from_confusion(cm)
    miou, miou_copy = mean_iou(per), mean_iou(iou_from_confusion(cm_copy))
    # measured 0.817 and 0.095
    assert miou >= 0.78
    assert miou >= miou_copy + 0.65
    assert float(per[1:].min()) >= 0.57  # the beak, the smallest part (measured 0.63)
