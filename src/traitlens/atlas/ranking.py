"""From per-image evidence records to ranked parts per pair, with bootstrap 95% intervals over images.

A pair (A, B) pools the correctly classified images of A (target A, reference B) and of B (target B,
reference A); each part's figures are taken over the images where the part is present:

- ``area``: mean area share; ``finer`` / ``gradcam`` / ``heads``: mean share of the map's energy on the part;
  ``*_lift``: that share over the area share (ratio of the means: 1 = the map is flat over the part);
- ``drop``: mean fall of p(own species) − p(other) when the part is removed; ``random``: the same for a random
  region of the same area on the rest of the specimen (each image's mean over ``EvidenceOptions.controls``
  draws); ``excess``: the mean of ``drop − random``.

Each interval is the 2.5-97.5 percentile range of the figure over ``bootstrap`` resamplings of the pooled
images (the same resamplings for every part and figure of a pair, so figures stay comparable).

Ranking (``score``, the *combined* evidence): each of Finer-CAM lift, head lift (Prompt-CAM/INTR only) and
intervention excess is divided by its largest value over the pair's parts (1 = the best part by that source),
and the score is their mean; Grad-CAM is the control and does not enter. The best part is *localised* when
its excess drop's interval lies above zero (it hurts more than a random region of the same area); otherwise
the pair reads "no localised trait found".
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from traitlens.atlas.result import Atlas, PairEvidence, PartEvidence, Stat

RANKED_BY = ("finer_lift", "heads_lift", "excess")


def _pair_rows(records: Sequence[dict], a: int, b: int) -> List[Tuple[dict, dict, str]]:
    """(record, the partner's entry, side) for every correct image of a compared with b and of b with a."""
    rows = []
    for r in records:
        if not r.get("correct"):
            continue
        label = int(r["label"])
        if label == a and str(b) in r["partners"]:
            rows.append((r, r["partners"][str(b)], "a"))
        elif label == b and str(a) in r["partners"]:
            rows.append((r, r["partners"][str(a)], "b"))
    return rows


def _array(values) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def _boot_means(values: np.ndarray, present: np.ndarray, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Means over present rows: (point N×P → P, resampled R×P)."""
    v = np.where(present, np.nan_to_num(values), 0.0)
    m = present.astype(float)
    point = v.sum(0) / np.maximum(m.sum(0), 1e-12)
    sums, counts = v[idx].sum(1), m[idx].sum(1)  # R×P
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(counts > 0, sums / np.maximum(counts, 1e-12), np.nan)
    point = np.where(m.sum(0) > 0, point, np.nan)
    return point, boot


def _interval(boot: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)


def pair_figures(rows, num_parts: int, bootstrap: int, rng: np.random.Generator) -> Dict[str, tuple]:
    """Every figure of every part over ``rows``: name → (mean P, lo P, hi P); plus ``n`` (P counts)."""
    area = _array([r["area"] for r, _, _ in rows])
    present = np.nan_to_num(area) > 0
    idx = rng.integers(0, len(rows), size=(bootstrap, len(rows)))
    out: Dict[str, tuple] = {"n": present.sum(0)}
    area_p, area_b = _boot_means(area, present, idx)
    out["area"] = (area_p, *_interval(area_b))
    maps = {"finer": _array([e["finer"] for _, e, _ in rows]), "gradcam": _array([r["gradcam"] for r, _, _ in rows])}
    if all("heads" in r for r, _, _ in rows):
        maps["heads"] = _array([r["heads"] for r, _, _ in rows])
    for name, values in maps.items():
        ok = present & ~np.isnan(values)
        p, bt = _boot_means(values, ok, idx)
        out[name] = (p, *_interval(bt))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_lift"] = (p / area_p, *_interval(bt / area_b))
    drop, rand = _array([e["drop"] for _, e, _ in rows]), _array([e["random"] for _, e, _ in rows])
    ok = present & ~np.isnan(drop) & ~np.isnan(rand)
    for name, values in (("drop", drop), ("random", rand), ("excess", drop - rand)):
        p, bt = _boot_means(values, ok, idx)
        out[name] = (p, *_interval(bt))
    return out


def combined_scores(figures: Dict[str, tuple]) -> np.ndarray:
    """The ranking score of each part (module docstring): the mean over the ranking sources of each source's
    figure over its best part's (NaN where no source scores the part)."""
    rel = []
    for name in RANKED_BY:
        v = figures.get(name, (None,))[0]
        if v is None or np.all(np.isnan(v)):
            continue
        best = np.nanmax(v)
        rel.append(v / best if best > 0 else np.where(np.isnan(v), np.nan, 0.0))
    if not rel:
        return np.full_like(figures["area"][0], np.nan)
    stack = np.stack(rel)  # S×P
    counts = (~np.isnan(stack)).sum(0)
    return np.where(counts > 0, np.nansum(stack, 0) / np.maximum(counts, 1), np.nan)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.095 else f"{100 * x:.1f}%"


def sentence(a_name: str, b_name: str, top: Optional[PartEvidence], localised: bool) -> str:
    """The card's one-line reading (markdown-style emphasis: *species*, **part**)."""
    if top is None:
        return f"*{a_name}* and *{b_name}*: no part could be scored."
    f = top.figures
    share = (f"{_pct(f['finer'].mean)} of the contrastive evidence" if not math.isnan(f["finer"].mean) else
             f"{_pct(f['heads'].mean)} of the head attention" if "heads" in f and not math.isnan(f["heads"].mean)
             else "no map evidence")
    evidence = (f"{share} on {_pct(f['area'].mean)} of the area; "
                f"removing it lowers p(own species) − p(other) by {f['drop'].mean:.2f} "
                f"[{f['drop'].lo:.2f}, {f['drop'].hi:.2f}], a random region of the same area by {f['random'].mean:.2f}")
    part = top.name.replace("_", " ")
    if not localised:
        return (f"*{a_name}* vs *{b_name}*: no localised trait found (the best part, the **{part}**, does not hurt "
                f"the prediction more than a random region: {evidence}).")
    return f"*{a_name}* differs from *{b_name}* most at the **{part}**: {evidence}."


def _representative(rows, side: str, part_index: int, figure: str = "finer") -> Optional[str]:
    """The path of the image of ``side`` whose share of Finer-CAM energy on the part is nearest the median."""
    cands = [(e[figure][part_index], r.get("path")) for r, e, s in rows
             if s == side and e[figure][part_index] is not None and (r["area"][part_index] or 0) > 0]
    if not cands:
        cands = [(0.0, r.get("path")) for r, _, s in rows if s == side]
        return cands[0][1] if cands else None
    med = float(np.median([v for v, _ in cands]))
    return min(cands, key=lambda t: (abs(t[0] - med), str(t[1])))[1]


def assemble(records: Sequence[dict], pairs: Sequence[Tuple[int, int]], class_names: Sequence[str],
             part_names: Dict[int, str], display: Optional[Sequence[str]] = None, bootstrap: int = 1000,
             seed: int = 0, skipped: Sequence[dict] = (), settings: Optional[dict] = None,
             progress: bool = True) -> Atlas:
    """The atlas of ``pairs`` (model class ids) from evidence records (:func:`~traitlens.atlas.build.records`).

    part_names: part id → name for the scored parts 1..P (record lists are indexed by id − 1). display: the
    species' display names (default: the class names). A pair without correctly classified images on either
    side is listed in ``skipped`` and left out.
    """
    from traitlens.progress import progress as bar

    display = list(display or class_names)
    ids = sorted(part_names)
    num_parts = max(ids) if ids else 0
    rng = np.random.default_rng(seed)
    out: List[PairEvidence] = []
    skipped = list(skipped)
    has_heads = bool(records) and all("heads" in r for r in records)
    for a, b in bar(pairs, desc="atlas: ranking pairs", unit="pair") if progress else pairs:
        rows = _pair_rows(records, a, b)
        sides = {"a": sum(s == "a" for *_, s in rows), "b": sum(s == "b" for *_, s in rows)}
        if not rows:
            skipped.append({"pair": f"{class_names[a]}:{class_names[b]}",
                            "reason": "no correctly classified image of either species"})
            continue
        figs = pair_figures(rows, num_parts, bootstrap, rng)
        score = combined_scores(figs)
        parts = []
        for pid in ids:
            k = pid - 1
            if figs["n"][k] == 0:
                continue  # a part neither species shows
            figures = {name: Stat(float(v[0][k]), float(v[1][k]), float(v[2][k]))
                       for name, v in figs.items() if name != "n"}
            parts.append(PartEvidence(pid, part_names[pid], int(figs["n"][k]), figures, float(score[k])))
        parts.sort(key=lambda p: (-(p.score if not math.isnan(p.score) else -np.inf), p.part))
        for r, p in enumerate(parts, start=1):
            p.rank = r
        top = parts[0] if parts else None
        localised = bool(top is not None and top.figures["excess"].lo > 0)
        examples = {}
        if top is not None:
            examples = {"a": _representative(rows, "a", top.part - 1), "b": _representative(rows, "b", top.part - 1)}
        out.append(PairEvidence(class_names[a], class_names[b], display[a], display[b], sides, parts, localised,
                                sentence(display[a], display[b], top, localised), examples))
    sources = ["finer", "gradcam"] + (["heads"] if has_heads else []) + ["intervention", "combined"]
    return Atlas(out, skipped, sources, dict(settings or {}, bootstrap=bootstrap, seed=seed))
