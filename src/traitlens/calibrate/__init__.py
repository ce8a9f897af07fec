"""Calibrated fine-tuning: restore classes absent from fine-tuning with one logit bias.

Mai et al., "Fine-Tuning is Fine, if Calibrated" (NeurIPS 2024): a classifier fine-tuned on a subset S of its
classes keeps good features for the absent classes U; their logits merely end up on a smaller scale, and
``argmax_c z_c + γ·[c ∈ U]`` brings them back. Every function takes numpy arrays or torch tensors
(logits N×C, labels N, ``seen`` = the class ids of S) and returns the same kind.
"""

from traitlens.calibrate.accuracy import TABLE_KEYS, accuracy_table, ncm_accuracy, ncm_logits
from traitlens.calibrate.bias import PCVResult, alg_gamma, apply_gamma, pcv_fold_gamma, pcv_gamma
from traitlens.calibrate.confidence import expected_calibration_error, fit_temperature
from traitlens.calibrate.seen_unseen import ausuc, oracle_gamma, seen_unseen_curve, switch_stats

__all__ = [
    "TABLE_KEYS", "accuracy_table", "alg_gamma", "apply_gamma", "ausuc", "expected_calibration_error",
    "fit_temperature", "ncm_accuracy", "ncm_logits", "oracle_gamma", "pcv_fold_gamma", "pcv_gamma",
    "PCVResult", "seen_unseen_curve", "switch_stats",
]
