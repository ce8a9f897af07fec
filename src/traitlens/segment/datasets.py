"""Readers for published trait-mask collections, from local paths (nothing is downloaded).

- **Cambridge Heliconius butterfly masks** (the SST release, ``data/cambridge_butterfly``): PNG label maps
  with one id per trait, and per-group ``train_test_separate/<group>/{train,test}_data.json`` lists whose
  entries are ``[image id, image URL, mask path]``. :func:`heliconius` reads that tree (all groups, or one
  with ``group=``), or a flat ``<split>.json``; entries may also be ``[id, url]`` pairs or dicts
  (``id``/``image_id``/``name``, ``url``/``image_url``/``file``, ``mask``/``mask_path``). Images are found
  locally as ``images/<id>.<ext>`` (how the release's download script names them), by the URL's file name,
  or in ``images/<group>/``; masks at the entry's mask path (relative to the root) or ``masks/<id>.png``.
- **NEON beetle part annotations** (the SST release, ``data/neon_beetles``: ``masks/<species>/<name>.png``,
  five parts, and a ``metadata.json`` of ``url``/``mask_path``/``species`` columns): :func:`neon_beetles`
  reads the metadata when present, else pairs ``images/<rel>.<ext>`` with ``masks/<rel>.png`` (or
  ``annotations/``), and names the parts from ``parts.json`` / ``classes.txt`` when present.

Both return :class:`TraitMaskRecord` lists; :class:`TraitMaskDataset` turns them into the package's
sample dicts (``image`` 3×H×W float in [0, 1], ``mask`` H×W long, ``label`` 0, ``index``, ``path``). A
mask stored at another resolution than its image (the NEON release does this) is resized to the image
with nearest-neighbour sampling, as the release's own demo does; a mask of another aspect ratio is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
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
            out.append({"id": str(item[0]), "url": str(item[1]) if len(item) > 1 and item[1] else None,
                        "mask": str(item[2]) if len(item) > 2 and item[2] else None})
        elif isinstance(item, dict):
            ident = item.get("id", item.get("image_id", item.get("name")))
            if ident is None:
                raise UserError(f"{path}: an entry has no id (expected id / image_id / name): {item}")
            out.append({"id": str(ident), "url": item.get("url", item.get("image_url", item.get("file"))),
                        "mask": item.get("mask", item.get("mask_path"))})
        else:
            out.append({"id": str(item), "url": None, "mask": None})
    return out


def _listings(root: Path, split: str, group: Optional[str]) -> List[Path]:
    flat = [root / f"{split}{suffix}.json" for suffix in ("", "_data", "_list", "_images")]
    found = [p for p in flat if p.is_file()][:1]
    tree = root / "train_test_separate"
    if tree.is_dir():
        groups = [tree / group] if group else sorted(p for p in tree.iterdir() if p.is_dir())
        found += [g / f"{split}_data.json" for g in groups if (g / f"{split}_data.json").is_file()]
    return found


def _mask_path(root: Path, listing: Path, masks: str, stem: str, given: Optional[str]) -> Path:
    if given:
        for base in (root, listing.parent, root / masks):
            if (base / given).is_file():
                return base / given
    return root / masks / f"{stem}.png"


def heliconius(root: PathLike, split: str = "train", images: str = "images", masks: str = "masks",
               require_mask: bool = True, group: Optional[str] = None,
               skipped: Optional[List[str]] = None) -> List[TraitMaskRecord]:
    """The Cambridge Heliconius masks under ``root`` (see the module doc for the layouts read).

    Entries whose image is not on disk are an error naming the first missing id (download them first), or,
    when a ``skipped`` list is given, left out, their ids appended to it and one line logged (a partly
    downloaded release);
    ``require_mask=False`` keeps images without a mask (``mask=None``: queries to segment).
    """
    root = Path(root)
    listings = _listings(root, split, group)
    if not listings:
        where = f"train_test_separate/{group or '*'}/{split}_data.json"
        raise UserError(f"{root}: no {split}.json or {where} list of image ids and URLs")
    records, missing, seen = [], [], set()
    for listing in listings:
        for entry in _entries(listing):
            if entry["id"] in seen:
                continue
            seen.add(entry["id"])
            stem = Path(entry["id"]).stem
            image = (_find_image(root / images, stem, entry["url"])
                     or _find_image(root / images / listing.parent.name, stem, entry["url"]))
            if image is None:
                missing.append(entry["id"])
                continue
            mask = _mask_path(root, listing, masks, stem, entry["mask"])
            if not mask.is_file():
                if require_mask:
                    raise UserError(f"{mask}: no mask for image {entry['id']} (listed in {listing})")
                mask = None
            records.append(TraitMaskRecord(entry["id"], image, mask, entry["url"]))
    if missing:
        _missing(f"{root / images}: {len(missing)} image(s) of {', '.join(p.name for p in listings)} are not on "
                 f"disk (first: {missing[0]})", "the list", missing, skipped)
    return records


def _missing(what: str, listing: str, ids: List[str], skipped: Optional[List[str]]) -> None:
    """Images a release lists but the disk lacks: an error, or (a ``skipped`` list given) collected and logged."""
    if skipped is None:
        raise UserError(f"{what}; download them from the URLs in {listing} first")
    from traitlens.progress import log

    skipped.extend(ids)
    log(f"{what}: skipped")


def neon_beetles(root: PathLike, images: str = "images", masks: Sequence[str] = ("masks", "annotations"),
                 skipped: Optional[List[str]] = None) -> List[TraitMaskRecord]:
    """NEON beetle images with part label maps: ``images/<name>.<ext>`` and ``masks/<name>.png``
    (or the release's ``metadata.json``; ``skipped`` as for :func:`heliconius`)."""
    root = Path(root)
    image_dir = root / images
    if not image_dir.is_dir():
        raise UserError(f"{root}: no {images}/ folder")
    if (root / "metadata.json").is_file():
        return _neon_from_metadata(root, image_dir, masks[0], skipped)
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


def _neon_from_metadata(root: Path, image_dir: Path, masks: str, skipped: Optional[List[str]] = None) -> List[TraitMaskRecord]:
    """``metadata.json``: columns ``url``, ``mask_path``, ``species`` (a dict of lists) or a list of rows."""
    try:
        data = json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{root / 'metadata.json'}: not readable JSON ({exc})") from None
    if isinstance(data, dict):
        n = len(data.get("mask_path", []))
        rows = [{k: v[i] for k, v in data.items() if isinstance(v, list) and len(v) == n} for i in range(n)]
    else:
        rows = list(data)
    records, missing = [], []
    for row in rows:
        given = row.get("mask_path") or ""
        species = str(row.get("species") or "")
        stem = Path(given).stem
        mask = next((p for p in (root / given, root / masks / species / Path(given).name) if given and p.is_file()),
                    None)
        image = (_find_image(image_dir / species, stem, row.get("url")) if species else None) \
            or _find_image(image_dir, stem, row.get("url"))
        if image is None:
            missing.append(stem or str(row.get("url")))
            continue
        records.append(TraitMaskRecord(f"{species}/{stem}" if species else stem, image, mask, row.get("url")))
    if missing:
        _missing(f"{image_dir}: {len(missing)} image(s) of metadata.json are not on disk (first: {missing[0]})",
                 "metadata.json", missing, skipped)
    if not records:
        raise UserError(f"{root / 'metadata.json'}: no entries")
    return records


DATASETS = ("heliconius", "neon-beetles")


def dataset_records(kind: str, root: PathLike, split: str = "test", group: Optional[str] = None,
                    require_mask: bool = False, skipped: Optional[List[str]] = None) -> List[TraitMaskRecord]:
    """The records of a published trait-mask release by name (``heliconius`` or ``neon-beetles``).

    ``split`` and ``group`` apply to the Heliconius lists; the NEON release has no splits.
    """
    if kind == "heliconius":
        return heliconius(root, split=split, require_mask=require_mask, group=group, skipped=skipped)
    if kind == "neon-beetles":
        records = neon_beetles(root, skipped=skipped)
        return [r for r in records if r.mask is not None] if require_mask else records
    raise UserError(f"unknown trait-mask dataset {kind!r}: use one of {', '.join(DATASETS)}")


def fit_mask(mask: np.ndarray, size: Tuple[int, int], path: PathLike) -> np.ndarray:
    """A label map resized (nearest) to the image's ``size`` (H, W), as the releases store masks at another
    resolution; a mask of another aspect ratio is an error naming ``path``."""
    if mask.shape == tuple(size):
        return mask
    (mh, mw), (ih, iw) = mask.shape, size
    if abs(mh / mw - ih / iw) > 0.02 * ih / iw:
        raise UserError(f"{path}: mask size {mw}×{mh} has another shape than image {iw}×{ih}")
    from PIL import Image

    return np.array(Image.fromarray(mask).resize((iw, ih), Image.NEAREST))


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
            mask = fit_mask(load_mask(rec.mask), image.shape[:2], rec.mask)
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))
        return sample


