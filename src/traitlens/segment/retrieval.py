"""Trait-based retrieval by cycle consistency.

For a trait ``k`` of the support, every query is scored by how well the trait survives a round trip:
support → query (forward), memory reset, query's prediction → support (a real reverse pass), then the IoU
of the reconstructed trait with the support's true trait mask. A query that lacks the trait cannot hand it
back, so its score is low; queries are ranked by descending score.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from traitlens.segment.propagator import Propagator
from traitlens.segment.tracking import Support, cycle_predict


def cycle_score(propagator: Propagator, support: Support, query: torch.Tensor, trait: int,
                num_labels: Optional[int] = None) -> float:
    """IoU between the support's true ``trait`` mask and its reconstruction after support → query → support."""
    labels = support[1]
    truth = labels == trait
    if not bool(truth.any()):
        raise ValueError(f"trait {trait} does not occur in the support's label map")
    with torch.no_grad():
        _, back = cycle_predict(propagator, support, query, num_labels=num_labels)
    pred = back.argmax(0).to(truth.device) == trait
    union = (pred | truth).sum()
    return float((pred & truth).sum()) / float(union) if union > 0 else 0.0


def retrieve(propagator: Propagator, support: Support, queries: Iterable[Tuple[str, torch.Tensor]], trait: int,
             num_labels: Optional[int] = None) -> List[Tuple[str, float]]:
    """``(query id, cycle score)`` for every query, best first (ties keep the input order)."""
    k = num_labels or 1 + int(support[1].max())
    scored = [(qid, cycle_score(propagator, support, frame, trait, k)) for qid, frame in queries]
    return sorted(scored, key=lambda item: -item[1])


def precision_at(ranked: Sequence[str], relevant: Iterable[str], n: int = 10) -> float:
    """Fraction of the first ``n`` ranked ids that are relevant."""
    relevant = set(relevant)
    top = list(ranked)[:n]
    return sum(1 for r in top if r in relevant) / max(len(top), 1)
