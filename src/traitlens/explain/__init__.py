"""Explanations: a batched CAM engine, Finer-CAM, and faithfulness and trait-localisation metrics.

>>> from traitlens.explain import explain
>>> e = explain(model, images, method="gradcam", finer=True, alpha=[0, 0.5, 1])   # maps: 3×B×H×W
"""

from traitlens.explain.cams import GRADIENT_METHODS
from traitlens.explain.engine import METHODS, Explanation, LayerSpec, explain, frozen, resolve_layer
from traitlens.explain.evaluate import EvaluationResult, evaluate_explanations
from traitlens.explain.metrics import (confidence_drop, contrastive_confidence_drop, deletion_insertion,
                                       diagnostic_trait_energy, energy_in_mask, pointing_game,
                                       relative_confidence_drop)
from traitlens.explain.targets import (REFERENCE_MODES, finer_coefficients, finer_target, reference_weights,
                                       select_references)

__all__ = [
    "explain", "Explanation", "LayerSpec", "METHODS", "GRADIENT_METHODS", "REFERENCE_MODES", "frozen",
    "resolve_layer", "finer_target", "finer_coefficients", "select_references", "reference_weights",
    "evaluate_explanations", "EvaluationResult", "confidence_drop", "relative_confidence_drop",
    "contrastive_confidence_drop", "deletion_insertion", "pointing_game", "energy_in_mask",
    "diagnostic_trait_energy",
]
# Multi-modal Finer-CAM (needs open_clip): traitlens.explain.clip.concept_classifier / explain_concepts.
