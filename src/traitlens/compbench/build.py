"""Building a comparative benchmark from your own labelled collection.

Pairs are mined the way CompBench mined its attribute pairs: two images of the same class (or the
same genus) that look alike (cosine similarity of image features) but differ in one attribute. Each
pair gets a question written from a template and an answer read off the attribute values, so the
answers are right by construction. The output is a benchmark folder ready for ``compbench run``::

    OUT/<task>.json          records {id, task, dimension, image_1, image_2, question, answer, ...}
    OUT/images/<class>/...   the images the records use (copied, so the folder stands alone)
    OUT/benchmark_info.json  how it was built

Attribute sources: a synthetic collection's ``traits.json`` (attributes per species, pairs within a
genus), CUB-200-2011's per-image attribute labels, or a JSON file of per-image attributes
``{"images": [{"path", "class", "group", "attributes": {name: value}}]}`` (numbers: the larger value
wins "which has more"; booleans: "which has").
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from traitlens.errors import UserError
from traitlens.progress import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Item:
    """One image with its class, the group pairs are drawn within, and its attribute values."""

    path: Path
    cls: str
    group: str
    attributes: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- questions
def _part_phrase(group: str) -> str:
    return group.replace("_", " ").replace(".", " ")


def _with_article(phrase: str) -> str:
    if phrase.endswith("s") and not phrase.endswith("ss"):  # plural parts: "pointed wings"
        return phrase
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def synthetic_question(attribute: str, value: Any, noun: str) -> Optional[str]:
    """The question whose answer is "the image whose ``attribute`` is ``value``" (traits.json keys
    ``<group>.present|colour|shape``), or None when no question fits."""
    group, _, kind = attribute.partition(".")
    part = _part_phrase(group)
    if kind == "present" and value is True:
        return f"Which {noun} has {_with_article(part)}?"
    if kind == "colour" and isinstance(value, str):
        return f"Which {noun} has more {value} on its {part}?"
    if kind == "shape" and isinstance(value, str):
        return f"Which {noun} has {_with_article(f'{value} {part}')}?"
    return None


def cub_question(attribute: str, noun: str) -> str:
    """A question for a CUB attribute name such as ``has_wing_color::blue``; the answer is the image
    where the attribute is present."""
    head, _, value = attribute.partition("::")
    value = value.replace("_", " ").strip()
    value = value.split("(")[0].strip() or value
    body = head[4:] if head.startswith("has_") else head
    words = body.split("_")
    kind = words[-1] if words else ""
    part = " ".join(words[:-1]) or "body"
    if kind == "color":
        return f"Which {noun} has more {value} on its {part}?"
    if kind == "pattern":
        return f"Which {noun} has a more {value} pattern on its {part}?"
    if kind in ("shape", "length", "size"):
        return f"Which {noun}'s {part} {kind} is more {value}?" if part != "body" else \
            f"Which {noun} is more {value} in {kind}?"
    return f"Which {noun} shows more of: {body.replace('_', ' ')} {value}?"


def generic_question(attribute: str, noun: str, boolean: bool) -> str:
    name = attribute.replace("_", " ").replace("::", " ").replace(".", " ")
    return f"Which {noun} has {name}?" if boolean else f"Which {noun} has more {name}?"


# ------------------------------------------------------------------------------------- sources
def items_from_traits(data: Path, traits_path: Path, split: str) -> Tuple[List[Item], Callable]:
    """Images of a synthetic collection with their species' attributes; pairs within a genus."""
    from traitlens.data.traits import load_traits

    table = load_traits(traits_path)
    splits = ["train", "val", "test"] if split == "all" else [split]
    items: List[Item] = []
    for s in splits:
        for i, folder in enumerate(table.class_names):
            d = Path(data) / s / folder
            if not d.is_dir():
                continue
            attrs = table.attributes(i)
            for p in sorted(d.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(Item(p, folder, table.genus_of(i), attrs))
    if not items:
        raise UserError(f"no images of the species in {traits_path} under {data}/{split}/<species>/; give the "
                        f"collection folder and a split it has (train, val, test or all)", option="data")

    def question(attribute, value, noun):
        return synthetic_question(attribute, value, noun)

    return items, question


def items_from_cub(root: Path, split: str) -> Tuple[List[Item], Callable]:
    """CUB-200-2011 images with their per-image attribute labels; pairs within a species."""
    from traitlens.data.cub import find_cub_root, load_cub_attributes

    r = find_cub_root(root)
    names, present = load_cub_attributes(r)
    rows = [line.split(maxsplit=1) for line in (r / "images.txt").read_text().splitlines() if line.strip()]
    rows = sorted((int(i), p.strip()) for i, p in rows)
    is_train = {}
    split_file = r / "train_test_split.txt"
    if split_file.is_file():
        for line in split_file.read_text().splitlines():
            f = line.split()
            if len(f) >= 2:
                is_train[int(f[0])] = f[1] == "1"
    items = []
    for k, (image_id, rel) in enumerate(rows):
        if split in ("train", "test") and image_id in is_train and is_train[image_id] != (split == "train"):
            continue
        cls = rel.split("/")[0]
        attrs = {n: bool(present[k, a]) for a, n in enumerate(names)}
        items.append(Item(r / "images" / rel, cls, cls, attrs))

    def question(attribute, value, noun):
        return cub_question(attribute, noun) if value is True else None

    return items, question


def items_from_json(data: Path, path: Path) -> Tuple[List[Item], Callable, List[str]]:
    """Images listed in a JSON file with their attributes (paths relative to ``data``; a path that is
    absolute, holds ``..`` or leads out of ``data`` through a link is refused, listed in ``refused``)."""
    from traitlens.compbench.records import inside_folder, normalize_path, path_problem

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = spec["images"] if isinstance(spec, dict) else spec
        items, refused = [], []
        root_real = os.path.realpath(data)
        for n, r in enumerate(rows, start=1):
            if not (isinstance(r, dict) and isinstance(r.get("path"), str) and "class" in r
                    and isinstance(r.get("attributes"), dict)):
                refused.append(f"entry {n} is not {{'path': str, 'class', 'attributes': {{...}}}}")
                continue
            why = path_problem(r["path"])
            full = Path(data) / normalize_path(r["path"]) if why is None else None
            if full is not None and full.exists() and not inside_folder(full, root_real):
                why = f"image {r['path']} is a link to a file outside {data}"
            if why is not None:
                refused.append(why)
                continue
            items.append(Item(full, str(r["class"]), str(r.get("group", r["class"])), dict(r["attributes"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: expected {{'images': [{{'path', 'class', 'group', 'attributes'}}]}} "
                        f"({type(exc).__name__}: {exc})") from None
    if refused:
        from traitlens.progress import log

        log(f"compbench build: {len(refused)} entr{'y' if len(refused) == 1 else 'ies'} of {path} refused "
            f"(e.g. {refused[0]})")

    def question(attribute, value, noun):
        if isinstance(value, bool):
            return generic_question(attribute, noun, True) if value else None
        if isinstance(value, (int, float)):
            return generic_question(attribute, noun, False)
        return None

    return items, question, refused


def load_items(data: Path, attributes: Path, split: str) -> Tuple[List[Item], Callable, str, List[str]]:
    """Pick the attribute source from what ``attributes`` is: (items, question maker, source name,
    the image paths refused as outside ``data``)."""
    a = Path(attributes)
    if a.is_dir() and (a / "traits.json").is_file():
        a = a / "traits.json"
    if a.name == "traits.json" or (a.is_file() and a.suffix == ".json" and '"species"' in a.read_text()[:100000]
                                   and '"genera"' in a.read_text()[:100000]):
        items, q = items_from_traits(data, a, split)
        return items, q, "traits", []
    if a.is_dir() or a.name in ("image_attribute_labels.txt", "attributes.txt"):
        items, q = items_from_cub(a if a.is_dir() else a.parent, split)
        return items, q, "cub", []
    if a.is_file() and a.suffix == ".json":
        items, q, refused = items_from_json(data, a)
        return items, q, "json", refused
    raise UserError(f"attributes {a}: give a traits.json, a CUB-200-2011 folder, or a JSON of per-image attributes")


# ------------------------------------------------------------------------------------- features
def pixel_features(paths: Sequence[Path], size: int = 24, bins: int = 8) -> np.ndarray:
    """N×D L2-normalised features: a size×size thumbnail (centred) and a bins³ colour histogram."""
    from PIL import Image

    from traitlens.data.imageio import load_image

    feats = []
    for p in progress(paths, desc="features", unit="img"):
        im = load_image(p)
        thumb = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32).reshape(-1) / 255.0
        thumb -= thumb.mean()
        q = (np.asarray(im, dtype=np.int64) * bins // 256).reshape(-1, 3)
        hist = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3).astype(np.float32)
        hist /= max(hist.sum(), 1.0)
        v = np.concatenate([thumb / (np.linalg.norm(thumb) + 1e-8), hist / (np.linalg.norm(hist) + 1e-8)])
        feats.append(v / (np.linalg.norm(v) + 1e-8))
    return np.stack(feats) if feats else np.zeros((0, 1), np.float32)


def backbone_features(paths: Sequence[Path], name: str, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """N×D L2-normalised pooled features of a traitlens backbone (a preset name or a run folder)."""
    import torch

    from traitlens.backbones import create, data_config
    from traitlens.data.imageio import load_image

    src = Path(name)
    model = create(None, weights=src) if src.exists() else create(name)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().to(device)
    cfg = data_config(model)
    _, h, w = cfg["input_size"]
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for i in progress(range(0, len(paths), batch_size), desc="features", unit="batch"):
            ims = [np.asarray(load_image(p).resize((w, h)), dtype=np.float32) / 255.0 for p in paths[i:i + batch_size]]
            x = (torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2) - mean) / std
            f = model(x.to(device)).reshape(len(ims), -1).float()
            out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def features(paths: Sequence[Path], feature: str, device: str = "cpu") -> np.ndarray:
    """N×D features of ``paths``: ``pixels`` (always on the CPU) or ``backbone:NAME`` (on ``device``)."""
    if feature == "pixels":
        return pixel_features(paths)
    if feature.startswith("backbone:"):
        return backbone_features(paths, feature.split(":", 1)[1], device=device)
    raise UserError(f"feature {feature!r}: use 'pixels' or 'backbone:NAME' (a preset or a run folder)",
                    option="feature")


def _safe_name(name: str) -> str:
    """``name`` as one plain folder name (no separators, no ``..``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip(".") or "class"


# ------------------------------------------------------------------------------------- mining
@dataclass
class MinedPair:
    a: int            # index of the image the question is about (the answer side)
    b: int
    attribute: str
    question: str
    similarity: float


def _differs(va: Any, vb: Any) -> bool:
    if va is None or vb is None:
        return False
    if isinstance(va, bool) or isinstance(vb, bool):
        return bool(va) != bool(vb)
    return va != vb


def mine_pairs(items: Sequence[Item], feats: np.ndarray, question_fn: Callable, noun: str,
               pairs_per_attribute: int, group: str = "auto", min_gap: float = 0.0) -> List[MinedPair]:
    """The most similar pairs (within a class or group) differing in each attribute, one question each.

    For a pair differing in ``attribute``, the question is asked about the value of one image (the
    "answer side"): colours and shapes of that image, presence where it has the part, the larger
    value for numbers.
    """
    if group == "auto":
        varies = {}
        for it in items:
            varies.setdefault(it.cls, set()).add(json.dumps(it.attributes, sort_keys=True, default=str))
        group = "class" if any(len(v) > 1 for v in varies.values()) else "genus"
    key = (lambda it: it.cls) if group == "class" else (lambda it: it.group)
    members: Dict[str, List[int]] = {}
    for i, it in enumerate(items):
        members.setdefault(key(it), []).append(i)
    sims = feats @ feats.T if len(items) else np.zeros((0, 0))
    candidates: Dict[str, List[Tuple[float, int, int, str]]] = {}
    for idx in members.values():
        for x in range(len(idx)):
            for y in range(x + 1, len(idx)):
                i, j = idx[x], idx[y]
                ai, aj = items[i].attributes, items[j].attributes
                for attr in ai:
                    vi, vj = ai.get(attr), aj.get(attr)
                    if not _differs(vi, vj):
                        continue
                    if isinstance(vi, bool) or isinstance(vj, bool):
                        side = i if vi else j
                    elif isinstance(vi, (int, float)) and isinstance(vj, (int, float)):
                        if abs(vi - vj) <= min_gap:
                            continue
                        side = i if vi > vj else j
                    else:
                        side = i  # categorical: ask about image i's value (orientation is random later)
                    other = j if side == i else i
                    q = question_fn(attr, items[side].attributes[attr], noun)
                    if q is None:
                        continue
                    candidates.setdefault(attr, []).append((float(sims[i, j]), side, other, q))
    mined: List[MinedPair] = []
    for attr in sorted(candidates):
        used = set()
        for sim, side, other, q in sorted(candidates[attr], key=lambda c: (-c[0], c[1], c[2])):
            if len([m for m in mined if m.attribute == attr]) >= pairs_per_attribute:
                break
            if side in used or other in used:
                continue
            used.update((side, other))
            mined.append(MinedPair(side, other, attr, q, sim))
    return mined


def build_benchmark(data: Path, attributes: Path, out: Path, pairs_per_attribute: int = 4, split: str = "test",
                    group: str = "auto", feature: str = "pixels", task: str = "specimen_attributes",
                    noun: str = "specimen", seed: int = 0, device: str = "cpu") -> Dict[str, Any]:
    """Mine pairs and write the benchmark folder (layout in the module docstring); returns its summary.

    Images that do not decode are left out and listed (``skipped_images`` in the summary); ``device``
    runs ``backbone:NAME`` features (``auto``: CUDA when available).
    """
    from traitlens.compbench.records import check_image
    from traitlens.compbench.tasks import check_task_name
    from traitlens.errors import BadImageError

    check_task_name(task)
    if pairs_per_attribute < 1:
        raise UserError(f"pairs per attribute {pairs_per_attribute}: must be at least 1", option="pairs_per_attribute")
    items, question_fn, source, refused = load_items(Path(data), Path(attributes), split)
    skipped: List[Dict[str, str]] = [{"path": "", "reason": why} for why in refused]
    good: List[Item] = []
    for it in progress(items, desc="checking images", unit="img"):
        try:
            check_image(it.path)
            good.append(it)
        except BadImageError as exc:
            skipped.append({"path": str(it.path), "reason": exc.reason})
    if len(good) < len(items):
        from traitlens.progress import log

        log(f"compbench build: {len(items) - len(good)} image(s) do not decode and are left out "
            f"(e.g. {skipped[len(refused)]['path']}: {skipped[len(refused)]['reason']})")
    items = good
    feats = features([it.path for it in items], feature, device=device)
    mined = mine_pairs(items, feats, question_fn, noun, pairs_per_attribute, group)
    if not mined:
        raise UserError(f"no pair of look-alike images in {data} differs in an attribute; use more images "
                        f"(all splits) or group by genus")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    copied: Dict[int, str] = {}

    def stored(i: int) -> str:
        if i not in copied:
            it = items[i]
            folder = _safe_name(it.cls)  # a class name from a JSON file must not lead the copy out of OUT
            dest = out / "images" / folder / f"{it.path.parent.parent.name}_{it.path.name}" \
                if source == "traits" else out / "images" / folder / it.path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copyfile(it.path, dest)
            copied[i] = dest.relative_to(out).as_posix()
        return copied[i]

    # half the answers Left, half Right (seeded), so always-left scores chance
    order = list(range(len(mined)))
    rng.shuffle(order)
    left_answers = set(order[: (len(mined) + 1) // 2])
    records = []
    for k, m in enumerate(mined):
        left_is_answer = k in left_answers
        first, second = (m.a, m.b) if left_is_answer else (m.b, m.a)
        records.append({
            "id": f"{task}-{k:05d}", "task": task, "dimension": "attribute",
            "image_1": stored(first), "image_2": stored(second), "question": m.question,
            "answer": "Left" if left_is_answer else "Right",
            "attribute": m.attribute,
            "value_1": items[first].attributes.get(m.attribute), "value_2": items[second].attributes.get(m.attribute),
            "class_1": items[first].cls, "class_2": items[second].cls, "similarity": round(m.similarity, 6),
        })
    path = out / f"{task}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    info = {"task": task, "file": str(path), "pairs": len(records), "attributes": len({m.attribute for m in mined}),
            "source": source, "data": str(data), "attributes_file": str(attributes), "split": split,
            "feature": feature, "group": group, "seed": seed, "skipped_images": skipped,
            "answers": {"Left": sum(r["answer"] == "Left" for r in records),
                        "Right": sum(r["answer"] == "Right" for r in records)}}
    (out / "benchmark_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
