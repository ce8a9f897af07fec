"""The trait-annotated synthetic specimen collection: traitlens' embedded default data set.

Procedural bird-like "specimens" seen from above share one body plan (part ids in
:mod:`traitlens.data.traits`). Species form a small taxonomy: genera of ``genus_size`` (3) sibling
species. Sibling species differ in exactly one or two *small* trait parts (wing spot, crest, tail band,
eye ring: their colour, shape, or more rarely presence), so "what distinguishes A from B" has a known,
localised answer; species of different genera differ in at least three parts, including the colours of at
least two large parts.

Every image varies in what a model must ignore: pose (rotation ±35°, scale 0.8-1.1, translation that
keeps the specimen in view), small shape jitter, global colour and illumination jitter, a textured and
cluttered background (smooth noise plus distractor blobs that are never parts), pixel noise and optional
blur. Domain ``"B"`` renders the *same* species with another background style (stripes and rectangles
instead of smooth noise and blobs), a colour cast and a strong illumination gradient; it is held out for the
calibration experiments (pretrain in A, fine-tune in B).

Rendering is vectorised numpy over the pixel grid: pixel centres are mapped through the inverse pose into
the specimen frame, where every part is an ellipse / polygon / superellipse test. Images are rendered
``supersample``× larger and averaged down (anti-aliasing); label maps take the most frequent part of each
pixel's sub-samples (ties go to the higher id, so thin trait parts survive), so they stay exact integers
that agree with the image.

Determinism: image ``i`` of species ``s`` is drawn from ``np.random.default_rng([seed, s, i, domain])``
(plus a salt when ``avoid_species_of`` is set), so any image can be rendered on its own and a collection is
bit-for-bit the same for the same configuration. Within a species, images ``0..K-1`` are split in order:
the first ``round(K*train)`` go to train, the next ``round(K*val)`` to val, the rest to test.

On disk (see docs/ARCHITECTURE.md)::

    DIR/collection.json   the SynthConfig, counts, render version
    DIR/traits.json       the TraitTable (parts, species, genera, pair table)
    DIR/{train,val,test}/<NN_Genus_epithet>/<iiii>.png
    DIR/masks/{train,val,test}/<NN_Genus_epithet>/<iiii>.png   uint8 part-label maps
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from traitlens import __version__
from traitlens.data.traits import (
    LARGE_GROUPS, NUM_PARTS, PALETTE, PARTS, PLUMAGE_COLOURS, SHAPES, SMALL_GROUPS, TRAIT_COLOURS,
    TRAIT_GROUPS, TraitTable, colour_distance, load_traits,
)
from traitlens.data.plans import BEETLE, BUTTERFLY, BodyPlan
from traitlens.errors import UserError
from traitlens.progress import progress as progress_bar

# Bump when the rendering or the taxonomy changes: cached collections made by another version are remade.
RENDER_VERSION = 1
SPLITS = ("train", "val", "test")
DOMAINS = {"A": 0, "B": 1}

# Minimum RGB distance between a trait part's colour and its host's, and between the colours two sibling
# species give the same part: far larger than the colour jitter (about ±20% brightness), so a trait
# part is always visible and sibling colours never blur into each other.
MIN_HOST_CONTRAST = 130.0
MIN_SIBLING_CONTRAST = 140.0

# Half the image side, in specimen units, at pose scale 1: the specimen (about 2 units tall) fills
# roughly 80% of the image height.
VIEW_HALF = 1.2

GENUS_PREFIXES = ("Pseud", "Chlor", "Melan", "Xanth", "Cyan", "Leuc", "Erythr", "Poli", "Micr", "Macr",
                  "Lamp", "Orth", "Call", "Dendr", "Hyl", "Thal")
GENUS_SUFFIXES = ("avis", "ornis", "ops", "ura", "ptera", "spiza", "cincla", "thraupis")
EPITHETS = ("rubra", "caerulea", "flava", "viridis", "nigra", "alba", "fusca", "minor", "major", "elegans",
            "cristata", "montana", "sylvestris", "palustris", "borealis", "australis", "orientalis",
            "occidentalis", "gracilis", "robusta", "varia", "ornata", "modesta", "splendens", "pallida",
            "obscura", "maculata", "fasciata", "insignis", "similis", "lucida", "velata")

# Background colours of the two rendering domains (0-255): A natural and muted, B cool and man-made.
BACKGROUND_A = ((95, 120, 60), (135, 115, 80), (70, 92, 58), (165, 155, 120), (112, 102, 92),
                (82, 108, 96), (150, 140, 90))
BACKGROUND_B = ((60, 70, 112), (172, 176, 192), (92, 62, 92), (202, 192, 172), (42, 92, 112),
                (122, 132, 142), (30, 40, 50))


# ------------------------------------------------------------------------------------------- config
@dataclass
class SynthConfig:
    """What a synthetic collection is made of; the same config gives the same bytes.

    ``avoid_species_of``: ``None``, a :class:`TraitTable` or a path to a collection / traits.json. When
    given, every species of the new taxonomy differs in at least three parts from every species there and
    no genus name is reused (pretrain on one collection, evaluate on species it never saw).
    """

    species: int = 12
    per_species: int = 60
    size: int = 64
    seed: int = 0
    split: Tuple[float, float, float] = (0.6, 0.2, 0.2)
    domain: str = "A"
    blur: bool = False
    noise: float = 0.03
    genus_size: int = 3
    antialias: bool = True
    avoid_species_of: Any = None
    body_plan: str = "bird"
    rotation: float = 35.0
    mirror: float = 0.0
    scale: Tuple[float, float] = (0.8, 1.1)

    def __post_init__(self) -> None:
        # plain Python types, so the config compares and serialises the same however it was built
        try:
            for name in ("species", "per_species", "size", "seed", "genus_size"):
                setattr(self, name, int(getattr(self, name)))
            self.noise = float(self.noise)
            self.blur, self.antialias = bool(self.blur), bool(self.antialias)
            self.split = tuple(float(x) for x in self.split)
            self.rotation, self.mirror = float(self.rotation), float(self.mirror)
            self.scale = tuple(float(x) for x in self.scale)
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid synthetic collection setting: {exc}") from None
        self.domain = str(self.domain).upper()
        self.body_plan = str(self.body_plan).lower()
        self.validate()

    def validate(self) -> None:
        if int(self.species) < 2:
            raise UserError(f"species={self.species}: a collection needs at least 2 species")
        if int(self.per_species) < 1:
            raise UserError(f"per_species={self.per_species}: need at least 1 image per species")
        if not 16 <= int(self.size) <= 1024:
            raise UserError(f"size={self.size}: image size must be between 16 and 1024 pixels")
        if self.domain not in DOMAINS:
            raise UserError(f"domain={self.domain!r}: choose one of {', '.join(DOMAINS)}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise UserError(f"split={self.split}: give three non-negative fractions (train, val, test) summing to 1")
        if not 0 <= float(self.noise) <= 0.5:
            raise UserError(f"noise={self.noise}: pixel noise std must be in [0, 0.5]")
        if int(self.genus_size) < 2:
            raise UserError(f"genus_size={self.genus_size}: genera need at least 2 species")
        if self.body_plan not in PLANS:
            raise UserError(f"body_plan={self.body_plan!r}: choose one of {', '.join(PLANS)}")
        if not 0 <= self.rotation <= 180:
            raise UserError(f"rotation={self.rotation}: give the largest in-plane rotation in degrees, 0 to 180 "
                            "(180: any orientation)")
        if not 0 <= self.mirror <= 1:
            raise UserError(f"mirror={self.mirror}: give the share of mirror images, 0 to 1")
        if len(self.scale) != 2 or not 0.3 <= self.scale[0] <= self.scale[1] <= 1.5:
            raise UserError(f"scale={self.scale}: give two pose scales LOW HIGH with 0.3 <= LOW <= HIGH <= 1.5")

    @property
    def plan(self) -> "BodyPlan":
        return PLANS[self.body_plan]

    def to_dict(self) -> dict:
        """JSON-ready config; a TraitTable in ``avoid_species_of`` is stored by its fingerprint."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["split"] = list(self.split)
        d["scale"] = list(self.scale)
        # The pose options and the body plan appear only when set: a bird collection's collection.json (and
        # every cache key made from it) stays what it was before they existed.
        for name, default in _POSE_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        avoid = self.avoid_species_of
        if avoid is not None:
            table = load_traits(avoid)
            d["avoid_species_of"] = {"fingerprint": table.fingerprint(), "species": table.names}
        return d

    def split_counts(self) -> Dict[str, int]:
        """Images per species in each split (``round`` for train and val, the rest to test)."""
        k = int(self.per_species)
        n_train = int(round(k * self.split[0]))
        n_val = min(int(round(k * self.split[1])), k - n_train)
        return {"train": n_train, "val": n_val, "test": k - n_train - n_val}

    def split_indices(self, split: str) -> range:
        """Image indices (within each species) that belong to ``split`` (or ``"all"``)."""
        c = self.split_counts()
        if split == "all":
            return range(self.per_species)
        if split not in SPLITS:
            raise UserError(f"split {split!r}: choose one of train, val, test, all")
        start = {"train": 0, "val": c["train"], "test": c["train"] + c["val"]}[split]
        return range(start, start + c[split])


