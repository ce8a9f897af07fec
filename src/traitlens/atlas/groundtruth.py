"""The atlas against ground truth: does each evidence source rank one of a pair's diagnostic parts first?

The synthetic collection's pair table (``traits.json``) names, for every pair of species, the parts in which
they differ. For each source (:data:`~traitlens.atlas.result.SOURCES`): precision@1 (share of pairs whose
top-ranked part is diagnostic) and mean reciprocal rank (of the first diagnostic part; 0 when none is ranked).
Works for any collection with a ``traits.json``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from traitlens.atlas.result import SOURCES, Atlas


def precision_table(atlas: Atlas, traits, sources: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """``{source: {"precision_at_1", "mrr", "pairs"}}`` over the atlas' pairs that have diagnostic parts."""
    out: Dict[str, dict] = {}
    for source in sources or [s for s in SOURCES if s in atlas.sources]:
        hits, rr, n = 0, 0.0, 0
        for pair in atlas.pairs:
            truth = set(traits.diagnostic_parts(pair.a, pair.b))
            ranking = pair.ranking(source)
            if not truth or not ranking:
                continue
            n += 1
            hits += ranking[0] in truth
            first = next((r for r, pid in enumerate(ranking, start=1) if pid in truth), None)
            rr += 1.0 / first if first else 0.0
        out[source] = {"precision_at_1": hits / n if n else float("nan"), "mrr": rr / n if n else float("nan"),
                       "pairs": n}
    return out
