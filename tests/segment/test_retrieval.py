"""Trait retrieval by cycle consistency on synthetic specimens where half the species lack the trait."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.retrieval import cycle_score, precision_at, retrieve

EYE_RING = 9


def test_precision_at_10_is_one_when_half_lack_the_trait(synth64):
    tr_i, tr_l, tr_s = synth64["train"]
    te_i, te_l, te_s = synth64["test"]
    frame = synth64["to_frame"]
    has = np.array([(te_l[i] == EYE_RING).any() for i in range(len(te_l))])
    assert has.sum() * 2 == len(has)  # seed 0: six species with an eye ring, six without
    s = int(np.where((tr_s == 6))[0][0])  # a species with a (white) eye ring
    support = (frame(tr_i[s]), torch.from_numpy(tr_l[s]).long())
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(64, 64), align=True, local=3))
    ranked = retrieve(prop, support, [(str(i), frame(te_i[i])) for i in range(len(te_i))], EYE_RING, num_labels=11)
    relevant = {str(i) for i in np.where(has)[0]}
    # measured: the first 12 are all positives (scores 0.87-1.0), the best negative scores 0.62
    assert precision_at([r for r, _ in ranked], relevant, 10) == 1.0
    best_negative = max(sc for r, sc in ranked if r not in relevant)
    assert ranked[9][1] > best_negative + 0.1


def test_cycle_score_is_one_for_the_support_itself(scene):
    img, lab = scene()
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(48, 48), align=True))
    assert cycle_score(prop, (img, lab), img, 2) >= 0.99
    blank = torch.full_like(img, 0.45)
    assert cycle_score(prop, (img, lab), blank, 2) < 0.2
    with pytest.raises(ValueError):
        cycle_score(prop, (img, lab), img, 7)