_POSE_DEFAULTS = {"body_plan": "bird", "rotation": 35.0, "mirror": 0.0, "scale": [0.8, 1.1]}


def folder_name(index: int, name: str, num_species: int) -> str:
    """``"03_Pseudavis_rubra"``: zero-padded so that sorted folder names follow the species index."""
    width = max(2, len(str(num_species - 1)))
    return f"{index:0{width}d}_{name.replace(' ', '_')}"


# ----------------------------------------------------------------------------------------- taxonomy
def _genus_name(k: int) -> str:
    p, s = len(GENUS_PREFIXES), len(GENUS_SUFFIXES)
    r, q = k % p, k // p
    # (r, (q + r) mod s) is unique for k < p*s; beyond that a numeral keeps names unique.
    name = GENUS_PREFIXES[r] + GENUS_SUFFIXES[(q + r) % s]
    return name if k < p * s else f"{name}{k // (p * s) + 1}"


def _genus_sizes(n: int, genus_size: int) -> List[int]:
    n_genera = max(1, math.ceil(n / genus_size))
    base, extra = divmod(n, n_genera)
    return [base + (1 if g < extra else 0) for g in range(n_genera)]


def _host_colour(traits: dict, group: str, plan: Optional["BodyPlan"] = None) -> str:
    return traits[(plan or BIRD).hosts[group]]["colour"]


def _contrasting(rng: np.random.Generator, choices: Sequence[str], avoid: Sequence[str], min_dist: float) -> List[str]:
    """``choices`` in a random order, keeping those far from every colour in ``avoid``."""
    order = [choices[i] for i in rng.permutation(len(choices))]
    return [c for c in order if all(colour_distance(c, a) >= min_dist for a in avoid)]


