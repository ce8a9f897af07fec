"""Readers for published trait-mask collections, from local paths (nothing is downloaded).

- **Cambridge Heliconius butterfly masks**: PNG label maps with one id per trait, and ``train``/``test``
  JSON lists of image id and URL. :func:`heliconius` accepts the lists as ``[{"id": ..., "url": ...}]``
  (``image_id``/``name`` and ``image_url``/``file`` are accepted too) or as ``[[id, url], ...]``; the image
  is found locally as ``images/<id>.<ext>`` or by the URL's file name, the mask as ``masks/<id>.png``.
- **NEON beetle part annotations**: :func:`neon_beetles` reads ``images/<name>.<ext>`` with part label
  maps ``masks/<name>.png`` (or ``annotations/``), and names the parts from ``parts.json`` / ``classes.txt``
  when present.

Both return :class:`TraitMaskRecord` lists; :class:`TraitMaskDataset` turns them into the package's
sample dicts (``image`` 3×H×W float in [0, 1], ``mask`` H×W long, ``label`` 0, ``index``, ``path``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union
from urllib.parse import urlparse

import numpy as np
import torch

from traitlens.data.folders import IMAGE_EXTENSIONS
from traitlens.data.imageio import load_image, load_mask
from traitlens.errors import UserError

PathLike = Union[str, Path]


@dataclass
class TraitMaskRecord:
    id: str
    image: Path
    mask: Optional[Path]
    url: Optional[str] = None


def _find_image(folder: Path, stem: str, url: Optional[str]) -> Optional[Path]:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    if url:
        name = Path(urlparse(url).path).name
        if name and (folder / name).is_file():
            return folder / name
    return None


def _entries(path: Path) -> List[Dict[str, Optional[str]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON list ({exc})") from None
    if isinstance(data, dict):  # {"images": [...]} or {id: url}
        data = data.get("images", data.get("data", [{"id": k, "url": v} for k, v in data.items()]))
    out = []
    for item in data:
        if isinstance(item, (list, tuple)) and item:
            out.append({"id": str(item[0]), "url": str(item[1]) if len(item) > 1 else None})
        elif isinstance(item, dict):
            ident = item.get("id", item.get("image_id", item.get("name")))
            if ident is None:
                raise UserError(f"{path}: an entry has no id (expected id / image_id / name): {item}")
            out.append({"id": str(ident), "url": item.get("url", item.get("image_url", item.get("file")))})
        else:
            out.append({"id": str(item), "url": None})
    return out


def heliconius(root: PathLike, split: str = "train", images: str = "images", masks: str = "masks",
               require_mask: bool = True) -> List[TraitMaskRecord]:
    """The Cambridge Heliconius masks under ``root``: ``<split>.json`` + ``images/`` + ``masks/``.

    Entries whose image is not on disk are an error naming the first missing id (download them first);
    ``require_mask=False`` keeps images without a mask (``mask=None``: queries to segment).
    """
    root = Path(root)
    lists = [root / f"{split}.json", root / f"{split}_list.json", root / f"{split}_images.json"]
    listing = next((p for p in lists if p.is_file()), None)
    if listing is None:
        raise UserError(f"{root}: no {split}.json list of image ids and URLs")
    records, missing = [], []
    for entry in _entries(listing):
        stem = Path(entry["id"]).stem
        image = _find_image(root / images, stem, entry["url"])
        if image is None:
            missing.append(entry["id"])
            continue
        mask = root / masks / f"{stem}.png"
        if not mask.is_file():
            if require_mask:
                raise UserError(f"{root / masks}: no mask {stem}.png for image {entry['id']}")
            mask = None
        records.append(TraitMaskRecord(entry["id"], image, mask, entry["url"]))
    if missing:
        raise UserError(f"{root / images}: {len(missing)} image(s) of {listing.name} are not on disk "
                        f"(first: {missing[0]}); download them from the URLs in the list first")
    return records


def neon_beetles(root: PathLike, images: str = "images",
                 masks: Sequence[str] = ("masks", "annotations")) -> List[TraitMaskRecord]:
    """NEON beetle images with part label maps: ``images/<name>.<ext>`` and ``masks/<name>.png``."""
    root = Path(root)
    image_dir = root / images
    if not image_dir.is_dir():
        raise UserError(f"{root}: no {images}/ folder")
    mask_dir = next((root / m for m in masks if (root / m).is_dir()), None)
    if mask_dir is None:
        raise UserError(f"{root}: no {' or '.join(m + '/' for m in masks)} folder of part label maps")
    records = []
    for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        rel = image.relative_to(image_dir).with_suffix(".png")
        mask = mask_dir / rel
        records.append(TraitMaskRecord(rel.with_suffix("").as_posix(), image, mask if mask.is_file() else None))
    if not records:
        raise UserError(f"{image_dir}: no images")
    return records


def part_names(root: PathLike) -> Dict[int, str]:
    """Part names by id from ``parts.json`` (``{"1": "pronotum", ...}`` or a list) or ``classes.txt``."""
    root = Path(root)
    if (root / "parts.json").is_file():
        data = json.loads((root / "parts.json").read_text())
        if isinstance(data, list):
            return {i: str(n) for i, n in enumerate(data)}
        return {int(k): str(v) for k, v in data.items()}
    if (root / "classes.txt").is_file():
        lines = [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
        return {i: n for i, n in enumerate(lines)}
    return {}


class TraitMaskDataset(torch.utils.data.Dataset):
    """Records as sample dicts: ``image`` 3×H×W float in [0, 1], ``mask`` H×W long (when present)."""

    def __init__(self, records: Sequence[TraitMaskRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = np.array(load_image(rec.image), dtype=np.uint8)
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).float() / 255, "label": 0, "index": index,
                  "path": str(rec.image)}
        if rec.mask is not None:
            mask = load_mask(rec.mask)
            if mask.shape != image.shape[:2]:
                raise UserError(f"{rec.mask}: mask size {mask.shape[::-1]} differs from image {image.shape[1::-1]}")
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))
        return sample
