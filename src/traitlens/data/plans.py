"""Body plans of the synthetic collection besides the bird: butterflies (wing patterns) and beetles.

A body plan is data plus two functions: its parts (label ids, trait parts with their hosts), its trait
groups (which part ids a species-level trait value paints), the shapes and colours each group can take,
the bilateral pairs (left/right ids) and

- ``draw_geometry(rng) -> dict``: per-image shape jitter, a fixed number of draws;
- ``part_maps(X, Y, traits, g) -> (labels uint8, dark bool)``: the label map for specimen-frame
  coordinates (x right, y down, head towards -y, the specimen within about [-1, 1]) and a mask of pixels
  drawn dark (the bird's pupils; the plans here have none).

Trait parts are painted only where their host shows, so a trait pixel always replaces a host pixel.

Butterfly (seen from above, wings spread)::

    0 background  1 body  2 left forewing  3 right forewing  4 left hindwing  5 right hindwing
    6 forewing band  7 hindwing bar  8 hindwing rays  9 discal spot  10 marginal spots

The pattern elements are those real wings carry (Heliconius bands and rays): a forewing band across the
wing (narrow, broad or curved), a hindwing bar, thin rays fanning out from the hindwing base, a discal spot
near the forewing base, and spots (or a thin band) along the hindwing margin. Several are thin: a narrow
band is 0.045 specimen units wide, a ray 0.03-0.045 (the view is 2.4 units across at scale 1, so 1.2-1.9%
of the image side).

Beetle (seen from above)::

    0 background  1 head  2 pronotum  3 left elytron  4 right elytron  5 legs  6 antennae
    7 elytral spots  8 elytral stripe  9 pronotum mark

Genera differ in colours and in the shapes of pronotum (round, trapezoid, square), elytra and antennae;
sibling species in their elytral pattern (spots, stripe) and the pronotum mark. Legs and antennae are thin
parts of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import numpy as np

from traitlens.data.traits import Part


@dataclass(frozen=True)
class BodyPlan:
    """What the generator needs to know about one kind of specimen (see the module docstring)."""

    name: str
    parts: Tuple[Part, ...]
    trait_groups: Dict[str, Tuple[int, ...]]
    large_groups: Tuple[str, ...]
    small_groups: Tuple[str, ...]
    shapes: Dict[str, Tuple[str, ...]]
    #: the large group a small trait group is painted on (its colour must contrast with the host's)
    hosts: Dict[str, str]
    #: colours the large groups draw from (a group not listed uses ``ground_colours``)
    large_colours: Dict[str, Tuple[str, ...]]
    ground_colours: Tuple[str, ...]
    #: large groups whose colour counts towards "genera differ in the colours of two large parts"
    colour_groups: Tuple[str, ...]
    #: (left id, right id) pairs that swap in a mirror image
    mirror_pairs: Tuple[Tuple[int, int], ...]
    draw_geometry: Callable = field(compare=False, repr=False, default=None)
    part_maps: Callable = field(compare=False, repr=False, default=None)

    @property
    def num_parts(self) -> int:
        return len(self.parts)


def _segment(X, Y, x0, y0, x1, y1, half):
    """Points within ``half`` of the segment (x0, y0)-(x1, y1): a capsule (legs, antennae, rays)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (X - x0 - t * dx) ** 2 + (Y - y0 - t * dy) ** 2 <= half * half


# ------------------------------------------------------------------------------------------ butterfly
def _butterfly_geometry(rng: np.random.Generator) -> Dict[str, float]:
    u = rng.uniform(-1.0, 1.0, size=12)
    return {
        "fw_angle": math.radians(28 + 5 * u[0]), "hw_angle": math.radians(42 + 5 * u[1]),
        "fw_len": 1 + 0.05 * u[2], "hw_len": 1 + 0.05 * u[3], "body_len": 1 + 0.04 * u[4],
        "band_pos": 0.03 * u[5], "bar_pos": 0.03 * u[6], "ray_spread": 1 + 0.06 * u[7],
        "spot_pos": 0.02 * u[8], "margin_phase": 0.1 * u[9],
        "texture_phase": math.pi * u[10], "texture_angle": math.pi * u[11],
    }


def _wing_frame(X, Y, side, root, angle, length):
    """Local (u along the wing from its root, v across it) coordinates of a wing at ``angle`` below (+) or
    above (-) the horizontal, pointing to ``side`` (-1 left, +1 right)."""
    dx, dy = side * math.cos(angle), math.sin(angle)
    rx, ry = side * root[0], root[1]
    u = (X - rx) * dx + (Y - ry) * dy
    v = -(X - rx) * dy + (Y - ry) * dx
    return u, v * side  # v > 0 towards the head for either side