def _genus_template(rng: np.random.Generator) -> dict:
    """Random trait values of a genus: large-part colours and shapes, and its small trait parts."""
    t: Dict[str, dict] = {}
    for group in ("body", "head", "wings", "tail"):
        t[group] = {"colour": str(rng.choice(PLUMAGE_COLOURS)), "shape": str(rng.choice(SHAPES[group]))}
    beak_colours = _contrasting(rng, ("black", "yellow", "orange", "grey", "cream", "red"),
                                [t["head"]["colour"]], MIN_HOST_CONTRAST)
    t["beak"] = {"colour": beak_colours[0] if beak_colours else "black",
                 "shape": str(rng.choice(SHAPES["beak"]))}
    for group in SMALL_GROUPS:
        options = _contrasting(rng, TRAIT_COLOURS, [_host_colour(t, group)], MIN_HOST_CONTRAST)
        present = bool(rng.random() < 0.7) and bool(options)
        t[group] = {"present": present, "colour": options[0] if options else None,
                    "shape": str(rng.choice(SHAPES[group]))}
    return t


def _plan_template(rng: np.random.Generator, plan: "BodyPlan") -> dict:
    """A genus template of a non-bird plan: large groups' colours and shapes, then its small trait groups."""
    t: Dict[str, dict] = {}
    for group in plan.large_groups:
        t[group] = {"colour": str(rng.choice(plan.large_colours.get(group, plan.ground_colours))),
                    "shape": str(rng.choice(plan.shapes[group]))}
    for group in plan.small_groups:
        options = _contrasting(rng, TRAIT_COLOURS, [_host_colour(t, group, plan)], MIN_HOST_CONTRAST)
        present = bool(rng.random() < 0.7) and bool(options)
        t[group] = {"present": present, "colour": options[0] if options else None,
                    "shape": str(rng.choice(plan.shapes[group]))}
    return t


def _sibling_variants(rng: np.random.Generator, template: dict, k: int,
                      plan: Optional["BodyPlan"] = None) -> Optional[List[dict]]:
    """``k`` species from a genus template that pairwise differ in exactly one or two small parts.

    Two small trait groups P and Q (one when ``k == 2``) are chosen to vary, each along one dimension
    (colour, shape, or presence). Species take distinct value combinations (p, q); any two then differ
    in P, in Q or in both. Combinations closest to the template come first.
    """
    plan = plan or BIRD
    n_vary = 1 if k == 2 else 2
    groups = [plan.small_groups[i] for i in rng.permutation(len(plan.small_groups))[:n_vary]]
    value_lists: List[List[dict]] = []
    for gi, group in enumerate(groups):
        base = dict(template[group])
        roll = rng.random()
        # More than 4 siblings need a colour dimension: shape and presence only have two values.
        dim = "colour" if (roll < 0.5 or (k > 4 and gi == 0)) else ("shape" if roll < 0.87 else "presence")
        host = _host_colour(template, group, plan)
        if not base["colour"]:
            return None
        base["present"] = True
        if dim == "colour":
            values = [base]
            for c in _contrasting(rng, TRAIT_COLOURS, [host], MIN_HOST_CONTRAST):
                if all(colour_distance(c, v["colour"]) >= MIN_SIBLING_CONTRAST for v in values):
                    values.append({**base, "colour": c})
        elif dim == "shape":
            values = [base] + [{**base, "shape": s} for s in plan.shapes[group] if s != base["shape"]]
        else:
            values = [base, {"present": False, "colour": None, "shape": None}]
        value_lists.append(values)
    combos = [(i,) for i in range(len(value_lists[0]))] if n_vary == 1 else [
        (i, j) for i in range(len(value_lists[0])) for j in range(len(value_lists[1]))]
    combos.sort(key=lambda c: (sum(x > 0 for x in c), sum(c), c))
    if len(combos) < k:
        return None
    species = []
    for combo in combos[:k]:
        traits = json.loads(json.dumps(template))
        for group, values, idx in zip(groups, value_lists, combo):
            traits[group] = dict(values[idx])
        species.append(traits)
    return species


def _differing_parts(a: dict, b: dict, plan: Optional["BodyPlan"] = None) -> Tuple[int, int]:
    """(number of differing part ids, number of large groups whose colour differs)."""
    plan = plan or BIRD
    n_parts, n_colour = 0, 0
    for group, ids in plan.trait_groups.items():
        ga, gb = a[group], b[group]
        na = {"present": False} if ga.get("present", True) is False else ga
        nb = {"present": False} if gb.get("present", True) is False else gb
        if na != nb:
            n_parts += len(ids)
        if group in plan.colour_groups and ga["colour"] != gb["colour"]:
            n_colour += 1
    return n_parts, n_colour


def _far_apart(a: dict, b: dict, plan: Optional["BodyPlan"] = None) -> bool:
    """Species of different genera: >= 3 differing parts, >= 2 large parts of another colour."""
    n_parts, n_colour = _differing_parts(a, b, plan)
    return n_parts >= 3 and n_colour >= 2


