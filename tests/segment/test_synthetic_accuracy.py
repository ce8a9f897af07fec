"""Measured accuracy on the synthetic collection (one support per species, part maps as ground truth).

Numbers: 128 px, 12 species × 4 test specimens, support = each species' first train image, with
``LabelPropagation(ColourPositionFeatures(), work_size=(128, 128), align=True, local=3)`` and its defaults
(colour context 1, registration prior σ = 3 cells, the query's frame border as background keys, two rounds
of edge-aware clean-up, exact matches keep their label). Trait mIoU 0.923 vs 0.093 for copying the
support's mask; per part 0.96 body, 0.94 head, 0.97 / 0.95 wings, 0.82 tail, 0.97 wing spot, 0.95 crest,
0.94 tail band, 0.94 eye ring, 0.79 beak. Self-propagation 1.000.
The issue's "every part ≥ 0.8" holds except for the beak (0.79): its misses are pale/grey beaks on grey
backgrounds, where colour features cannot tell beak from background (see the issue's closing note).
At 64 px the same settings give 0.886, beak 0.65 (1-px boundary errors weigh more on small parts).
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


def _propagator(size: int) -> LabelPropagation:
    return LabelPropagation(ColourPositionFeatures(), work_size=(size, size), align=True, local=3)


@pytest.mark.parametrize("size", [64, 128])
def test_self_propagation_on_specimens(synth64, synth128, size):
    synth = synth64 if size == 64 else synth128
    prop = _propagator(size)
    scores = []
    for sp in (0, 5, 11):
        img, lab = _support(synth, sp)
        prop.reset(K)
        prop.add_support(img, lab)
        scores.append(mean_iou(iou(prop.predict(img).argmax(0), lab, K)))
    # measured 1.000 at both sizes: registration keeps the identity, exact matches keep their label
    assert min(scores) >= 0.99, scores


def test_shifted_specimen_gives_shifted_prediction(synth128):
    img, lab = _support(synth128, 3)
    dy, dx = 10, -8
    moved = torch.roll(img, (dy, dx), dims=(1, 2))
    moved_lab = torch.roll(lab, (dy, dx), dims=(0, 1))
    prop = _propagator(128)
    prop.reset(K)
    prop.add_support(img, lab)
    pred = prop.predict(moved).argmax(0)
    # measured 0.959 (0.967 for species 7): registration lands within a fraction of a pixel, not exactly on
    # the integer shift, so the clean-up rounds a few 1-px structures
    assert mean_iou(iou(pred, moved_lab, K)) >= 0.94
    assert mean_iou(iou(lab, moved_lab, K)) < 0.5  # without the shift, far off


@pytest.mark.slow
def test_collection_miou_beats_copying_the_mask(synth128):
    te_i, te_l, te_s = synth128["test"]
    prop = _propagator(128)
    cm = torch.zeros(K, K, dtype=torch.long)
    cm_copy = torch.zeros(K, K, dtype=torch.long)
    for sp in range(12):
        support = _support(synth128, sp)
        queries = [(str(i), synth128["to_frame"](te_i[i])) for i in np.where(te_s == sp)[0]]
        for qid, soft in track(prop, [support], queries, order="pairwise", batch_size=4, num_labels=K):
            truth = torch.from_numpy(te_l[int(qid)].astype(np.int64))
            cm += confusion(soft.argmax(0), truth, K)
            cm_copy += confusion(support[1], truth, K)
    per = iou_from_confusion(cm)
    miou, miou_copy = mean_iou(per), mean_iou(iou_from_confusion(cm_copy))
    # measured 0.923 and 0.093; the issue asks ≥ 0.85 and ≥ copy + 0.3
    assert miou >= 0.90
    assert miou >= miou_copy + 0.75
    beak = 10
    others = [float(per[i]) for i in range(1, K) if i != beak]
    assert min(others) >= 0.80, others  # measured 0.82 (tail) and above
    assert float(per[beak]) >= 0.75  # measured 0.79: below the 0.8 (see the module doc)
