"""CUB-200-2011 from a local copy: images, labels, the official train/test split, boxes, parts, attributes.

``root`` is the folder holding ``images.txt`` (``CUB_200_2011/``) or its parent. Files read::

    images.txt                  <image_id> <relative path under images/>
    image_class_labels.txt      <image_id> <class_id>
    train_test_split.txt        <image_id> <1 = train, 0 = test>
    classes.txt                 <class_id> <name>
    bounding_boxes.txt          <image_id> <x> <y> <width> <height>     (pixels; optional)
    parts/parts.txt             <part_id> <name with spaces>             (optional, with part_locs.txt)
    parts/part_locs.txt         <image_id> <part_id> <x> <y> <visible>
    attributes.txt (or attributes/attributes.txt, or beside CUB_200_2011/)      <attribute_id> <name>
    attributes/image_attribute_labels.txt   <image_id> <attribute_id> <is_present> <certainty_id> <time>

Boxes and part locations come back in the coordinates of the transformed image, so they can be drawn over it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from traitlens.data.imageio import load_image
from traitlens.data.transforms import run_transform, sample_generator
from traitlens.errors import BadImageError, UserError

PathLike = Union[str, Path]


def find_cub_root(root: PathLike) -> Path:
    """The folder holding ``images.txt``: ``root`` itself or ``root/CUB_200_2011``."""
    root = Path(root)
    for candidate in (root, root / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    raise UserError(f"not a CUB-200-2011 folder: {root} (no images.txt there or in {root / 'CUB_200_2011'})")


def _rows(path: Path, fields: int, split_rest: bool = False) -> List[List[str]]:
    """Whitespace-separated rows with at least ``fields`` fields; ``split_rest`` joins the tail into the last."""
    if not path.is_file():
        raise UserError(f"CUB file missing: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=fields - 1) if split_rest else line.split()
        if len(parts) < fields:
            raise UserError(f"{path}:{n}: expected {fields} fields, got {line!r}")
        rows.append(parts)
    return rows


def _int(path: Path, value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise UserError(f"{path}: expected a number, got {value!r}") from None


def _tables(r: Path):
    """(images {id: rel path}, class rows [(class id, name)] sorted, labels {id: class id}, is_train {id: bool})."""
    images = {_int(r / "images.txt", i): p.strip() for i, p in _rows(r / "images.txt", 2, split_rest=True)}
    class_rows = sorted((_int(r / "classes.txt", c), n.strip())
                        for c, n in _rows(r / "classes.txt", 2, split_rest=True))
    labels = {_int(r / "image_class_labels.txt", i): _int(r / "image_class_labels.txt", c)
              for i, c in _rows(r / "image_class_labels.txt", 2)}
    is_train = {_int(r / "train_test_split.txt", i): _int(r / "train_test_split.txt", t) == 1
                for i, t in _rows(r / "train_test_split.txt", 2)}
    return images, class_rows, labels, is_train


def _official_samples(r: Path, images, class_rows, labels, is_train, want_train: bool) -> List[Tuple[int, str, int]]:
    """``(image id, rel path below images/, class index)`` of the official train (or test) images, id order."""
    class_index = {cid: i for i, (cid, _) in enumerate(class_rows)}
    out = []
    for image_id in sorted(images):
        if image_id not in labels or image_id not in is_train:
            raise UserError(f"CUB image {image_id} ({images[image_id]}) has no label or split entry in {r}")
        if is_train[image_id] != want_train:
            continue
        if labels[image_id] not in class_index:
            raise UserError(f"CUB image {image_id} has class {labels[image_id]}, not in {r / 'classes.txt'}")
        out.append((image_id, images[image_id], class_index[labels[image_id]]))
    return out


def cub_items(root: PathLike) -> Tuple[List[str], List[Tuple[str, int]], List[Tuple[str, int]]]:
    """``(class names, train items, test items)`` of CUB's official split; items are ``(path below the CUB
    folder, e.g. images/001.Black_footed_Albatross/x.jpg, class index)``. Needs only images.txt, classes.txt,
    image_class_labels.txt and train_test_split.txt."""
    r = find_cub_root(root)
    images, class_rows, labels, is_train = _tables(r)
    split = {want: [(f"images/{rel}", label) for _, rel, label in
                    _official_samples(r, images, class_rows, labels, is_train, want)] for want in (True, False)}
    return [name for _, name in class_rows], split[True], split[False]


class CUBDataset(torch.utils.data.Dataset):
    """CUB-200-2011 images of one official split.

    ``crop="bbox"`` cuts each image to its bounding box before the transform. Items: the sample dict
    (``image``, ``label`` 0…199, ``index``, ``path``) plus ``image_id`` (CUB's id), ``bbox`` (FloatTensor 4:
    x, y, w, h) and ``parts`` (FloatTensor P×3: x, y, visible; invisible parts are (0, 0, 0)), both in the
    transformed image's pixels; a horizontal flip swaps the left/right parts (a mirrored bird's left eye is the
    original's right eye). ``parts`` is left out when the copy has no ``parts/`` folder; ``bbox`` and
    ``parts`` are left out when the transform cannot report its geometry (a plain torchvision pipeline);
    ``bbox`` is left out when the copy has no ``bounding_boxes.txt``.

    For training and evaluation through ``--data`` (train/val/test), see
    :func:`traitlens.data.folders.open_collection_split`: a CUB root is read with the official split and a
    validation split carved from train by a seeded rule.
    """

    def __init__(self, root: PathLike, split: str = "train", transform=None, crop: str = "none", seed: int = 0):
        if split not in ("train", "test"):
            raise UserError(f"CUB split must be 'train' or 'test', got {split!r}")
        if crop not in ("none", "bbox"):
            raise UserError(f"crop must be 'none' or 'bbox', got {crop!r}")
        self.root = find_cub_root(root)
        self.split, self.transform, self.crop = split, transform, crop
        self.seed, self.epoch = int(seed), 0

        r = self.root
        images, class_rows, labels, is_train = _tables(r)
        self._classes = [name for _, name in class_rows]
        samples = [(i, str(r / "images" / rel), label) for i, rel, label in
                   _official_samples(r, images, class_rows, labels, is_train, split == "train")]
        if not samples:
            raise UserError(f"no {split} images listed in {r / 'train_test_split.txt'}")
        self.samples: List[Tuple[int, str, int]] = samples
        # bounding_boxes.txt is optional (a copy without it gives items without "bbox"; crop="bbox" needs it).
        boxes: Dict[int, Tuple[float, ...]] = {}
        if (r / "bounding_boxes.txt").is_file():
            boxes = {_int(r / "bounding_boxes.txt", row[0]): tuple(float(v) for v in row[1:5])
                     for row in _rows(r / "bounding_boxes.txt", 5)}
            missing_box = [i for i, _, _ in samples if i not in boxes]
            if missing_box:
                raise UserError(f"{len(missing_box)} images have no box in {r / 'bounding_boxes.txt'} "
                                f"(first id {missing_box[0]})")
        elif crop == "bbox":
            raise UserError(f"crop='bbox' needs {r / 'bounding_boxes.txt'}, which this copy lacks")
        self._boxes = boxes
        self.part_names, self._parts = self._read_parts(r, max(images))
        # A mirrored bird's left eye is the original's right eye: flips swap left/right part rows.
        swapped = [n.replace("left", "\0").replace("right", "left").replace("\0", "right") for n in self.part_names]
        self._flip_order = [self.part_names.index(n) if n in self.part_names else k for k, n in enumerate(swapped)]

    @staticmethod
    def _read_parts(r: Path, max_id: int) -> Tuple[List[str], Optional[np.ndarray]]:
        names_file, locs_file = r / "parts" / "parts.txt", r / "parts" / "part_locs.txt"
        if not locs_file.is_file():
            return [], None
        rows = sorted((_int(names_file, p), n.strip()) for p, n in _rows(names_file, 2, split_rest=True))
        names = [n for _, n in rows]
        part_index = {pid: k for k, (pid, _) in enumerate(rows)}
        text = locs_file.read_text(encoding="utf-8")
        try:
            table = np.array(text.split(), dtype=np.float64).reshape(-1, 5)
        except ValueError:
            raise UserError(f"{locs_file}: every line needs 5 numbers (image_id part_id x y visible)") from None
        locs = np.zeros((max_id + 1, len(names), 3), np.float32)  # indexed by CUB image id
        for image_id, part_id, x, y, visible in table:
            k = part_index.get(int(part_id))
            if k is None or not 0 < image_id <= max_id:
                raise UserError(f"{locs_file}: unknown image {int(image_id)} or part {int(part_id)}")
            locs[int(image_id), k] = (x, y, 1.0 if visible > 0 else 0.0)
        return names, locs

    # --- the dataset protocol ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image_id, path, label = self.samples[index]
        try:
            image = load_image(path)
        except BadImageError as exc:
            return {"error": exc.reason, "path": path, "index": int(index)}
        box = self._boxes.get(image_id)
        x, y, w, h = box if box is not None else (0.0, 0.0, float(image.width), float(image.height))
        parts = self._parts[image_id].copy() if self._parts is not None else None
        if self.crop == "bbox":
            x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
            x1, y1 = min(image.width, math.ceil(x + w)), min(image.height, math.ceil(y + h))
            if x1 <= x0 or y1 <= y0:
                return {"error": f"bounding box {(x, y, w, h)} lies outside the {image.width}x{image.height} image",
                        "path": path, "index": int(index)}
            image = image.crop((x0, y0, x1, y1))
            x, y = x - x0, y - y0
            if parts is not None:
                parts[:, 0] -= x0
                parts[:, 1] -= y0
                outside = (parts[:, 0] < 0) | (parts[:, 0] > image.width) | (parts[:, 1] < 0) | \
                    (parts[:, 1] > image.height)
                parts[outside, 2] = 0.0
        img, _, geo = run_transform(self.transform, image, None, sample_generator(self.seed, self.epoch, index))
        item: Dict[str, Any] = {"image": img, "label": int(label), "index": int(index), "path": path,
                                "image_id": int(image_id)}
        if geo is None:
            return item
        if box is not None:
            item["bbox"] = geo.map_boxes([[x, y, w, h]])[0]
        if parts is not None:
            xy, inside = geo.map_points(parts[:, :2])
            visible = torch.from_numpy(parts[:, 2] > 0) & inside
            out = torch.zeros(len(parts), 3)
            out[visible, :2] = xy[visible]
            out[:, 2] = visible.float()
            item["parts"] = out[self._flip_order] if geo.flip else out
        return item

    # --- views ------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def targets(self) -> List[int]:
        return [label for _, _, label in self.samples]

    @property
    def image_ids(self) -> List[int]:
        return [i for i, _, _ in self.samples]


def _attribute_names_file(root: Path, given: Path) -> Path:
    # The official archive ships attributes.txt beside CUB_200_2011/; some copies move it inside.
    for candidate in (root / "attributes.txt", root / "attributes" / "attributes.txt", given / "attributes.txt",
                      root.parent / "attributes.txt"):
        if candidate.is_file():
            return candidate
    raise UserError(f"CUB attribute names not found: looked for attributes.txt in {root}, {root / 'attributes'} "
                    f"and {root.parent}")


def load_cub_attributes(root: PathLike, with_certainty: bool = False):
    """Attribute names and the per-image binary matrix (images in ``images.txt`` id order × attributes, uint8).

    With ``with_certainty`` a third array gives CUB's certainty id (1 not visible … 4 definitely; 0 unknown).
    ``image_attribute_labels.txt`` has a few malformed lines in the official release (extra fields); only the
    first four fields of a line are used, and lines without three integers are skipped.
    """
    given = Path(root)
    r = find_cub_root(given)
    image_ids = sorted(_int(r / "images.txt", i) for i, _ in _rows(r / "images.txt", 2, split_rest=True))
    row_of = {image_id: k for k, image_id in enumerate(image_ids)}
    names_file = _attribute_names_file(r, given)
    attr_rows = sorted((_int(names_file, a), n.strip()) for a, n in _rows(names_file, 2, split_rest=True))
    names = [n for _, n in attr_rows]
    col_of = {aid: k for k, (aid, _) in enumerate(attr_rows)}

    labels_file = r / "attributes" / "image_attribute_labels.txt"
    if not labels_file.is_file():
        raise UserError(f"CUB file missing: {labels_file}")
    present = np.zeros((len(image_ids), len(names)), np.uint8)
    certainty = np.zeros((len(image_ids), len(names)), np.uint8)
    for line in labels_file.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        try:
            image_id, attr_id, is_present = (int(v) for v in fields[:3])
        except ValueError:  # fewer than three fields, or not integers
            continue
        if image_id not in row_of or attr_id not in col_of:
            continue
        k, a = row_of[image_id], col_of[attr_id]
        present[k, a] = 1 if is_present > 0 else 0
        if len(fields) >= 4 and fields[3].isdigit():
            certainty[k, a] = int(fields[3])
    if with_certainty:
        return names, present, certainty
    return names, present