def make_taxonomy(cfg: SynthConfig) -> TraitTable:
    """The species, genera and trait values for ``cfg`` (depends on seed, species, genus_size, avoid only).

    Rendering options (size, domain, noise, ...) never change the taxonomy, so domain B shows the very
    same species as domain A.
    """
    avoid = load_traits(cfg.avoid_species_of) if cfg.avoid_species_of is not None else None
    avoid_traits = [avoid.traits_of(i) for i in range(avoid.num_species)] if avoid else []
    avoid_genera = set(avoid.genera) if avoid else set()
    plan = cfg.plan
    if avoid is not None and avoid.meta.get("body_plan", "bird") != plan.name:
        avoid_traits = []  # another body plan shares no trait groups: every species differs anyway
    # the bird's stream as it always was; another plan starts its own
    rng = np.random.default_rng([int(cfg.seed), 0x7A70, 1 if avoid else 0]
                                + ([] if plan is BIRD else [_PLAN_CODES[plan.name]]))
    sizes = _genus_sizes(int(cfg.species), int(cfg.genus_size))
    genera: List[dict] = []
    species: List[dict] = []
    name_counter = 0
    for size in sizes:
        for _ in range(2000):
            template = _genus_template(rng) if plan is BIRD else _plan_template(rng, plan)
            members = _sibling_variants(rng, template, size, plan)
            if members is None:
                continue
            others = [s["traits"] for s in species] + avoid_traits
            if all(_far_apart(m, o, plan) for m in members for o in others):
                break
        else:
            raise UserError(f"cannot make {cfg.species} distinct species with genus_size={cfg.genus_size}; "
                            "use fewer species")
        while _genus_name(name_counter) in avoid_genera:
            name_counter += 1
        genus = _genus_name(name_counter)
        name_counter += 1
        epithets = [EPITHETS[i] for i in rng.permutation(len(EPITHETS))[:size]]
        if size > len(EPITHETS):
            epithets = [f"{EPITHETS[i % len(EPITHETS)]}{'' if i < len(EPITHETS) else i // len(EPITHETS) + 1}"
                        for i in range(size)]
        indices = []
        for traits, epithet in zip(members, epithets):
            index = len(species)
            name = f"{genus} {epithet}"
            species.append({"index": index, "name": name, "folder": folder_name(index, name, cfg.species),
                            "genus": genus, "traits": traits})
            indices.append(index)
        genera.append({"name": genus, "species": indices})
    meta = {"seed": int(cfg.seed), "genus_size": int(cfg.genus_size), "render_version": RENDER_VERSION,
            "avoid_species_of": avoid.fingerprint() if avoid else None}
    if plan is BIRD:
        return TraitTable(species, genera, PARTS, PALETTE, meta)
    meta.update(body_plan=plan.name, small_groups=list(plan.small_groups))
    return TraitTable(species, genera, plan.parts, PALETTE, meta, trait_groups=plan.trait_groups,
                      small_groups=plan.small_groups)


# --------------------------------------------------------------------------------------- geometry
def _draw_geometry(rng: np.random.Generator) -> Dict[str, float]:
    """Per-image shape jitter: a fixed number of draws, whatever the species (keeps streams aligned)."""
    u = rng.uniform(-1.0, 1.0, size=14)
    return {
        "body_sx": 1 + 0.05 * u[0], "body_sy": 1 + 0.05 * u[1],
        "head_r": 1 + 0.05 * u[2], "head_dx": 0.02 * u[3],
        "wing_l_angle": math.radians(18 + 6 * u[4]), "wing_r_angle": math.radians(18 + 6 * u[5]),
        "wing_len": 1 + 0.05 * u[6], "tail_angle": math.radians(8 * u[7]), "tail_len": 1 + 0.07 * u[8],
        "spot_pos": 0.03 * u[9], "band_pos": 0.03 * u[10], "crest_dy": 0.02 * u[11],
        "texture_phase": math.pi * u[12], "texture_angle": math.pi * u[13],
    }


