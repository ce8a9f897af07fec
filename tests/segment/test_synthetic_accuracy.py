"""Measured accuracy on the synthetic collection (one support per species, part maps as ground truth).

Numbers: 128 px, 12 species × 4 test specimens, support = each species' first train image, with
``LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(128, 128), align=True, local=3))`` and its defaults
(colour context 1, registration prior σ = 3 cells, the query's frame border as background keys, 8 rounds
of edge-aware clean-up (``2·(128/64)²``), exact matches keep their label). Trait mIoU 0.930 vs 0.093 for
copying the support's mask; per part 0.96 body, 0.95 head, 0.98 / 0.96 wings, 0.83 tail, 0.97 wing spot,
0.94 crest, 0.95 tail band, 0.95 eye ring, 0.81 beak. Self-propagation 1.000.
With 2 clean-up rounds (the previous default) the beak stayed at 0.79 (grey beaks on grey backgrounds
erode); 8 rounds lift it on three collection seeds (seed 0 / 1 / 2: mIoU 0.923 → 0.930 / 0.912 → 0.917 /
0.900 → 0.911, weakest part 0.79 → 0.81 / 0.81 → 0.82 / 0.79 → 0.81).
At 64 px the default is 2 rounds: 0.886, beak 0.65 (1-px boundary errors weigh more on small parts).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.metrics import confusion, iou, iou_from_confusion, mean_iou
from traitlens.segment.tracking import track

K = 11


def _support(synth, sp):
    tr_i, tr_l, tr_s = synth["train"]
    s = int(np.where(tr_s == sp)[0][0])
    return synth["to_frame"](tr_i[s]), torch.from_numpy(tr_l[s].astype(np.int64))


def _propagator(size: int) -> LabelPropagation:
    return LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(size, size), align=True, local=3))


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
    # measured 0.930 and 0.093; the issue asks ≥ 0.85 and ≥ copy + 0.3
    assert miou >= 0.91
    assert miou >= miou_copy + 0.75
    parts = [round(float(v), 3) for v in per[1:]]
    # the issue asks every part ≥ 0.8; measured 0.809 (beak) and 0.826 (tail) the weakest
    assert min(parts) >= 0.80, parts
