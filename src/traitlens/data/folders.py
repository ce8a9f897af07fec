"""ImageFolder collections: any ``<root>[/<split>]/<class>/<image>`` tree, with an optional mask tree.

The sample list is built from file names alone (no image is opened until it is asked for). A file that cannot
be read does not stop a run: its item comes back as ``{"error": reason, "path": ..., "index": ...}`` and
:func:`collate` drops it from the batch, listing it in ``batch["skipped"]`` for the caller's
:class:`~traitlens.data.imageio.SkippedFiles`.
"""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from traitlens.data.imageio import SkippedFiles, load_image, load_mask, special_file_kind
from traitlens.data.transforms import Geometry, is_joint, resize_mask, run_transform, sample_generator
from traitlens.errors import BadImageError, UserError

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                              ".pgm", ".pbm", ".jfif"})
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