def _superellipse(u: np.ndarray, v: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    return np.abs(u / a) ** p + np.abs(v / b) ** p <= 1.0


def _part_maps(X: np.ndarray, Y: np.ndarray, traits: dict, g: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Label map (uint8, part ids) and pupil mask for specimen-frame coordinates ``X, Y`` (any shape).

    Frame: x to the right, y down, head towards -y, the specimen spans about [-1, 1] in both axes.
    Large parts are painted tail, wings, body, beak, head (later ones cover earlier ones); trait parts
    are then painted only where their host is visible, so a trait pixel always replaces a host pixel.
    """
    labels = np.zeros(X.shape, dtype=np.uint8)

    # tail: a local frame (t along the tail away from the body, s across it)
    tail_shape = traits["tail"]["shape"]
    ta = g["tail_angle"]
    tx, ty = X - 0.0, Y - 0.40
    t = tx * math.sin(ta) + ty * math.cos(ta)
    s = tx * math.cos(ta) - ty * math.sin(ta)
    T = 0.52 * g["tail_len"]
    if tail_shape == "fan":
        tail = (t >= 0) & (np.abs(s) <= 0.08 + 0.42 * t) & (t ** 2 + (0.6 * s) ** 2 <= T ** 2)
    elif tail_shape == "forked":
        end = T + 0.04
        half_end = 0.07 + 0.30 * end
        notch = 0.20 * np.clip(1.0 - np.abs(s) / half_end, 0.0, 1.0)
        tail = (t >= 0) & (np.abs(s) <= 0.07 + 0.30 * t) & (t <= end - notch)
    else:  # wedge: narrowing to a blunt point
        tail = (t >= 0) & (np.abs(s) <= 0.21 - 0.30 * t) & (t <= T + 0.04)
    labels[tail] = 5

    # wings: superellipses along an axis swept back by the wing angle
    wing_shape = traits["wings"]["shape"]
    length, width, power = (0.90, 0.17, 1.5) if wing_shape == "pointed" else (0.80, 0.20, 2.2)
    length *= g["wing_len"]
    wing_frames = []
    for pid, side, angle in ((3, -1.0, g["wing_l_angle"]), (4, 1.0, g["wing_r_angle"])):
        dx, dy = side * math.cos(angle), math.sin(angle)
        cx, cy = side * 0.12 + dx * length / 2, -0.08 + dy * length / 2
        u = (X - cx) * dx + (Y - cy) * dy          # along the wing, outwards
        v = -(X - cx) * dy + (Y - cy) * dx         # across the wing
        labels[_superellipse(u, v, length / 2, width, power)] = pid
        wing_frames.append((u, v))

    # body
    ax, ay = (0.30, 0.46) if traits["body"]["shape"] == "plump" else (0.23, 0.50)
    ax, ay = ax * g["body_sx"], ay * g["body_sy"]
    labels[(X / ax) ** 2 + ((Y - 0.05) / ay) ** 2 <= 1.0] = 1

    # beak (under the head's front edge) and head
    hx, hy, hr = g["head_dx"], -0.50, 0.26 * g["head_r"]
    blen, bhalf = (0.27, 0.075) if traits["beak"]["shape"] == "long" else (0.17, 0.09)
    apex, base = hy - hr - blen, hy - hr + 0.06
    frac = (Y - apex) / (base - apex)
    labels[(frac >= 0) & (frac <= 1) & (np.abs(X - hx) <= bhalf * frac)] = 10
    head = (X - hx) ** 2 + (Y - hy) ** 2 <= hr ** 2
    labels[head] = 2

    # trait parts, each clipped to where its host shows
    spot = traits["wing_spot"]
    if spot.get("present"):
        u0 = 0.10 * length / 0.85 + g["spot_pos"]
        for pid, (u, v) in zip((3, 4), wing_frames):
            if spot["shape"] == "round":
                m = (u - u0) ** 2 + v ** 2 <= 0.11 ** 2
            else:  # bar across the wing
                m = (np.abs(u - u0) <= 0.065) & (np.abs(v) <= 0.25)
            labels[m & (labels == pid)] = 6
    crest = traits["crest"]
    if crest.get("present"):
        cy = hy + g["crest_dy"]
        if crest["shape"] == "pointed":     # a narrow streak along the crown
            m = np.abs(X - hx) / 0.07 + np.abs(Y - (cy + 0.03)) / 0.25 <= 1.0
        else:                               # a broad round cap over the back of the crown
            m = (X - hx) ** 2 + (Y - (cy + 0.10)) ** 2 <= 0.15 ** 2
        labels[m & (labels == 2)] = 7
    band = traits["tail_band"]
    if band.get("present"):
        half = 0.12 if band["shape"] == "wide" else 0.05
        labels[(np.abs(t - (0.30 + g["band_pos"])) <= half) & (labels == 5)] = 8
    eye_y = hy - 0.07
    eye_d2 = np.minimum((X - hx - 0.14) ** 2, (X - hx + 0.14) ** 2) + (Y - eye_y) ** 2
    pupil = head & (eye_d2 <= 0.042 ** 2)
    ring = traits["eye_ring"]
    if ring.get("present"):
        if ring["shape"] == "ring":
            m = eye_d2 <= 0.11 ** 2
        else:  # mask: a band across the face through both eyes
            m = np.abs(Y - (eye_y - 0.005)) <= 0.05
        labels[m & ~pupil & (labels == 2)] = 9
    return labels, pupil


def _part_colours(traits: dict, plan: Optional["BodyPlan"] = None) -> np.ndarray:
    """P×3 float colours (0-1) of the species' parts (absent parts get black; never painted)."""
    plan = plan or BIRD
    lut = np.zeros((plan.num_parts, 3), dtype=np.float64)
    for group, ids in plan.trait_groups.items():
        colour = traits[group].get("colour")
        if colour and traits[group].get("present", True):
            lut[list(ids)] = np.asarray(PALETTE[colour], dtype=np.float64) / 255.0
    return lut


#: The bird-like plan (the default; the part ids of :mod:`traitlens.data.traits`).
BIRD = BodyPlan(
    name="bird", parts=PARTS, trait_groups=TRAIT_GROUPS, large_groups=LARGE_GROUPS, small_groups=SMALL_GROUPS,
    shapes=SHAPES, hosts={"wing_spot": "wings", "crest": "head", "tail_band": "tail", "eye_ring": "head"},
    large_colours={}, ground_colours=PLUMAGE_COLOURS, colour_groups=("body", "head", "wings", "tail"),
    mirror_pairs=((3, 4),), draw_geometry=_draw_geometry, part_maps=_part_maps)
#: Every body plan by name (``traitlens data synth --body-plan``); see :mod:`traitlens.data.plans`.
PLANS: Dict[str, BodyPlan] = {"bird": BIRD, "butterfly": BUTTERFLY, "beetle": BEETLE}
_PLAN_CODES = {"bird": 0, "butterfly": 1, "beetle": 2}


def body_plan(name: Union[str, TraitTable, None]) -> BodyPlan:
    """The :class:`BodyPlan` by name, or the one a trait table was made with (bird when it does not say)."""
    if isinstance(name, TraitTable):
        name = name.meta.get("body_plan", "bird")
    key = str(name or "bird").lower()
    if key not in PLANS:
        raise UserError(f"unknown body plan {name!r}; choose one of {', '.join(PLANS)}")
    return PLANS[key]


# --------------------------------------------------------------------------------- backgrounds
def _smooth_field(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """n×n smooth noise in [0, 1]: a random cells×cells grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    c = (np.arange(n) + 0.5) / n * cells
    i0 = np.minimum(c.astype(int), cells - 1)
    f = c - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]                 # n × (cells+1)
    field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]          # n × n
    field = field * field * (3 - 2 * field)                                          # smoothstep: more contrast
    return field.astype(np.float32)


def _background(rng: np.random.Generator, n: int, domain: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """n×n×3 float background in [0, 1]; ``px, py`` are pixel centres in [-1, 1] image coordinates."""
    palette = np.asarray(BACKGROUND_A if domain == "A" else BACKGROUND_B, dtype=np.float32) / 255.0
    pick = rng.choice(len(palette), size=2, replace=False)
    c1, c2 = palette[pick[0]], palette[pick[1]]
    if domain == "A":
        mix = _smooth_field(rng, n, int(rng.integers(3, 7)))
    else:
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.18, 0.4)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * (px * math.cos(angle) + py * math.sin(angle)) / period + phase)
        mix = np.clip(0.5 + 1.5 * wave, 0.0, 1.0)                                   # hard-edged stripes
    bg = c1[None, None, :] * (1 - mix[..., None]) + c2[None, None, :] * mix[..., None]
    bg = bg * (1 + 0.06 * (_smooth_field(rng, n, 12)[..., None] - 0.5))
    bg = bg.astype(np.float32)             # fine texture
    # distractors: blobs (A) or rectangles (B) in any colour, including the trait colours
    colours = np.asarray(list(PALETTE.values()) + [tuple(c) for c in (palette * 255)], dtype=np.float32) / 255.0
    n_blobs = int(rng.integers(3, 7))
    params = rng.uniform(0, 1, size=(n_blobs, 6))
    colour_idx = rng.integers(0, len(colours), size=n_blobs)
    axis = px[0]                                                    # pixel centres along either axis
    for (cx, cy, a, b, rot, alpha), ci in zip(params, colour_idx):
        cx, cy = 1.8 * cx - 0.9, 1.8 * cy - 0.9
        a, b, rot = 0.05 + 0.15 * a, 0.04 + 0.10 * b, math.pi * rot
        # work inside the blob's bounding box only
        reach = math.hypot(a, b)
        c0, c1 = np.searchsorted(axis, cx - reach), np.searchsorted(axis, cx + reach)
        r0, r1 = np.searchsorted(axis, cy - reach), np.searchsorted(axis, cy + reach)
        if c1 <= c0 or r1 <= r0:
            continue
        bx, by = px[r0:r1, c0:c1] - cx, py[r0:r1, c0:c1] - cy
        u = bx * math.cos(rot) + by * math.sin(rot)
        v = -bx * math.sin(rot) + by * math.cos(rot)
        inside = ((u / a) ** 2 + (v / b) ** 2 <= 1.0) if domain == "A" else ((np.abs(u) <= a) & (np.abs(v) <= b))
        w = ((0.55 + 0.45 * alpha) * inside)[..., None]
        patch = bg[r0:r1, c0:c1]
        bg[r0:r1, c0:c1] = patch * (1 - w) + colours[ci][None, None, :] * w
    return bg


# ---------------------------------------------------------------------------------------- render
def _pose(rng: np.random.Generator, traits: dict, g: Dict[str, float], plan: Optional["BodyPlan"] = None,
          rotation: float = 35.0, scales: Tuple[float, float] = (0.8, 1.1),
          flip: bool = False) -> Tuple[float, float, float, float]:
    """Rotation (rad, uniform in ±``rotation`` degrees), scale and a translation that keeps the whole
    specimen inside the view (``flip``: the specimen is mirrored)."""
    plan = plan or BIRD
    angle = math.radians(rng.uniform(-rotation, rotation))
    scale = rng.uniform(scales[0], scales[1])
    # The silhouette on a coarse grid, rotated, bounds the scale and the translation range.
    c = np.linspace(-1.2, 1.2, 81)
    gx, gy = np.meshgrid(c, c)
    inside = plan.part_maps(-gx if flip else gx, gy, traits, g)[0] > 0
    sx, sy = gx[inside], gy[inside]
    ca, sa = math.cos(angle), math.sin(angle)
    qx, qy = ca * sx - sa * sy, sa * sx + ca * sy
    margin = 0.12                                   # thin tips the grid misses, plus a pixel
    reach = max(np.abs(qx).max(), np.abs(qy).max())
    scale = min(scale, (VIEW_HALF - margin) / reach)
    qx, qy = scale * qx, scale * qy
    shift = []
    for q in (qx, qy):
        lo, hi = -VIEW_HALF + margin - q.min(), VIEW_HALF - margin - q.max()
        r = rng.uniform(0.0, 1.0)
        shift.append(lo + r * (hi - lo) if hi > lo else 0.5 * (lo + hi))
    return angle, scale, shift[0], shift[1]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an H×W×C image (edge-replicated), as shifted weighted sums."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape[:2]
    pad = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    img = sum(wt * pad[i:i + h] for i, wt in enumerate(k))
    pad = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(wt * pad[:, i:i + w] for i, wt in enumerate(k))


def _downsample_labels(labels: np.ndarray, size: int, ss: int) -> np.ndarray:
    """Most frequent part among each pixel's ss×ss sub-samples; ties go to the higher part id."""
    blocks = labels.reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, ss * ss)
    # votes[..., k]: how many sub-samples agree with sub-sample k (ss² comparisons, no one-hot)
    votes = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1, dtype=np.int32)
    score = votes * 256 + blocks  # any factor above the largest id: most votes first, then the higher id
    pick = score.argmax(axis=-1)
    return np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0].astype(np.uint8)


