"""ImageFolder collections: any ``<root>[/<split>]/<class>/<image>`` tree, with an optional mask tree, and
the collection layouts every ``--data`` accepts (:func:`collection_layout`, :func:`open_collection_split`).

``--data`` may be

- a **split tree** ``DIR/{train,val,test}/<class>/<image>`` (the synthetic collection's layout), read as is;
- a folder with a **split file** ``DIR/split.json`` (written by ``traitlens data split``, see :func:`write_split`);
- a **CUB-200-2011** root (``images.txt`` there or in ``CUB_200_2011/``): the official train/test split, and a
  validation split carved from train by the seeded rule below;
- an **unsplit tree** ``DIR/<class>/<image>``: split by the seeded rule below.

The seeded rule (:func:`seeded_split`), the same every time for the same files and seed: within each class,
images are ordered by ``sha256("<seed>:<path below DIR>")`` and the first ``n × test`` (rounded half up) go
to test, the next ``n × val`` to val (at least one each while two images are left for train), the rest to train;
defaults val 0.15 and test 0.15 (CUB: val 0.1 of each class's official train images; its test is official).
An image's split depends only on its own path and the seed, not on the order files are listed. Whatever was
used is recorded: ``traitlens data split`` writes it to ``split.json``, and a training run copies it into its
run folder (``split.json``).

The sample list is built from file names alone (no image is opened until it is asked for). A file that cannot
be read does not stop a run: its item comes back as ``{"error": reason, "path": ..., "index": ...}`` and
:func:`collate` drops it from the batch, listing it in ``batch["skipped"]`` for the caller's
:class:`~traitlens.data.imageio.SkippedFiles`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from traitlens.data.imageio import RAW_EXTENSIONS, SkippedFiles, load_image, load_mask, special_file_kind
from traitlens.data.transforms import Geometry, is_joint, resize_mask, run_transform, sample_generator
from traitlens.errors import BadImageError, UserError

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm", ".jfif"}) | RAW_EXTENSIONS
MASK_SUFFIX = ".png"


def find_images(root: PathLike, recursive: bool = True, skipped: Optional[SkippedFiles] = None) -> List[Path]:
    """Image files under ``root`` (extensions matched case-insensitively, hidden files and folders skipped),
    sorted by their path relative to ``root``.

    Symbolic links are followed, but each real folder is walked once and each real file listed once (by
    ``(st_dev, st_ino)``), so a link loop (``loop -> .``) adds nothing. Special files with an image name (FIFO,
    socket, device: opening one can block forever) and broken links are left out, and listed in ``skipped``
    when one is given.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    found: List[Path] = []
    seen_dirs, seen_files = set(), set()

    def visit(folder: Path) -> None:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if skipped is not None:
                skipped.add(folder, f"folder cannot be listed ({exc.strerror})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                st = entry.stat()  # follows links
            except OSError:
                if skipped is not None and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    skipped.add(path, "broken link or unreadable entry")
                continue
            if stat.S_ISDIR(st.st_mode):
                if recursive:
                    visit(path)
                continue
            if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            key = file_identity(path, st, skipped)
            if key is not None and key not in seen_files:
                seen_files.add(key)
                found.append(path)

    visit(root)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def file_identity(path: Path, st: os.stat_result, skipped: Optional[SkippedFiles] = None) -> Optional[tuple]:
    """``(st_dev, st_ino)`` of a regular file (two names of one file share it); None for a special file
    (FIFO, socket, device), which is listed in ``skipped`` when one is given."""
    kind = special_file_kind(st.st_mode)
    if kind is None:
        return st.st_dev, st.st_ino
    if skipped is not None:
        skipped.add(path, f"is {kind}, not an image file")
    return None


def collate(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack sample dicts into a batch, dropping failed items.

    Tensors are stacked (``image`` B×3×H×W, ``mask`` B×H×W, ``bbox`` B×4, ...), ints become a LongTensor
    (``label``, ``index``), everything else a list (``path``). ``batch["skipped"]`` lists the ``(path, reason)``
    of every dropped item (empty when none). A batch in which every item failed has ``path == []`` and no
    ``image``; callers skip it.
    """
    good = [b for b in batch if "error" not in b]
    out: Dict[str, Any] = {"skipped": [(b["path"], b["error"]) for b in batch if "error" in b]}
    if not good:
        out.update({"label": torch.zeros(0, dtype=torch.long), "index": torch.zeros(0, dtype=torch.long),
                    "path": []})
        return out
    keys = [k for k in good[0] if all(k in b for b in good)]
    for key in keys:
        values = [b[key] for b in good]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of ``<root>[/<split>]/<class>/**/<image>``; labels follow ``classes`` (default: sorted folders).

    ``masks``: ``"auto"`` uses ``<root>/masks[/<split>]/<class>/<stem>.png`` when that folder exists (the
    synthetic collection's layout); a path names the mask tree (``<path>[/<split>]/<class>/<stem>.png``);
    ``None`` ignores masks. When masks are used, every image must have one.

    Items: ``{"image": 3×H×W float, "label": int, "index": int, "path": str, "mask": H×W long}`` (mask only
    with masks), or ``{"error": reason, "path", "index"}`` for an unreadable file. Training augmentation is
    seeded by (``seed``, epoch, index): call :meth:`set_epoch` at the start of every epoch.

    ``max_size`` caps the longest side of each decoded image (large JPEGs are decoded at a reduced scale, see
    :func:`~traitlens.data.imageio.load_image`); masks then follow by nearest neighbour, ids unchanged.
    """

    def __init__(self, root: PathLike, split: Optional[str] = None, transform=None,
                 classes: Optional[Sequence[str]] = None, masks: Union[str, PathLike, None] = "auto",
                 seed: int = 0, max_size: Optional[int] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset folder not found: {self.root}")
        self.split = split
        self.image_root = self.root / split if split else self.root
        if not self.image_root.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise UserError(f"split folder not found: {self.image_root} (folders there: {', '.join(present) or 'none'})")
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.max_size = max_size

        mask_root = self._mask_root(masks)
        if classes is None:
            classes = sorted(p.name for p in self.image_root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if split is None and masks is not None:
                classes = [c for c in classes if c != "masks"]  # the mask tree lives beside the class folders
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise UserError(f"class list has duplicates: {classes}")
        if not classes:
            raise UserError(f"no class folders in {self.image_root} (expected <class>/<image> sub-folders)")
        self._classes = classes

        samples: List[Tuple[str, int, Optional[str]]] = []
        for label, name in enumerate(classes):
            class_dir = self.image_root / name
            if not class_dir.is_dir():
                continue  # a class absent from this split keeps its label (val/test share train's order)
            for path in find_images(class_dir):
                samples.append((str(path), label, None))
        if not samples:
            raise UserError(f"no images found under {self.image_root} for classes {classes[:5]}"
                            f"{'...' if len(classes) > 5 else ''}")
        if mask_root is not None:
            samples = self._attach_masks(samples, mask_root, explicit=masks != "auto")
        self.samples = samples
        self.mask_root = mask_root if samples and samples[0][2] is not None else None

    # --- construction helpers -------------------------------------------------------------------------
    def _mask_root(self, masks) -> Optional[Path]:
        if masks is None:
            return None
        if isinstance(masks, str) and masks == "auto":
            candidate = self.root / "masks" / self.split if self.split else self.root / "masks"
            if not candidate.is_dir():
                return None
            if self.transform is not None and not is_joint(self.transform):
                return None  # an image-only transform cannot keep masks aligned: leave them out
            return candidate
        path = Path(masks)
        if not path.is_dir():
            raise UserError(f"mask folder not found: {path}")
        if self.transform is not None and not is_joint(self.transform):
            raise UserError("masks need a joint transform (SpecimenTransform, or a callable taking "
                            "image, mask=, generator=); the given transform only takes an image")
        if self.split and (path / self.split).is_dir():
            path = path / self.split
        return path

    def _attach_masks(self, samples, mask_root: Path, explicit: bool):
        existing = {p.relative_to(mask_root).with_suffix("").as_posix(): p
                    for p in find_images(mask_root) if p.suffix.lower() == MASK_SUFFIX}
        out, missing = [], []
        for path, label, _ in samples:
            key = Path(path).relative_to(self.image_root).with_suffix("").as_posix()
            mask = existing.get(key)
            if mask is None:
                missing.append(path)
            out.append((path, label, None if mask is None else str(mask)))
        if missing:
            hint = "" if explicit else "; pass masks=None to ignore masks"
            raise UserError(f"{len(missing)} of {len(samples)} images have no mask in {mask_root} "
                            f"(first: {missing[0]}){hint}")
        return out

    # --- the dataset protocol ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws (seeded by seed, epoch, index)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path, label, mask_path = self.samples[index]
        try:
            image = load_image(path, max_size=self.max_size)
            mask = load_mask(mask_path) if mask_path is not None else None
            if mask is not None and mask.shape != (image.height, image.width):
                mask = self._fit_mask(mask, image, mask_path)
        except BadImageError as exc:
            return {"error": exc.reason if exc.path == path else f"{exc.path}: {exc.reason}",
                    "path": path, "index": int(index)}
        img, m, _ = run_transform(self.transform, image, mask,
                                  sample_generator(self.seed, self.epoch, index))
        item = {"image": img, "label": int(label), "index": int(index), "path": path}
        if m is not None:
            item["mask"] = m
        return item

    def _fit_mask(self, mask: np.ndarray, image, mask_path: str) -> np.ndarray:
        """A full-size mask of an image that ``max_size`` reduced: nearest-resize it; anything else is an error."""
        h, w = mask.shape
        reduced = (self.max_size is not None and max(h, w) > self.max_size
                   and abs(h / w - image.height / image.width) <= 0.02 * h / w)
        if not reduced:
            raise BadImageError(mask_path, f"mask is {w}x{h} but its image is {image.width}x{image.height}")
        geo = Geometry(0, 0, w, h, image.height, image.width)
        return resize_mask(torch.from_numpy(mask.astype(np.int64)), geo).numpy()

    # --- views ------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        return list(self._classes)

    @property
    def classes(self) -> List[str]:
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def targets(self) -> List[int]:
        return [label for _, label, _ in self.samples]

    @property
    def has_masks(self) -> bool:
        return bool(self.samples) and self.samples[0][2] is not None

    def subset(self, classes: Sequence[str]) -> "ImageFolderDataset":
        """A view with only ``classes`` (labels renumbered in the given order); same transform, seed, epoch."""
        classes = [str(c) for c in classes]
        unknown = [c for c in classes if c not in self._classes]
        if unknown:
            raise UserError(f"unknown classes {unknown} (dataset has {len(self._classes)}: "
                            f"{', '.join(self._classes[:10])}{'...' if len(self._classes) > 10 else ''})")
        remap = {self._classes.index(c): i for i, c in enumerate(classes)}
        view = copy.copy(self)
        view._classes = classes
        view.samples = [(p, remap[label], m) for p, label, m in self.samples if label in remap]
        return view

    @classmethod
    def from_samples(cls, root: PathLike, image_root: PathLike, samples: Sequence[Tuple[str, int]],
                     classes: Sequence[str], split: Optional[str] = None, transform=None,
                     masks: Union[str, PathLike, None] = "auto", seed: int = 0,
                     max_size: Optional[int] = None) -> "ImageFolderDataset":
        """A dataset of listed ``(image path, label)`` samples (a split file's or CUB's), with the folder
        dataset's items, masks (``masks="auto"``: ``<root>/masks/<path below image_root>.png`` when that folder
        exists) and augmentation seeding."""
        self = cls.__new__(cls)
        self.root, self.image_root, self.split = Path(root), Path(image_root), split
        self.transform, self.seed, self.epoch, self.max_size = transform, int(seed), 0, max_size
        self._classes = [str(c) for c in classes]
        listed = [(str(p), int(label), None) for p, label in samples]
        if not listed:
            raise UserError(f"no images in split {split!r} of {self.root}")
        mask_root = None
        if masks is not None:
            mask_root = Path(masks) if not (isinstance(masks, str) and masks == "auto") else self.root / "masks"
            if not mask_root.is_dir():
                if masks != "auto":
                    raise UserError(f"mask folder not found: {mask_root}")
                mask_root = None
            elif self.transform is not None and not is_joint(self.transform):
                if masks != "auto":
                    raise UserError("masks need a joint transform (SpecimenTransform, or a callable taking "
                                    "image, mask=, generator=); the given transform only takes an image")
                mask_root = None
        if mask_root is not None:
            listed = self._attach_masks(listed, mask_root, explicit=masks != "auto")
        self.samples = listed
        self.mask_root = mask_root
        return self


# ------------------------------------------------------------------------------------------------------------
# Collection layouts: what a --data folder is, and its splits

SPLIT_FILE = "split.json"
SPLIT_FORMAT = "traitlens-split"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_VAL, DEFAULT_TEST, CUB_VAL = 0.15, 0.15, 0.1


def collection_layout(root: PathLike) -> str:
    """``"splits"`` (``train/``, ``val/`` or ``test/`` folders), ``"split-file"`` (``split.json``), ``"cub"``
    (CUB-200-2011) or ``"classes"`` (an unsplit ``<class>/<image>`` tree); UserError for anything else."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root} is not a folder")
    if any((root / s).is_dir() for s in SPLIT_NAMES):
        return "splits"
    if (root / SPLIT_FILE).is_file():
        return "split-file"
    if (root / "images.txt").is_file() or (root / "CUB_200_2011" / "images.txt").is_file():
        return "cub"
    classes = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name != "masks"]
    if classes and any(find_images(c) for c in classes):
        return "classes"
    raise UserError(f"{root}: not a collection: expected train/ val/ test/ split folders, a {SPLIT_FILE} "
                    "(traitlens data split), a CUB-200-2011 folder (images.txt) or <class>/<image> folders")


def _rank(seed: int, rel: str) -> str:
    return hashlib.sha256(f"{int(seed)}:{rel}".encode("utf-8")).hexdigest()


def seeded_split(items: Sequence[Tuple[str, int]], val: float, test: float, seed: int
                 ) -> Dict[str, List[Tuple[str, int]]]:
    """``(path below the root, label)`` items → ``{"train", "val", "test"}`` by the module's seeded rule."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UserError(f"split fractions val {val} and test {test} must be in [0, 1) with val + test < 1")
    by_class: Dict[int, List[Tuple[str, int]]] = {}
    for rel, label in items:
        by_class.setdefault(int(label), []).append((rel, int(label)))
    out: Dict[str, List[Tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda it: _rank(seed, it[0]))
        n = len(members)
        n_test = max(int(n * test + 0.5), 1 if test > 0 and n >= 3 else 0)  # rounded half up
        n_val = max(int(n * val + 0.5), 1 if val > 0 and n - n_test >= 3 else 0)
        n_test, n_val = min(n_test, max(n - 1, 0)), min(n_val, max(n - n_test - 1, 0))  # keep one for train
        out["test"] += members[:n_test]
        out["val"] += members[n_test:n_test + n_val]
        out["train"] += members[n_test + n_val:]
    for name in out:
        out[name].sort()
    return out


def _rule_text(layout: str, val: float, test: float, seed: int) -> str:
    if layout == "cub":
        return (f"CUB-200-2011 official train/test (train_test_split.txt); val: {val:g} of each class's train "
                f"images, the first by sha256('{seed}:<path>')")
    return (f"per class, images ordered by sha256('{seed}:<path>'): the first {test:g} test, the next {val:g} "
            "val, the rest train")


def make_split(root: PathLike, seed: int = 0, val: Optional[float] = None, test: Optional[float] = None) -> dict:
    """The split definition of a CUB root or an unsplit ``<class>/<image>`` tree (what ``split.json`` holds):
    ``{"format", "version", "layout", "seed", "val", "test", "rule", "classes", "splits": {name: [[path below
    root, label], ...]}}``."""
    from traitlens.data.cub import cub_items, find_cub_root

    root = Path(root)
    layout = collection_layout(root)
    if layout in ("splits", "split-file"):
        what = "split folders" if layout == "splits" else f"a {SPLIT_FILE}"
        raise UserError(f"{root} already has {what}; nothing to split (delete {root / SPLIT_FILE} to make a new one)"
                        if layout == "split-file" else f"{root} already has {what}; nothing to split")
    if layout == "cub":
        cub = find_cub_root(root)
        val = CUB_VAL if val is None else float(val)
        classes, train, test_items = cub_items(cub)
        prefix = cub.relative_to(root).as_posix() + "/" if cub != root else ""
        train = [(prefix + rel, label) for rel, label in train]
        carved = seeded_split(train, val, 0.0, seed)
        splits = {"train": carved["train"], "val": carved["val"],
                  "test": sorted((prefix + rel, label) for rel, label in test_items)}
        test = None
    else:
        val = DEFAULT_VAL if val is None else float(val)
        test = DEFAULT_TEST if test is None else float(test)
        classes = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                   and p.name != "masks"]
        items = [(img.relative_to(root).as_posix(), label) for label, name in enumerate(classes)
                 for img in find_images(root / name)]
        splits = seeded_split(items, val, test, seed)
    return {"format": SPLIT_FORMAT, "version": 1, "layout": layout, "seed": int(seed), "val": val, "test": test,
            "rule": _rule_text(layout, val, test if test is not None else 0.0, seed), "classes": classes,
            "splits": {k: [[rel, label] for rel, label in v] for k, v in splits.items()}}


def write_split(root: PathLike, out: Optional[PathLike] = None, **options) -> Path:
    """Write :func:`make_split` of ``root`` to ``out`` (default ``root/split.json``), whole or not at all."""
    definition = make_split(root, **options)
    return write_split_definition(definition, Path(out) if out is not None else Path(root) / SPLIT_FILE)


def write_split_definition(definition: dict, out: PathLike) -> Path:
    """Write a split definition to ``out`` (a temporary file renamed into place)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(definition, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def read_split(path: PathLike) -> dict:
    """A split file written by :func:`write_split`, checked (UserError naming the file when it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable split file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT or not isinstance(data.get("splits"), dict):
        raise UserError(f"{path}: not a traitlens split file (write one with `traitlens data split DIR`)")
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{path}: the split file lists no classes")
    for name, rows in data["splits"].items():
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                                                 and isinstance(r[1], int) and 0 <= r[1] < len(classes)
                                                 for r in rows):
            raise UserError(f"{path}: split {name!r} must be a list of [path, class index] pairs")
    return data


_RESOLVED: Dict[Tuple[str, int], dict] = {}


def resolve_split(root: PathLike, seed: int = 0) -> Optional[dict]:
    """The split definition ``--data root`` stands for: None for split folders (read as they are), the
    ``split.json`` there, or the seeded rule's split of a CUB root or an unsplit tree (computed once a process,
    and logged once with how to write it down)."""
    root = Path(root)
    layout = collection_layout(root)
    if layout == "splits":
        return None
    if layout == "split-file":
        return read_split(root / SPLIT_FILE)
    key = (str(root.resolve()), int(seed))
    if key not in _RESOLVED:
        from traitlens.progress import log

        definition = make_split(root, seed=seed)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in definition["splits"].items())
        log(f"{root}: {'CUB-200-2011' if layout == 'cub' else 'unsplit class folders'}, split by the seeded rule "
            f"({definition['rule']}): {sizes}; `traitlens data split {root}` writes it to {root / SPLIT_FILE}")
        _RESOLVED[key] = definition
    return _RESOLVED[key]


def has_split(root: PathLike, split: str) -> bool:
    """Whether ``--data root`` has a (non-empty) split ``split``."""
    definition = resolve_split(root)
    if definition is None:
        return (Path(root) / split).is_dir()
    return bool(definition["splits"].get(split))


def collection_classes(root: PathLike, split: str) -> List[str]:
    """The class names of split ``split`` of ``--data root``: its folders, or the split definition's classes."""
    definition = resolve_split(root)
    if definition is None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise UserError(f"split {split!r} not found: {folder} is not a folder")
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not definition["splits"].get(split):
        raise UserError(f"split {split!r} not found in {root} (it has {', '.join(definition['splits'])})")
    return list(definition["classes"])


def open_collection_split(root: PathLike, split: str, transform=None, classes: Optional[Sequence[str]] = None,
                          masks: Union[str, PathLike, None] = None, seed: int = 0,
                          max_size: Optional[int] = None) -> ImageFolderDataset:
    """Split ``split`` of ``--data root`` as an :class:`ImageFolderDataset`, whatever its layout; labels in
    ``classes`` order (default: the collection's). A split tree is read exactly as ``ImageFolderDataset(root,
    split=split, ...)`` reads it; the others through their split definition, which the dataset carries as
    ``split_definition`` (written into a training run's folder)."""
    definition = resolve_split(root)
    if definition is None:
        return ImageFolderDataset(root, split=split, transform=transform, classes=classes, masks=masks, seed=seed,
                                  max_size=max_size)
    root = Path(root)
    rows = definition["splits"].get(split)
    if not rows:
        raise UserError(f"split {split!r} not found in {root} (it has {', '.join(definition['splits'])})")
    own = list(definition["classes"])
    names = [str(c) for c in classes] if classes is not None else own
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({own[label] for _, label in rows if own[label] not in index})
    if unknown:
        raise UserError(f"{root} ({split}) has class(es) the model does not know: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''}")
    samples = [(str(root / rel), index[own[label]]) for rel, label in rows]
    absent = [p for p, _ in samples if not os.path.exists(p)]
    if absent:
        raise UserError(f"{len(absent)} of {len(samples)} images of split {split!r} listed for {root} are missing "
                        f"(first: {absent[0]}); make the split again (traitlens data split {root})")
    image_root = root
    if definition.get("layout") == "cub":
        from traitlens.data.cub import find_cub_root

        image_root = find_cub_root(root) / "images"
    dataset = ImageFolderDataset.from_samples(root, image_root, samples, names, split=split, transform=transform,
                                              masks=masks if definition.get("layout") != "cub" else None,
                                              seed=seed, max_size=max_size)
    dataset.split_definition = definition
    return dataset


def describe_collection(root: PathLike) -> dict:
    """``{"path", "layout", "images": {split: count}, "species", "class_names", "formats": {ext: count},
    "split_rule"?}`` of any ``--data`` folder; images of every format the readers read are counted."""
    root = Path(root)
    layout = collection_layout(root)
    info: Dict[str, Any] = {"path": str(root), "layout": layout}
    formats: Dict[str, int] = {}
    if layout == "splits":
        counts, classes = {}, set()
        for split in SPLIT_NAMES:
            folder = root / split
            if folder.is_dir():
                files = find_images(folder)
                counts[split] = len(files)
                classes |= {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
                for f in files:
                    formats[f.suffix.lower()] = formats.get(f.suffix.lower(), 0) + 1
        names = sorted(classes)
    else:
        definition = resolve_split(root)
        counts = {k: len(v) for k, v in definition["splits"].items()}
        names = list(definition["classes"])
        for rows in definition["splits"].values():
            for rel, _ in rows:
                ext = Path(rel).suffix.lower()
                formats[ext] = formats.get(ext, 0) + 1
        info["split_rule"] = definition["rule"]
        info["seed"] = definition["seed"]
    info.update(images=counts, species=len(names), class_names=names, formats=dict(sorted(formats.items())))
    return info