def _butterfly_parts(X, Y, traits: dict, g: Dict[str, float]):
    labels = np.zeros(X.shape, dtype=np.uint8)
    fw_shape, hw_shape = traits["forewings"]["shape"], traits["hindwings"]["shape"]
    # hindwings first (the forewings overlap them), each a superellipse from its root, down and outwards
    hw_len = 0.62 * g["hw_len"]
    hw_frames = []
    for pid, side in ((4, -1.0), (5, 1.0)):
        u, v = _wing_frame(X, Y, side, (0.04, 0.12), g["hw_angle"], hw_len)
        a, b = hw_len / 2, 0.31
        inside = np.abs((u - a) / a) ** 2.2 + np.abs(v / b) ** 2.2 <= 1.0
        if hw_shape == "tailed":  # a short tail lobe beyond the wing's end (swallowtails)
            inside |= _segment(u, v, 1.7 * a, 0.0, 2.35 * a, -0.05, 0.045)
        labels[inside & (labels == 0)] = pid
        hw_frames.append((u, v, a, b))
    fw_len = 0.95 * g["fw_len"]
    fw_frames = []
    for pid, side in ((2, -1.0), (3, 1.0)):
        u, v = _wing_frame(X, Y, side, (0.04, -0.10), -g["fw_angle"], fw_len)
        a = fw_len / 2
        # wider towards the tip (a wing, not an ellipse); pointed wings narrow again at the apex
        taper = 0.55 + 0.45 * np.clip(u / (2 * a), 0.0, 1.0)
        p = 1.6 if fw_shape == "pointed" else 2.4
        inside = np.abs((u - a) / a) ** p + np.abs(v / (0.31 * taper)) ** 2.2 <= 1.0
        labels[inside] = pid
        fw_frames.append((u, v, a))
    # body: a slender thorax + abdomen with a round head
    bl = g["body_len"]
    bw = 0.075 if traits["body"]["shape"] == "slender" else 0.10
    labels[(X / bw) ** 2 + ((Y - 0.10) / (0.52 * bl)) ** 2 <= 1.0] = 1
    labels[X ** 2 + (Y + 0.47 * bl) ** 2 <= 0.085 ** 2] = 1

    band = traits["fw_band"]
    if band.get("present"):
        half = {"narrow": 0.0225, "broad": 0.065, "curved": 0.03}[band["shape"]]
        bend = 0.9 if band["shape"] == "curved" else 0.15
        for pid, (u, v, a) in zip((2, 3), fw_frames):
            centre = 1.25 * a + g["band_pos"] + bend * v * v
            labels[(np.abs(u - centre) <= half) & (labels == pid)] = 6
    spot = traits["discal_spot"]
    if spot.get("present"):
        for pid, (u, v, a) in zip((2, 3), fw_frames):
            u0 = 0.62 * a + g["spot_pos"]
            if spot["shape"] == "round":
                m = (u - u0) ** 2 + (v - 0.02) ** 2 <= 0.06 ** 2
            else:
                m = (np.abs(u - u0) <= 0.03) & (np.abs(v - 0.02) <= 0.11)
            labels[m & (labels == pid)] = 9
    bar = traits["hw_bar"]
    if bar.get("present"):
        half = 0.05 if bar["shape"] == "wide" else 0.025
        for pid, (u, v, a, b) in zip((4, 5), hw_frames):
            labels[(np.abs(u - (0.85 * a + g["bar_pos"])) <= half) & (labels == pid)] = 7
    rays = traits["hw_rays"]
    if rays.get("present"):
        half = 0.0225 if rays["shape"] == "thick" else 0.015
        for pid, (u, v, a, b) in zip((4, 5), hw_frames):
            m = np.zeros(X.shape, dtype=bool)
            for k in range(4):
                phi = math.radians((-33 + 22 * k) * g["ray_spread"])
                m |= _segment(u, v, 0.25 * a, 0.0, 1.85 * a * math.cos(phi), 1.85 * a * math.sin(phi) * 0.6, half)
            labels[m & (labels == pid)] = 8
    margin = traits["marginal_spots"]
    if margin.get("present"):
        for pid, (u, v, a, b) in zip((4, 5), hw_frames):
            r = np.abs((u - a) / a) ** 2.2 + np.abs(v / b) ** 2.2
            if margin["shape"] == "band":
                m = (r >= 0.80) & (r <= 0.92)
            else:  # dots just inside the outer margin
                m = np.zeros(X.shape, dtype=bool)
                for k in range(5):
                    t = -1.0 + 0.5 * k + g["margin_phase"]
                    uu, vv = a + 0.84 * a * math.cos(t), 0.84 * b * math.sin(t)
                    m |= (u - uu) ** 2 + (v - vv) ** 2 <= 0.035 ** 2
            labels[m & (labels == pid)] = 10
    return labels, np.zeros(X.shape, dtype=bool)