def render_specimen(species_traits: dict, rng: np.random.Generator, size: int = 64, domain: str = "A",
                    noise: float = 0.03, blur: bool = False, antialias: bool = True, plan: str = "bird",
                    rotation: float = 35.0, mirror: float = 0.0,
                    scale: Tuple[float, float] = (0.8, 1.1)) -> Tuple[np.ndarray, np.ndarray]:
    """One specimen image and its part-label map.

    Args:
        species_traits: a species' trait values (``TraitTable.traits_of(s)``).
        rng: the image's generator; the image is a pure function of the generator's state.
        size: image side in pixels.
        domain: ``"A"`` (default style) or ``"B"`` (held-out style: stripes, colour cast, lighting).
        plan: the body plan (``bird``, ``butterfly``, ``beetle``) the traits belong to.
        rotation: largest in-plane rotation in degrees (uniform in ±rotation; 180 = any orientation).
        mirror: probability that the specimen is a mirror image. A mirrored specimen is labelled as it
            appears: its left/right part ids swap, so "left wing" stays the wing on the left, head up.
        scale: range of the pose scale.
    Returns:
        ``image`` H×W×3 uint8 and ``labels`` H×W uint8 (part ids, 0 = background), H = W = ``size``.
    """
    domain = str(domain).upper()
    if domain not in DOMAINS:
        raise UserError(f"domain={domain!r}: choose one of {', '.join(DOMAINS)}")
    body = PLANS[str(plan).lower()] if not isinstance(plan, BodyPlan) else plan
    g = _draw_geometry(rng) if body is BIRD else body.draw_geometry(rng)
    # only a collection with mirror images draws for it (the bird's streams stay as they were)
    flip = bool(rng.random() < mirror) if mirror > 0 else False
    angle, scale, tx, ty = _pose(rng, species_traits, g, body, rotation, scale, flip)
    ss = 2 if antialias else 1
    n = size * ss
    c = ((np.arange(n) + 0.5) / n * 2 - 1).astype(np.float32)      # pixel centres in [-1, 1]
    px, py = np.meshgrid(c, c)                                     # px: column (x), py: row (y)
    # inverse pose: image -> specimen frame
    wx, wy = px * VIEW_HALF - tx, py * VIEW_HALF - ty
    ca, sa = math.cos(angle), math.sin(angle)
    X, Y = (ca * wx + sa * wy) / scale, (-sa * wx + ca * wy) / scale
    labels, pupil = body.part_maps(-X if flip else X, Y, species_traits, g)
    if flip:
        swap = np.arange(256, dtype=np.uint8)
        for left, right in body.mirror_pairs:
            swap[left], swap[right] = right, left
        labels = swap[labels]

    # specimen colours: part colour × directional shading × texture; dark pupils
    lut = _part_colours(species_traits, body).astype(np.float32)
    light = rng.uniform(-1, 1, size=2)
    light = 0.14 * light / (np.linalg.norm(light) + 1e-9)
    shade = 1.0 + light[0] * X + light[1] * Y
    ta, tp = g["texture_angle"], g["texture_phase"]
    texture = 1.0 + 0.05 * np.sin(28.0 * (X * math.cos(ta) + Y * math.sin(ta)) + tp)
    specimen = lut[labels] * (shade * texture)[..., None]
    specimen[pupil] = np.float32(0.06)
    bg = _background(rng, n, domain, px, py)
    img = np.where((labels > 0)[..., None], specimen, bg)

    # global colour and illumination jitter (per image), then the domain's own look
    brightness = rng.uniform(0.82, 1.18)
    gains = rng.uniform(0.93, 1.07, size=3)
    img = img * (brightness * gains).astype(np.float32)
    if domain == "B":
        direction = rng.uniform(0, 2 * math.pi)
        ramp = px * math.cos(direction) + py * math.sin(direction)       # -1.4 .. 1.4
        img = img * (0.95 + 0.3 * ramp)[..., None] * np.array([0.88, 0.96, 1.12], dtype=np.float32)
        img = 0.12 + 0.8 * img                                          # washed-out, lower contrast
    else:
        rng.uniform(0, 2 * math.pi)                                     # keep the streams aligned
    if ss > 1:
        img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
        labels = _downsample_labels(labels, size, ss)
    sigma = rng.uniform(0.7, 1.3)
    if blur:
        img = _blur(img, sigma * size / 64)
    img = img + np.float32(noise) * rng.standard_normal(size=img.shape, dtype=np.float32)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, labels


