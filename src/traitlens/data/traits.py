"""The trait table of a synthetic collection: parts, species, genera and what tells two species apart.

``traits.json`` (written by :mod:`traitlens.data.synthetic`) is the ground truth every later
quantitative check reads: which part ids exist and where the small trait parts sit, every species'
trait values, the genus tree, and for every pair of species the part ids in which they differ (the
*diagnostic parts* of the pair).

Part ids (fixed for every collection; label maps use them, 0 = background)::

    0 background   1 body   2 head   3 left wing   4 right wing   5 tail
    6 wing spot (on both wings)   7 crest (on the head)   8 tail band (across the tail)
    9 eye ring (on the head)   10 beak

Parts 6-9 are *trait parts*: they are painted over their host parts in the label map (a wing-spot
pixel has label 6, never 3) and lie entirely inside their hosts' silhouettes. The beak is a part of
its own, attached to the front of the head.

Trait values of a species (``traits_of``), one entry per trait group; the two wings share the group
``wings``. Large groups have a colour and a shape; small groups also have ``present``::

    body   colour, shape plump|slender          head   colour (shape round)
    wings  colour, shape rounded|pointed        tail   colour, shape fan|forked|wedge
    beak   colour, shape short|long
    wing_spot  present, colour, shape round|bar        crest     present, colour, shape pointed|rounded
    tail_band  present, colour, shape wide|narrow      eye_ring  present, colour, shape ring|mask

Colours are names from :data:`PALETTE`. An absent small part has ``present: false`` and no colour or
shape that matters: two species that both lack a crest do not differ in it.

Species are addressed everywhere by their index ``0..N-1``. Their folder names (``class_names``,
e.g. ``"03_Pseudavis_rubra"``) start with the zero-padded index, so sorting the folder names (the
order an ImageFolder reader uses) gives the index order. Methods that take a species accept the index,
the folder name or the display name (``"Pseudavis rubra"``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from traitlens.errors import UserError

TRAITS_FORMAT = 1


@dataclass(frozen=True)
class Part:
    """One labelled part of the body plan; ``hosts`` are the parts a trait part is painted over."""

    id: int
    name: str
    hosts: Tuple[int, ...] = ()


PARTS: Tuple[Part, ...] = (
    Part(0, "background"),
    Part(1, "body"),
    Part(2, "head"),
    Part(3, "left_wing"),
    Part(4, "right_wing"),
    Part(5, "tail"),
    Part(6, "wing_spot", (3, 4)),
    Part(7, "crest", (2,)),
    Part(8, "tail_band", (5,)),
    Part(9, "eye_ring", (2,)),
    Part(10, "beak"),
)
NUM_PARTS = len(PARTS)

# Which label-map part ids each trait group of a species paints. "wings" is one trait group (the two
# wings of a species always look alike) that covers two parts.
TRAIT_GROUPS: Dict[str, Tuple[int, ...]] = {
    "body": (1,),
    "head": (2,),
    "wings": (3, 4),
    "tail": (5,),
    "beak": (10,),
    "wing_spot": (6,),
    "crest": (7,),
    "tail_band": (8,),
    "eye_ring": (9,),
}
LARGE_GROUPS = ("body", "head", "wings", "tail", "beak")
SMALL_GROUPS = ("wing_spot", "crest", "tail_band", "eye_ring")

# The shapes each trait group can take (the first one is listed first in docs and defaults).
SHAPES: Dict[str, Tuple[str, ...]] = {
    "body": ("plump", "slender"),
    "head": ("round",),
    "wings": ("rounded", "pointed"),
    "tail": ("fan", "forked", "wedge"),
    "beak": ("short", "long"),
    "wing_spot": ("round", "bar"),
    "crest": ("pointed", "rounded"),
    "tail_band": ("wide", "narrow"),
    "eye_ring": ("ring", "mask"),
}

# Named colours (sRGB, 0-255). Large parts take "plumage" colours, small trait parts vivid ones; the
# generator keeps every trait part far (in RGB distance) from its host's colour so it stays visible.
PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (245, 215, 40),
    "lime": (150, 215, 40),
    "green": (40, 140, 60),
    "teal": (25, 160, 160),
    "blue": (35, 75, 210),
    "purple": (125, 50, 175),
    "pink": (240, 120, 185),
    "white": (245, 245, 240),
    "black": (25, 25, 30),
    "brown": (115, 70, 35),
    "tan": (205, 170, 120),
    "grey": (140, 140, 145),
    "slate": (75, 95, 125),
    "olive": (115, 120, 45),
    "rust": (170, 80, 40),
    "cream": (235, 225, 185),
}
PLUMAGE_COLOURS = ("brown", "tan", "grey", "slate", "olive", "rust", "cream", "black", "green", "blue")
TRAIT_COLOURS = ("red", "orange", "yellow", "lime", "teal", "blue", "purple", "pink", "white", "black")

# Fixed display colours of the part ids (background black), for mask previews in reports and galleries.
PART_DISPLAY_COLOURS: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (166, 118, 29), (31, 120, 180), (51, 160, 44), (178, 223, 138), (106, 61, 154),
    (227, 26, 28), (255, 127, 0), (253, 191, 111), (251, 154, 153), (255, 255, 51),
)


def colourise_parts(labels) -> "np.ndarray":
    """H×W (or N×H×W) part-label map -> the same shape ×3 uint8 image in :data:`PART_DISPLAY_COLOURS`.

    Ids beyond the known parts are drawn white.
    """
    import numpy as np

    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[:len(PART_DISPLAY_COLOURS)] = np.asarray(PART_DISPLAY_COLOURS, dtype=np.uint8)
    return lut[np.asarray(labels, dtype=np.uint8)]


SpeciesRef = Union[int, str]
PartRef = Union[int, str]


def colour_distance(a: str, b: str) -> float:
    """Euclidean distance of two palette colours in 0-255 RGB."""
    pa, pb = PALETTE[a], PALETTE[b]
    return float(sum((x - y) ** 2 for x, y in zip(pa, pb)) ** 0.5)


def _normalised(group_traits: dict) -> dict:
    """Trait values that matter for comparison: an absent trait part has no colour or shape."""
    if group_traits.get("present", True) is False:
        return {"present": False}
    return dict(group_traits)


class TraitTable:
    """Read access to ``traits.json``: parts, species, genera, trait values and diagnostic parts.

    Build it with :func:`load_traits` (from disk) or :meth:`from_dict`; the synthetic generator builds
    it with :func:`traitlens.data.synthetic.make_taxonomy`.
    """

    def __init__(self, species: Sequence[dict], genera: Sequence[dict], parts: Sequence[Part] = PARTS,
                 palette: Optional[Dict[str, Sequence[int]]] = None, meta: Optional[dict] = None,
                 trait_groups: Optional[Dict[str, Sequence[int]]] = None, small_groups: Optional[Sequence[str]] = None):
        # The bird plan's groups unless the table says otherwise (the butterfly and beetle plans,
        # :mod:`traitlens.data.plans`, name their own).
        self._trait_groups = {g: tuple(int(i) for i in ids) for g, ids in (trait_groups or TRAIT_GROUPS).items()}
        self._small_groups = tuple(small_groups) if small_groups is not None else (
            SMALL_GROUPS if trait_groups is None else ())
        self._species = [dict(s) for s in species]
        self._genera = [dict(g) for g in genera]
        self._parts = tuple(parts)
        self.palette = {k: tuple(v) for k, v in (palette or PALETTE).items()}
        self.meta = dict(meta or {})
        self._by_name: Dict[str, int] = {}
        for i, s in enumerate(self._species):
            if s.get("index", i) != i:
                raise UserError(f"traits.json: species {s.get('name')!r} has index {s.get('index')}, expected {i}")
            for key in (s["name"], s["folder"]):
                self._by_name[key] = i
        self._genus_index = {g["name"]: gi for gi, g in enumerate(self._genera)}
        self._part_by_name = {p.name: p.id for p in self._parts}
        n = len(self._species)
        # Pair table, computed once from the trait values (the JSON copy is for readers of the file).
        self._diag: Dict[Tuple[int, int], Tuple[int, ...]] = {}
        for a in range(n):
            for b in range(a + 1, n):
                self._diag[(a, b)] = self._compute_diagnostic(a, b)

    # ----------------------------------------------------------------------------------- species
    @property
    def num_species(self) -> int:
        return len(self._species)

    def __len__(self) -> int:
        return len(self._species)

    @property
    def class_names(self) -> List[str]:
        """Folder names in index order (= sorted order = ImageFolder class order)."""
        return [s["folder"] for s in self._species]

    @property
    def names(self) -> List[str]:
        """Display names (``"Pseudavis rubra"``) in index order."""
        return [s["name"] for s in self._species]

    def index(self, species: SpeciesRef) -> int:
        """Species index from an index, a folder name or a display name."""
        if isinstance(species, bool):
            raise UserError(f"not a species: {species!r}")
        if isinstance(species, int) or (hasattr(species, "__index__") and not isinstance(species, str)):
            i = int(species)
            if not 0 <= i < self.num_species:
                raise UserError(f"species index {i} out of range 0..{self.num_species - 1}")
            return i
        if species in self._by_name:
            return self._by_name[species]
        raise UserError(f"unknown species {species!r}; known: {', '.join(self.names[:6])}"
                        f"{', ...' if self.num_species > 6 else ''}")

    def name(self, species: SpeciesRef) -> str:
        return self._species[self.index(species)]["name"]

    def folder(self, species: SpeciesRef) -> str:
        return self._species[self.index(species)]["folder"]

    def traits_of(self, species: SpeciesRef) -> dict:
        """The species' trait values: ``{group: {"colour", "shape", ("present")}}`` (a deep copy)."""
        return json.loads(json.dumps(self._species[self.index(species)]["traits"]))

    # ------------------------------------------------------------------------------------ genera
    @property
    def genera(self) -> List[str]:
        return [g["name"] for g in self._genera]

    def genus_of(self, species: SpeciesRef) -> str:
        return self._species[self.index(species)]["genus"]

    def genus_index(self, species: SpeciesRef) -> int:
        return self._genus_index[self.genus_of(species)]

    @property
    def genus_labels(self) -> List[int]:
        """Genus index of every species, in species-index order."""
        return [self._genus_index[s["genus"]] for s in self._species]

    def species_in(self, genus: Union[int, str]) -> List[int]:
        gi = genus if isinstance(genus, int) else self._genus_index.get(genus)
        if gi is None or not 0 <= gi < len(self._genera):
            raise UserError(f"unknown genus {genus!r}; known: {', '.join(self.genera)}")
        return list(self._genera[gi]["species"])

    def siblings(self, species: SpeciesRef) -> List[int]:
        """The other species of the same genus (indices)."""
        i = self.index(species)
        return [j for j in self.species_in(self.genus_of(i)) if j != i]

    # ------------------------------------------------------------------------------------- parts
    @property
    def trait_groups(self) -> Dict[str, Tuple[int, ...]]:
        """Trait group -> the part ids it paints (the body plan's)."""
        return dict(self._trait_groups)

    @property
    def small_groups(self) -> Tuple[str, ...]:
        """The small trait groups (those with ``present``)."""
        return self._small_groups

    @property
    def body_plan(self) -> str:
        return str(self.meta.get("body_plan", "bird"))

    @property
    def parts(self) -> Tuple[Part, ...]:
        return self._parts

    @property
    def part_names(self) -> List[str]:
        return [p.name for p in self._parts]

    def part_id(self, part: PartRef) -> int:
        if isinstance(part, str):
            key = part.replace(" ", "_").lower()
            if key not in self._part_by_name:
                raise UserError(f"unknown part {part!r}; known: {', '.join(self.part_names)}")
            return self._part_by_name[key]
        pid = int(part)
        if not 0 <= pid < len(self._parts):
            raise UserError(f"part id {pid} out of range 0..{len(self._parts) - 1}")
        return pid

    def part_name(self, part: PartRef) -> str:
        return self._parts[self.part_id(part)].name

    def host_of(self, part: PartRef) -> Tuple[int, ...]:
        """Part ids a trait part is painted over (``()`` for the background and the large parts)."""
        return self._parts[self.part_id(part)].hosts

    # ------------------------------------------------------------------------ pairs / attributes
    def _compute_diagnostic(self, a: int, b: int) -> Tuple[int, ...]:
        ta, tb = self._species[a]["traits"], self._species[b]["traits"]
        parts: List[int] = []
        for group, ids in self._trait_groups.items():
            if _normalised(ta.get(group, {})) != _normalised(tb.get(group, {})):
                parts.extend(ids)
        return tuple(sorted(parts))

    def diagnostic_parts(self, a: SpeciesRef, b: SpeciesRef) -> List[int]:
        """Part ids in which species ``a`` and ``b`` differ (symmetric; empty for a == b)."""
        i, j = self.index(a), self.index(b)
        if i == j:
            return []
        return list(self._diag[(min(i, j), max(i, j))])

    def pair_table(self) -> List[dict]:
        """Every unordered pair once: ``[{"a": i, "b": j, "parts": [...]}, ...]`` with ``i < j``."""
        return [{"a": a, "b": b, "parts": list(p)} for (a, b), p in sorted(self._diag.items())]

    def attributes(self, species: SpeciesRef) -> Dict[str, Union[str, bool, None]]:
        """A flat attribute view for comparative questions.

        Keys are ``"<group>.colour"``, ``"<group>.shape"`` for every trait group and
        ``"<group>.present"`` for the small trait parts; an absent part has colour and shape ``None``.
        Example: ``{"body.colour": "brown", ..., "wing_spot.present": True, "wing_spot.colour": "red"}``.
        """
        traits = self._species[self.index(species)]["traits"]
        out: Dict[str, Union[str, bool, None]] = {}
        for group in self._trait_groups:
            t = traits.get(group, {})
            present = t.get("present", True)
            if group in self._small_groups:
                out[f"{group}.present"] = bool(present)
            out[f"{group}.colour"] = t.get("colour") if present else None
            out[f"{group}.shape"] = t.get("shape") if present else None
        return out

    @property
    def attribute_names(self) -> List[str]:
        return list(self.attributes(0)) if self.num_species else []

    def differences(self, a: SpeciesRef, b: SpeciesRef) -> List[Tuple[str, object, object]]:
        """``[(attribute, value_in_a, value_in_b), ...]`` for every attribute where a and b differ."""
        va, vb = self.attributes(a), self.attributes(b)
        return [(k, va[k], vb[k]) for k in va if va[k] != vb[k]]

    # ------------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        return {
            "format": TRAITS_FORMAT,
            "parts": [{"id": p.id, "name": p.name, "hosts": list(p.hosts)} for p in self._parts],
            "trait_groups": {g: list(ids) for g, ids in self._trait_groups.items()},
            "palette": {k: list(v) for k, v in self.palette.items()},
            "genera": self._genera,
            "species": self._species,
            "pairs": self.pair_table(),
            "meta": self.meta,
        }

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The table as JSON text (stable key order); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def fingerprint(self) -> str:
        """A short hash of the species' names and traits (what makes two tables the same taxonomy)."""
        payload = json.dumps([[s["name"], s["traits"]] for s in self._species], sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict, source: str = "traits.json") -> "TraitTable":
        try:
            if data.get("format") != TRAITS_FORMAT:
                raise UserError(f"{source}: unsupported traits format {data.get('format')!r} "
                                f"(this traitlens reads format {TRAITS_FORMAT}); regenerate the collection")
            parts = tuple(Part(int(p["id"]), str(p["name"]), tuple(int(h) for h in p.get("hosts", ())))
                          for p in data["parts"])
            meta = data.get("meta") or {}
            groups = data.get("trait_groups")
            if groups is not None and {g: tuple(v) for g, v in groups.items()} == TRAIT_GROUPS:
                groups = None  # the bird plan's
            small = meta.get("small_groups")
            return cls(data["species"], data["genera"], parts, data.get("palette"), meta, trait_groups=groups,
                       small_groups=small)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: not a valid traits table ({type(exc).__name__}: {exc})") from None

    def __repr__(self) -> str:
        return f"TraitTable({self.num_species} species, {len(self._genera)} genera)"


def load_traits(path: Union[str, Path, "TraitTable"]) -> TraitTable:
    """Load ``traits.json`` from a collection folder or the file itself (a TraitTable passes through)."""
    if isinstance(path, TraitTable):
        return path
    p = Path(path)
    if p.is_dir():
        p = p / "traits.json"
    if not p.is_file():
        raise UserError(f"no traits table at {p}; pass a synthetic collection folder or its traits.json")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {p}: {exc}") from None
    return TraitTable.from_dict(data, source=str(p))


def species_refs(table: TraitTable, refs: Iterable[SpeciesRef]) -> List[int]:
    """Indices of several species given by index or name."""
    return [table.index(r) for r in refs]