BUTTERFLY = BodyPlan(
    name="butterfly",
    parts=(Part(0, "background"), Part(1, "body"), Part(2, "left_forewing"), Part(3, "right_forewing"),
           Part(4, "left_hindwing"), Part(5, "right_hindwing"), Part(6, "forewing_band", (2, 3)),
           Part(7, "hindwing_bar", (4, 5)), Part(8, "hindwing_rays", (4, 5)), Part(9, "discal_spot", (2, 3)),
           Part(10, "marginal_spots", (4, 5))),
    trait_groups={"body": (1,), "forewings": (2, 3), "hindwings": (4, 5), "fw_band": (6,), "hw_bar": (7,),
                  "hw_rays": (8,), "discal_spot": (9,), "marginal_spots": (10,)},
    large_groups=("body", "forewings", "hindwings"),
    small_groups=("fw_band", "hw_bar", "hw_rays", "discal_spot", "marginal_spots"),
    shapes={"body": ("slender", "stout"), "forewings": ("rounded", "pointed"), "hindwings": ("rounded", "tailed"),
            "fw_band": ("narrow", "broad", "curved"), "hw_bar": ("wide", "narrow"), "hw_rays": ("thick", "fine"),
            "discal_spot": ("round", "bar"), "marginal_spots": ("dots", "band")},
    hosts={"fw_band": "forewings", "discal_spot": "forewings", "hw_bar": "hindwings", "hw_rays": "hindwings",
           "marginal_spots": "hindwings"},
    large_colours={"body": ("black", "brown", "grey", "tan")},
    ground_colours=("black", "brown", "slate", "rust", "cream", "olive", "tan", "blue"),
    colour_groups=("body", "forewings", "hindwings"),
    mirror_pairs=((2, 3), (4, 5)),
    draw_geometry=_butterfly_geometry,
    part_maps=_butterfly_parts,
)


# --------------------------------------------------------------------------------------------- beetle
def _beetle_geometry(rng: np.random.Generator) -> Dict[str, float]:
    u = rng.uniform(-1.0, 1.0, size=12)
    return {
        "elytra_sx": 1 + 0.04 * u[0], "elytra_sy": 1 + 0.04 * u[1], "pron_s": 1 + 0.05 * u[2],
        "head_s": 1 + 0.05 * u[3], "leg_angle": math.radians(6 * u[4]), "leg_len": 1 + 0.06 * u[5],
        "ant_angle": math.radians(6 * u[6]), "ant_len": 1 + 0.06 * u[7], "spot_pos": 0.03 * u[8],
        "mark_pos": 0.02 * u[9], "texture_phase": math.pi * u[10], "texture_angle": math.pi * u[11],
    }