def image_rng(seed: int, species_index: int, image_index: int, domain: str, salt: int = 0) -> np.random.Generator:
    """The generator of one image: ``default_rng([seed, species, image, domain code(, salt)])``."""
    key = [int(seed), int(species_index), int(image_index), DOMAINS[str(domain).upper()]]
    return np.random.default_rng(key + ([int(salt)] if salt else []))


def _render_options(cfg: SynthConfig) -> dict:
    """:func:`render_specimen`'s keyword arguments from a config."""
    return dict(domain=cfg.domain, noise=cfg.noise, blur=cfg.blur, antialias=cfg.antialias, plan=cfg.body_plan,
                rotation=cfg.rotation, mirror=cfg.mirror, scale=cfg.scale)


def _salt(cfg: SynthConfig) -> int:
    # A pretraining collection made to avoid another's species must not replay its poses and backgrounds.
    if cfg.avoid_species_of is None:
        return 0
    return int(load_traits(cfg.avoid_species_of).fingerprint()[:8], 16) | 1


def render_batch(table: TraitTable, items: Sequence[Tuple[int, int]], cfg: SynthConfig,
                 progress: bool = False, desc: str = "render") -> Tuple[np.ndarray, np.ndarray]:
    """Render ``(species_index, image_index)`` pairs in memory.

    Returns ``images`` N×H×W×3 uint8 and ``labels`` N×H×W uint8.
    """
    n, s = len(items), int(cfg.size)
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    labels = np.empty((n, s, s), dtype=np.uint8)
    salt = _salt(cfg)
    traits = [table.traits_of(i) for i in range(table.num_species)]
    it: Iterable[int] = range(n)
    if progress:
        it = progress_bar(it, desc=desc, total=n, unit="img")
    for k in it:
        sp, idx = items[k]
        rng = image_rng(cfg.seed, sp, idx, cfg.domain, salt)
        images[k], labels[k] = render_specimen(traits[sp], rng, s, **_render_options(cfg))
    return images, labels


