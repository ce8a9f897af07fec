"""Which species pairs an atlas compares: siblings, the most confused, all, or named ``A:B`` pairs.

Pairs are unordered and given as model class ids ``(a, b)`` with ``a < b``; names resolve against the
model's class names (folder names), the display names of ``traits.json`` (``"Pseudavis rubra"``) and
case/underscore-folded spellings of either.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from traitlens.errors import UserError

PAIR_MODES = ("siblings", "confused", "all")
Pair = Tuple[int, int]


def _fold(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def name_lookup(class_names: Sequence[str], traits=None) -> Dict[str, int]:
    """Every accepted spelling of each class → its model class id."""
    lookup: Dict[str, int] = {}
    for i, name in enumerate(class_names):
        lookup[_fold(name)] = i
        if traits is not None:
            try:
                lookup[_fold(traits.name(name))] = i
            except UserError:
                pass  # a class traits.json does not know: its folder name still works
    return lookup


def display_name(traits, name: str) -> str:
    """A class's display name from ``traits`` (its folder name when traits.json does not know it)."""
    if traits is None:
        return name
    try:
        return traits.name(name)
    except UserError:
        return name


def resolve_species(name: str, class_names: Sequence[str], traits=None) -> int:
    """One species (index, folder name or display name) → the model's class id; UserError when unknown."""
    text = str(name).strip()
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    found = name_lookup(class_names, traits).get(_fold(text))
    if found is None:
        shown = ", ".join(list(class_names)[:4]) + (", ..." if len(class_names) > 4 else "")
        raise UserError(f"the model does not know the species {text!r} (it knows {len(class_names)}: {shown})")
    return found


def parse_pairs(spec: Union[str, Sequence], class_names: Sequence[str], traits=None
                ) -> Tuple[List[Pair], List[dict]]:
    """Explicit pairs (``"A:B,C:D"`` or a list of ``"A:B"`` / ``(A, B)``) → ``(pairs, skipped)``.

    A pair naming a species the model does not know, or a species with itself, is left out and listed in
    ``skipped`` (``{"pair": text, "reason": ...}``) so the rest of the atlas is still made.
    """
    if isinstance(spec, str):
        entries = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        entries = list(spec)
    pairs: List[Pair] = []
    skipped: List[dict] = []
    for entry in entries:
        if isinstance(entry, str):
            if entry.count(":") != 1:
                skipped.append({"pair": entry, "reason": "not of the form A:B"})
                continue
            a_text, b_text = entry.split(":")
        else:
            a_text, b_text = entry
        text = f"{a_text}:{b_text}"
        try:
            a, b = resolve_species(a_text, class_names, traits), resolve_species(b_text, class_names, traits)
        except UserError as exc:
            skipped.append({"pair": text, "reason": str(exc)})
            continue
        if a == b:
            skipped.append({"pair": text, "reason": "a species compared with itself"})
            continue
        pair = (min(a, b), max(a, b))
        if pair not in pairs:
            pairs.append(pair)
    return pairs, skipped


def sibling_pairs(class_names: Sequence[str], traits) -> List[Pair]:
    """Every pair of species of one genus in ``traits`` that the model knows, genus by genus."""
    if traits is None:
        raise UserError("pairs='siblings' needs the collection's traits.json (genera); choose confused, all or A:B")
    known = {}
    for i, name in enumerate(class_names):
        try:
            known[traits.index(name)] = i
        except UserError:
            continue
    pairs: List[Pair] = []
    for genus in traits.genera:
        members = [known[s] for s in traits.species_in(genus) if s in known]
        pairs += [(min(a, b), max(a, b)) for k, a in enumerate(members) for b in members[k + 1:]]
    return pairs


def confused_pairs(confusion, top: Optional[int] = None) -> List[Pair]:
    """The most confused pairs of a K×K confusion matrix (rows: truth, columns: prediction), most first.

    A pair's count is ``C[a, b] + C[b, a]``; pairs never confused are left out; ``top`` (default K) caps the
    list.
    """
    c = np.asarray(confusion, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise UserError(f"the confusion matrix must be K×K, got shape {c.shape}")
    k = c.shape[0]
    sym = c + c.T
    scored = [(sym[a, b], a, b) for a in range(k) for b in range(a + 1, k) if sym[a, b] > 0]
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(a, b) for _, a, b in scored[:top if top is not None else k]]


def select_pairs(spec, class_names: Sequence[str], traits=None, confusion=None, top: Optional[int] = None
                 ) -> Tuple[List[Pair], List[dict]]:
    """``spec``: ``siblings``, ``confused`` (needs ``confusion``), ``all``, or explicit pairs
    (:func:`parse_pairs`). Returns ``(pairs, skipped)``; UserError when no pair is left."""
    skipped: List[dict] = []
    if isinstance(spec, str) and spec in PAIR_MODES:
        if spec == "siblings":
            pairs = sibling_pairs(class_names, traits)
        elif spec == "confused":
            if confusion is None:
                raise UserError("pairs='confused' needs the model's confusion matrix on the validation split")
            pairs = confused_pairs(confusion, top)
        else:
            k = len(class_names)
            pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    else:
        pairs, skipped = parse_pairs(spec, class_names, traits)
    if not pairs:
        why = "; ".join(f"{s['pair']}: {s['reason']}" for s in skipped[:3]) or f"pairs={spec!r} selects none"
        raise UserError(f"no species pair to compare ({why})")
    return pairs, skipped


def partner_table(pairs: Sequence[Pair], num_classes: int) -> List[List[int]]:
    """For each class, the classes it is compared with (both directions of every pair), in pair order."""
    partners: List[List[int]] = [[] for _ in range(num_classes)]
    for a, b in pairs:
        partners[a].append(b)
        partners[b].append(a)
    return partners