class NoSupportRecord(UserError):
    """A release holds no usable support record (none masked, none of the id asked for, or unreadable)."""


@dataclass
class ReleaseQueries:
    """What segmenting a release needs: supports (frame 3×H×W, labels H×W) and how summaries name them,
    the queries as ``(id, image file)`` pairs, their ground-truth masks by id, and the ids listed but not on disk."""

    supports: List[Tuple[torch.Tensor, torch.Tensor]]
    support_info: List[dict]
    queries: List[Tuple[str, Path]]
    gt: Dict[str, Path]
    missing: List[str]


def release_queries(kind: str, root: PathLike, split: str = "test", group: Optional[str] = None,
                    support_id: Optional[str] = None, supports=None, support_info=None) -> ReleaseQueries:
    """The queries of a release's ``split``, and its support unless ``supports`` are given: the record
    ``support_id``, else the first masked record (of the train list for Heliconius, of the release for NEON).
    The chosen support is not its own query. UserError when there is no usable support or no query."""
    from traitlens.errors import BadImageError
    from traitlens.segment.support import check_labels

    missing: List[str] = []
    records = dataset_records(kind, root, split=split, group=group, skipped=missing)
    if supports is None:
        pool = records if kind != "heliconius" else dataset_records(kind, root, split="train", group=group,
                                                                    skipped=[])
        masked = [r for r in pool if r.mask is not None and (support_id is None or r.id == support_id)]
        if not masked:
            which = f"record {support_id!r}" if support_id else "record"
            raise NoSupportRecord(f"{root}: no masked {which} to use as the support")
        chosen = masked[0]
        try:
            sample = TraitMaskDataset([chosen])[0]
        except BadImageError as exc:
            raise NoSupportRecord(f"support {chosen.id}: {exc.path}: {exc.reason}") from None
        check_labels(sample["mask"], str(chosen.mask))
        supports = [(sample["image"], sample["mask"])]
        support_info = [{"image": str(chosen.image), "mask": str(chosen.mask), "id": chosen.id}]
        records = [r for r in records if r.image != chosen.image]  # the support is not its own query
    queries = [(f"{r.id}{r.image.suffix}", r.image) for r in records]
    if not queries:
        raise UserError(f"{root}: no images to segment in {kind} ({split})")
    gt = {qid: r.mask for (qid, _), r in zip(queries, records) if r.mask is not None}
    return ReleaseQueries(list(supports), list(support_info or []), queries, gt, missing)
