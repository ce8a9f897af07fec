"""The atlas as data: per pair, the ranked parts with every evidence figure and its bootstrap interval.

``Atlas.write(out)`` writes ``atlas.json`` (everything, read back by :func:`load_atlas`) and ``atlas.csv``
(one row per pair and part: ``pair, a, b, part, rank, score, <figure>, <figure>_lo, <figure>_hi, ...``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from traitlens.errors import UserError

ATLAS_FORMAT = 1

#: The evidence figures of a part, in the order atlas.csv lists them.
FIGURES = ("area", "finer", "finer_lift", "gradcam", "gradcam_lift", "heads", "heads_lift", "drop", "random",
           "excess")
#: Each evidence source and the figure it ranks parts by (``combined``: the atlas' own ranking score).
SOURCES = {"finer": "finer_lift", "gradcam": "gradcam_lift", "heads": "heads_lift", "intervention": "excess",
           "combined": "score"}


@dataclass
class Stat:
    """A mean over images with its bootstrap 95% interval."""

    mean: float
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return {"mean": _num(self.mean), "lo": _num(self.lo), "hi": _num(self.hi)}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Stat"]:
        if d is None:
            return None
        return cls(*(float("nan") if d.get(k) is None else float(d[k]) for k in ("mean", "lo", "hi")))


def _num(v: float):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


@dataclass
class PartEvidence:
    """One part of one pair: ``figures`` (name → Stat, :data:`FIGURES`), ``score`` (the combined ranking
    score), ``rank`` (1 = the part that tells the pair apart best), ``n`` (images where the part is present)."""

    part: int
    name: str
    n: int
    figures: Dict[str, Stat]
    score: float = float("nan")
    rank: int = 0

    def value(self, figure: str) -> float:
        if figure == "score":
            return self.score
        s = self.figures.get(figure)
        return float("nan") if s is None else s.mean

    def to_dict(self) -> dict:
        return {"part": self.part, "name": self.name, "n": self.n, "rank": self.rank, "score": _num(self.score),
                "figures": {k: v.to_dict() for k, v in self.figures.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "PartEvidence":
        return cls(int(d["part"]), str(d["name"]), int(d["n"]),
                   {k: Stat.from_dict(v) for k, v in d["figures"].items()},
                   float("nan") if d.get("score") is None else float(d["score"]), int(d.get("rank", 0)))


@dataclass
class PairEvidence:
    """One species pair: class names and display names of A and B, correctly classified images used on each
    side, the parts ranked (best first), whether the best part beats the random-region control, the sentence,
    and a representative specimen (image path) of each side."""

    a: str
    b: str
    a_name: str
    b_name: str
    images: Dict[str, int]
    parts: List[PartEvidence]
    localised: bool
    sentence: str
    examples: Dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.a}:{self.b}"

    @property
    def top(self) -> Optional[PartEvidence]:
        return self.parts[0] if self.parts else None

    def ranking(self, source: str = "combined") -> List[int]:
        """Part ids ordered by ``source``'s figure (:data:`SOURCES`), best first; parts without it left out."""
        figure = SOURCES[source]
        scored = [(p.value(figure), p.part) for p in self.parts if not math.isnan(p.value(figure))]
        return [pid for _, pid in sorted(scored, key=lambda t: (-t[0], t[1]))]

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "a_name": self.a_name, "b_name": self.b_name, "images": self.images,
                "localised": self.localised, "sentence": self.sentence, "examples": self.examples,
                "parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, d: dict) -> "PairEvidence":
        return cls(d["a"], d["b"], d["a_name"], d["b_name"], dict(d["images"]),
                   [PartEvidence.from_dict(p) for p in d["parts"]], bool(d["localised"]), d["sentence"],
                   dict(d.get("examples") or {}))


@dataclass
class Atlas:
    """The whole atlas: the pairs (in the order compared), the pairs left out with the reason, the sources of
    evidence it holds, and the settings it was made with."""

    pairs: List[PairEvidence]
    skipped: List[dict] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def pair(self, a: str, b: str) -> PairEvidence:
        for p in self.pairs:
            if {p.a, p.b} == {a, b} or {p.a_name, p.b_name} == {a, b}:
                return p
        raise UserError(f"the atlas has no pair {a}:{b}")

    def to_dict(self) -> dict:
        return {"format": ATLAS_FORMAT, "sources": self.sources, "settings": self.settings,
                "skipped": self.skipped, "pairs": [p.to_dict() for p in self.pairs]}

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        head = ["pair", "a", "b", "part", "rank", "score", "n"]
        for f in FIGURES:
            head += [f, f"{f}_lo", f"{f}_hi"]
        w.writerow(head)
        for pair in self.pairs:
            for p in pair.parts:
                row = [pair.key, pair.a, pair.b, p.name, p.rank, _num(p.score), p.n]
                for f in FIGURES:
                    s = p.figures.get(f)
                    row += [""] * 3 if s is None else ["" if _num(v) is None else _num(v) for v in (s.mean, s.lo, s.hi)]
                w.writerow(row)
        return buf.getvalue()

    def write(self, out: Union[str, Path]) -> Dict[str, Path]:
        """``atlas.json`` and ``atlas.csv`` in ``out`` (each written whole: temporary file, then rename)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "atlas.json", "csv": out / "atlas.csv"}
        _write_whole(paths["json"], json.dumps(self.to_dict(), indent=1) + "\n")
        _write_whole(paths["csv"], self.csv_text())
        return paths

    @classmethod
    def from_dict(cls, d: dict, source: str = "atlas.json") -> "Atlas":
        if d.get("format") != ATLAS_FORMAT:
            raise UserError(f"{source}: not an atlas of format {ATLAS_FORMAT} (found {d.get('format')!r})")
        return cls([PairEvidence.from_dict(p) for p in d["pairs"]], list(d.get("skipped", [])),
                   list(d.get("sources", [])), dict(d.get("settings", {})))


def _write_whole(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def load_atlas(path: Union[str, Path]) -> Atlas:
    """An atlas from its folder or its ``atlas.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "atlas.json"
    if not p.is_file():
        raise UserError(f"no atlas at {p}; run `traitlens atlas ... --out DIR` first")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{p}: not valid JSON ({exc})") from None
    return Atlas.from_dict(data, str(p))


def figure_names(sources: Sequence[str]) -> List[str]:
    return [f for f in FIGURES if not (f.startswith("heads") and "heads" not in sources)]
