"""Trait segmentation by tracking: propagate one specimen's trait masks to a whole collection.

Public API (SAM 2 lives in :mod:`traitlens.segment.sam2`, imported only when asked for):

- :class:`Propagator` (the backend interface), :class:`LabelPropagation`, feature extractors
  (:class:`ColourPositionFeatures`, :class:`BackboneFeatures`, :class:`ConcatFeatures`), :func:`build_propagator`;
- :func:`track` (orders ``pairwise`` / ``chain`` / ``similarity``), :func:`cycle_predict`;
- :func:`cycle_finetune`, :func:`cycle_loss`, :func:`add_lora`; :func:`retrieve`, :func:`cycle_score`;
- supports from files :func:`load_support`, :func:`to_frame`; readers :func:`heliconius`, :func:`neon_beetles`
  (bulk segmentation on disk is a job of :mod:`traitlens.runs`);
- metrics: :func:`confusion`, :func:`iou`, :func:`mean_iou`, :func:`measure`.
"""

from traitlens.segment.backends import build_propagator
from traitlens.segment.datasets import TraitMaskDataset, heliconius, neon_beetles
from traitlens.segment.features import BackboneFeatures, ColourPositionFeatures, ConcatFeatures
from traitlens.segment.finetune import add_lora, cycle_finetune, cycle_loss
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.metrics import confusion, iou, mean_iou, measure
from traitlens.segment.propagator import Propagator
from traitlens.segment.retrieval import cycle_score, retrieve
from traitlens.segment.support import load_support, to_frame
from traitlens.segment.tracking import cycle_predict, similarity_order, track

__all__ = [
    "Propagator", "LabelPropagation", "LabelPropOptions", "ColourPositionFeatures", "BackboneFeatures", "ConcatFeatures",
    "build_propagator", "track", "similarity_order", "cycle_predict", "cycle_finetune", "cycle_loss", "add_lora",
    "retrieve", "cycle_score", "load_support", "to_frame", "heliconius", "neon_beetles", "TraitMaskDataset",
    "confusion", "iou", "mean_iou", "measure",
]