def generate_arrays(cfg: SynthConfig, split: str = "train", table: Optional[TraitTable] = None,
                    progress: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split of the collection in memory, identical to what :func:`generate_collection` writes.

    Returns ``images`` N×H×W×3 uint8, ``labels`` N×H×W uint8 and ``species`` N int64, species-major
    (all images of species 0 first).
    """
    table = table or make_taxonomy(cfg)
    items = [(sp, i) for sp in range(table.num_species) for i in cfg.split_indices(split)]
    images, labels = render_batch(table, items, cfg, progress=progress, desc=f"synth {split}")
    species = np.asarray([sp for sp, _ in items], dtype=np.int64)
    return images, labels, species


# ------------------------------------------------------------------------------------ on disk
def _expected_files(root: Path, table: TraitTable, cfg: SynthConfig) -> List[Tuple[str, int, Path, Path]]:
    out = []
    for split in SPLITS:
        for sp, folder in enumerate(table.class_names):
            for i in cfg.split_indices(split):
                out.append((split, sp, root / split / folder / f"{i:04d}.png",
                            root / "masks" / split / folder / f"{i:04d}.png"))
    return out


def _cached(out: Path, cfg: SynthConfig, cfg_dict: dict) -> bool:
    meta_path = out / "collection.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("config") != cfg_dict or meta.get("render_version") != RENDER_VERSION:
        return False
    if not (out / "traits.json").is_file():
        return False
    table = load_traits(out)
    return all(img.is_file() and mask.is_file() for _, _, img, mask in _expected_files(out, table, cfg))


def _save_png(array: np.ndarray, path: Path) -> None:
    # Fixed encoder settings and no metadata: same array, same bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def generate_collection(out_dir: Union[str, Path], cfg: Optional[SynthConfig] = None, progress: bool = True) -> Path:
    """Write the collection to ``out_dir`` (layout in the module docstring) and return its path.

    Cached: when ``out_dir/collection.json`` matches ``cfg`` and every file exists, returns at once.
    Otherwise the collection is written into a temporary sibling folder and moved into place at the end,
    so an interrupted run never leaves a half collection that looks complete. An existing folder that is
    not a traitlens collection is never overwritten.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    cfg_dict = cfg.to_dict()
    if _cached(out, cfg, cfg_dict):
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "collection.json").is_file())):
        raise UserError(f"{out} exists and is not a traitlens synthetic collection; choose another folder",
                        option="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    table = make_taxonomy(cfg)
    files = _expected_files(tmp, table, cfg)
    # every split folder exists, even an empty one, so readers find the layout they expect
    for d in {p.parent for _, _, img, mask in files for p in (img, mask)} | {tmp / sp for sp in SPLITS}:
        d.mkdir(parents=True, exist_ok=True)
    salt = _salt(cfg)
    traits = [table.traits_of(i) for i in range(table.num_species)]
    try:
        it: Iterable = files
        if progress:
            it = progress_bar(files, desc=f"synth {out.name}", total=len(files), unit="img")
        for _, sp, img_path, mask_path in it:
            idx = int(img_path.stem)
            rng = image_rng(cfg.seed, sp, idx, cfg.domain, salt)
            image, labels = render_specimen(traits[sp], rng, cfg.size, **_render_options(cfg))
            _save_png(image, img_path)
            _save_png(labels, mask_path)
        table.to_json(tmp / "traits.json")
        counts = {split: n * table.num_species for split, n in cfg.split_counts().items()}
        meta = {"traitlens_version": __version__, "render_version": RENDER_VERSION, "config": cfg_dict,
                "num_species": table.num_species, "num_genera": len(table.genera), "images": counts,
                "class_names": table.class_names}
        # collection.json last: its presence marks a complete collection
        (tmp / "collection.json").write_text(json.dumps(meta, indent=1) + "\n")
        if _cached(out, cfg, cfg_dict):
            # another process finished the same collection meanwhile: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        elif out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def collection_info(path: Union[str, Path]) -> dict:
    """Summary of a collection folder: species, genera, images per split, parts, config."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass a collection made by `traitlens data synth`")
    info: Dict[str, Any] = {"path": str(root)}
    meta_path = root / "collection.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        info["config"] = meta.get("config")
        info["render_version"] = meta.get("render_version")
    counts: Dict[str, int] = {}
    for split in SPLITS:
        d = root / split
        if d.is_dir():
            counts[split] = sum(1 for _ in d.glob("*/*.png"))
    info["images"] = counts
    if (root / "traits.json").is_file():
        table = load_traits(root)
        info["species"] = table.num_species
        info["genera"] = {g: [table.name(i) for i in table.species_in(g)] for g in table.genera}
        info["parts"] = {p.id: p.name for p in table.parts}
        info["class_names"] = table.class_names
    else:
        classes = sorted({p.name for split in SPLITS if (root / split).is_dir()
                          for p in (root / split).iterdir() if p.is_dir()})
        info["species"] = len(classes)
        info["class_names"] = classes
    if not counts:
        raise UserError(f"{root} has no train/val/test folders; pass a collection made by `traitlens data synth`")
    return info