def _beetle_parts(X, Y, traits: dict, g: Dict[str, float]):
    labels = np.zeros(X.shape, dtype=np.uint8)
    # legs and antennae first: the body covers their bases
    legs = np.zeros(X.shape, dtype=bool)
    ll = g["leg_len"]
    for side in (-1.0, 1.0):
        for k, (y0, a0, a1) in enumerate(((-0.22, -40.0, -75.0), (0.08, 5.0, 20.0), (0.38, 40.0, 70.0))):
            a0r = math.radians(a0) + g["leg_angle"]
            a1r = math.radians(a1) + g["leg_angle"]
            x0 = side * 0.20
            x1, y1 = x0 + side * 0.28 * ll * math.cos(a0r), y0 + 0.28 * ll * math.sin(a0r)
            x2, y2 = x1 + side * 0.26 * ll * math.cos(a1r) * 0.6, y1 + 0.26 * ll * math.sin(a1r)
            legs |= _segment(X, Y, x0, y0, x1, y1, 0.026) | _segment(X, Y, x1, y1, x2, y2, 0.02)
    labels[legs] = 5
    ant = np.zeros(X.shape, dtype=bool)
    alen = (0.30 if traits["antennae"]["shape"] == "short" else 0.48) * g["ant_len"]
    for side in (-1.0, 1.0):
        a = math.radians(62) + g["ant_angle"]
        x0, y0 = side * 0.08, -0.72
        x1, y1 = x0 + side * alen * 0.5 * math.cos(a), y0 - alen * 0.5 * math.sin(a)
        x2, y2 = x1 + side * alen * 0.5 * math.cos(a + 0.5), y1 - alen * 0.5 * math.sin(a + 0.5)
        ant |= _segment(X, Y, x0, y0, x1, y1, 0.018) | _segment(X, Y, x1, y1, x2, y2, 0.018)
    labels[ant] = 6
    # elytra: two halves of one ellipse, split along the suture
    ex, ey = (0.36, 0.58) if traits["elytra"]["shape"] == "oval" else (0.30, 0.66)
    ex, ey = ex * g["elytra_sx"], ey * g["elytra_sy"]
    ecy = 0.22
    elytra = (X / ex) ** 2 + ((Y - ecy) / ey) ** 2 <= 1.0
    labels[elytra & (X < 0)] = 3
    labels[elytra & (X >= 0)] = 4
    # pronotum and head
    ps = g["pron_s"]
    pcy, pw, ph = -0.45, 0.30 * ps, 0.17 * ps
    px, py = X / pw, (Y - pcy) / ph
    shape = traits["pronotum"]["shape"]
    if shape == "round":
        pron = px ** 2 + py ** 2 <= 1.0
    elif shape == "trapezoid":  # wider at the back (towards the elytra)
        pron = (np.abs(py) <= 1.0) & (np.abs(px) <= 0.75 + 0.25 * py)
    else:  # square with rounded corners
        pron = np.abs(px) ** 4 + np.abs(py) ** 4 <= 1.0
    labels[pron] = 2
    hs = g["head_s"]
    labels[(X / (0.16 * hs)) ** 2 + ((Y + 0.70) / (0.12 * hs)) ** 2 <= 1.0] = 1

    spots = traits["elytral_spots"]
    if spots.get("present"):
        m = np.zeros(X.shape, dtype=bool)
        for yy in (0.02, 0.42):
            yy = yy + g["spot_pos"]
            for side in (-1.0, 1.0):
                if spots["shape"] == "round":
                    m |= (X - side * 0.17) ** 2 + (Y - yy) ** 2 <= 0.075 ** 2
                else:  # a transverse bar on each elytron
                    m |= (np.abs(X - side * 0.17) <= 0.11) & (np.abs(Y - yy) <= 0.035)
        labels[m & ((labels == 3) | (labels == 4))] = 7
    stripe = traits["elytral_stripe"]
    if stripe.get("present"):
        half = 0.0225 if stripe["shape"] == "narrow" else 0.05
        m = (np.abs(np.abs(X) - 0.55 * ex) <= half) & (np.abs(Y - ecy) <= 0.8 * ey)
        labels[m & ((labels == 3) | (labels == 4))] = 8
    mark = traits["pronotum_mark"]
    if mark.get("present"):
        if mark["shape"] == "dot":
            m = ((np.abs(X) - 0.12) ** 2 + (Y - pcy - g["mark_pos"]) ** 2) <= 0.05 ** 2
        else:
            m = np.abs(Y - pcy - g["mark_pos"]) <= 0.03
        labels[m & (labels == 2)] = 9
    return labels, np.zeros(X.shape, dtype=bool)


BEETLE = BodyPlan(
    name="beetle",
    parts=(Part(0, "background"), Part(1, "head"), Part(2, "pronotum"), Part(3, "left_elytron"),
           Part(4, "right_elytron"), Part(5, "legs"), Part(6, "antennae"), Part(7, "elytral_spots", (3, 4)),
           Part(8, "elytral_stripe", (3, 4)), Part(9, "pronotum_mark", (2,))),
    trait_groups={"head": (1,), "pronotum": (2,), "elytra": (3, 4), "legs": (5,), "antennae": (6,),
                  "elytral_spots": (7,), "elytral_stripe": (8,), "pronotum_mark": (9,)},
    large_groups=("head", "pronotum", "elytra", "legs", "antennae"),
    small_groups=("elytral_spots", "elytral_stripe", "pronotum_mark"),
    shapes={"head": ("round",), "pronotum": ("round", "trapezoid", "square"), "elytra": ("oval", "elongate"),
            "legs": ("plain",), "antennae": ("short", "long"), "elytral_spots": ("round", "bar"),
            "elytral_stripe": ("narrow", "broad"), "pronotum_mark": ("dot", "band")},
    hosts={"elytral_spots": "elytra", "elytral_stripe": "elytra", "pronotum_mark": "pronotum"},
    large_colours={"legs": ("black", "brown", "rust", "tan"), "antennae": ("black", "brown", "rust", "tan")},
    ground_colours=("black", "brown", "green", "blue", "rust", "olive", "slate", "tan", "grey"),
    colour_groups=("head", "pronotum", "elytra"),
    mirror_pairs=((3, 4),),
    draw_geometry=_beetle_geometry,
    part_maps=_beetle_parts,
)
