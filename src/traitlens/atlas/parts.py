"""Parts for every image: names, and part maps propagated from a few labelled specimens (SST).

A collection with part masks gives them directly. Without, the user labels a few specimens (one per species,
or one per genus) and :class:`PartPropagator` carries their part maps to every other image with the
segmentation-by-tracking API (:func:`traitlens.segment.track`, label propagation on colour/position features
with registration): an image takes the supports of its own species, else of its genus, else all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from traitlens.errors import UserError


def part_names_from(traits=None, path: Union[str, Path, None] = None,
                    ids: Optional[Iterable[int]] = None) -> Dict[int, str]:
    """Part id → name of the parts to score (ids ≥ 1).

    ``path``: a ``--part-names`` file, JSON (``{"1": "body", ...}`` or a list of names, index = id) or text
    lines ``<id> <name>``; else ``traits`` (traits.json's parts); else ``"part <id>"`` for ``ids``.
    """
    if path is not None:
        return read_part_names(path)
    if traits is not None:
        return {int(p.id): p.name for p in traits.parts if int(p.id) > 0}
    if ids is None:
        raise UserError("part names are needed: a collection with traits.json, or a --part-names file")
    return {int(i): f"part {int(i)}" for i in sorted(set(ids)) if int(i) > 0}


def read_part_names(path: Union[str, Path]) -> Dict[int, str]:
    """``{part id: name}`` (ids ≥ 1) from a part-names file: JSON (``{"6": "wing_spot"}`` or
    ``["background", "body", ...]``) or text lines ``ID NAME`` (``#`` starts a comment line). Every command
    that takes ``--part-names`` reads it here."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"part-names file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    names: Dict[int, str] = {}
    try:
        if isinstance(data, dict):
            names = {int(k): str(v) for k, v in data.items()}
        elif isinstance(data, list):
            names = {i: str(v) for i, v in enumerate(data)}
        else:
            for n, line in enumerate(text.splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                pid, _, name = line.partition(" ")
                if not name.strip():
                    raise ValueError(f"line {n}: expected '<id> <name>'")
                names[int(pid)] = name.strip()
    except ValueError as exc:
        raise UserError(f"{p}: not a part-names file ({exc}); write JSON {{\"1\": \"body\"}} or lines '1 body'") from None
    names = {k: v for k, v in names.items() if k > 0}
    if not names:
        raise UserError(f"{p}: names no part with an id ≥ 1")
    return names


def check_support_ids(labels: torch.Tensor, part_names: Dict[int, str], where: str) -> None:
    """Refuse a support mask with part ids the part names do not name (one clear line)."""
    ids = sorted(int(i) for i in torch.unique(labels).tolist() if int(i) > 0)
    unknown = [i for i in ids if i not in part_names]
    if unknown:
        raise UserError(f"support mask {where}: part ids {unknown} are not in the part names "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(part_names.items())[:6])}...); "
                        "add them to --part-names or relabel the mask")


@dataclass
class LabelledSupport:
    """A labelled specimen: ``frame`` 3×H×W in [0, 1], ``labels`` H×W part ids, ``species`` its model class id
    (None: used for any species without a closer support)."""

    frame: torch.Tensor
    labels: torch.Tensor
    species: Optional[int] = None
    where: str = ""


class PartPropagator:
    """Part maps for query images from labelled supports (segmentation by tracking).

    ``genus``: model class id → a genus key (from traits.json), so a species without its own support takes
    its genus' supports. ``propagator``: a :class:`traitlens.segment.Propagator` (default: label propagation
    on colour/position features with registration, at the queries' size).
    """

    def __init__(self, supports: Sequence[LabelledSupport], genus: Optional[Dict[int, str]] = None,
                 propagator=None, batch_size: int = 16):
        if not supports:
            raise UserError("parts from supports need at least one labelled specimen (--support IMG --support-mask MASK)")
        self.supports = list(supports)
        self.genus = dict(genus or {})
        self.propagator = propagator
        self.batch_size = batch_size
        self.num_labels = 1 + max(int(s.labels.max()) for s in self.supports)

    def supports_for(self, species: int) -> List[LabelledSupport]:
        own = [s for s in self.supports if s.species == species]
        if own:
            return own
        g = self.genus.get(species)
        kin = [s for s in self.supports if s.species is not None and g is not None and self.genus.get(s.species) == g]
        if kin:
            return kin
        anyone = [s for s in self.supports if s.species is None]
        return anyone or self.supports

    def _propagator(self, size):
        if self.propagator is None:
            from traitlens.segment import ColourPositionFeatures, LabelPropagation, LabelPropOptions

            self.propagator = LabelPropagation(ColourPositionFeatures(),
                                               LabelPropOptions(work_size=tuple(size), align=True, local=3))
        return self.propagator

    def __call__(self, frames: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """frames N×3×H×W in [0, 1], species N (model class ids) → N×H×W long part ids."""
        from traitlens.segment import track

        out = torch.zeros(frames.shape[0], *frames.shape[-2:], dtype=torch.long)
        prop = self._propagator(frames.shape[-2:])
        groups: Dict[tuple, List[int]] = {}
        for i, s in enumerate(species.tolist()):
            key = tuple(id(x) for x in self.supports_for(int(s)))
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            chosen = self.supports_for(int(species[members[0]]))
            pairs = [(s.frame, s.labels) for s in chosen]
            queries = [(str(i), frames[i].cpu()) for i in members]
            for qid, soft in track(prop, pairs, queries, order="pairwise", batch_size=self.batch_size,
                                   num_labels=self.num_labels):
                out[int(qid)] = soft.argmax(0).cpu()
        return out
