"""Readers for published trait-mask collections, from local paths (nothing is downloaded).

- **Cambridge Heliconius butterfly masks** (the SST release, ``data/cambridge_butterfly``): PNG label maps
  with one id per trait, and per-group ``train_test_separate/<group>/{train,test}_data.json`` lists whose
  entries are ``[image id, image URL, mask path]``; ``minor_species.json`` maps each minor species to such
  entries (plus a symmetry map, ignored) and is read with ``split="minor_species"`` (``group=`` picks one
  species). :func:`heliconius` reads that tree (all groups, or one with ``group=``), or a flat
  ``<split>.json``; entries may also be ``[id, url]`` pairs or dicts (``id``/``image_id``/``name``,
  ``url``/``image_url``/``file``, ``mask``/``mask_path``). Images are found locally as ``images/<id>.<ext>``
  (how the release's download script names them), by the URL's file name, or in ``images/<group>/``; masks at
  the entry's mask path (relative to the root) or ``masks/<id>.png``. About 28% of the release's URLs are
  Canon ``.CR2`` raw files: they are developed with ``rawpy`` (the ``raw`` extra) when it is installed, and
  otherwise skipped by name (each one listed in the run's ``skipped.jsonl``, their count logged).
- **NEON beetle part annotations** (the SST release, ``data/neon_beetles``: ``masks/<species>/<name>.png``,
  five parts, and a ``metadata.json`` of ``url``/``mask_path``/``species`` columns): :func:`neon_beetles`
  reads the metadata when present, else pairs ``images/<rel>.<ext>`` with ``masks/<rel>.png`` (or
  ``annotations/``), and names the parts from ``parts.json`` / ``classes.txt`` when present. An image is found
  under its URL's folder first (``images/<URL folder>/<file>``: 30 rows of the release have a ``species``
  that is not their URL's folder, ``melanarius`` / ``melanarius melanarius``), then under its species.

Both return :class:`TraitMaskRecord` lists; :class:`TraitMaskDataset` turns them into the package's
sample dicts (``image`` 3×H×W float in [0, 1], ``mask`` H×W long, ``label`` 0, ``index``, ``path``).

**Masks at another size than their image** (:func:`fit_mask`). Both releases store masks at their own
resolution (every Heliconius mask is 1024×1024, whatever its photo's shape), and their own readers
(``check_mask_image.py``, the NEON ``demo.py``) resize each mask to its image with nearest-neighbour sampling
*without keeping the aspect ratio*; traitlens does the same, so a 1024×1024 mask fits a 768×512 photo. Those
readers open photos without applying the EXIF orientation, so a mask describes the file's stored pixels:
traitlens resizes it to the stored size and then turns it with the photo's orientation (what
:func:`~traitlens.data.imageio.load_image` does to the photo), so it stays on the specimen of a camera-rotated
photo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlparse

import numpy as np
import torch

from traitlens.data.folders import IMAGE_EXTENSIONS
from traitlens.data.imageio import (RAW_EXTENSIONS, RAW_HINT, image_orientation, load_image, load_mask,
                                    orient_labels)
from traitlens.errors import BadImageError, UserError

PathLike = Union[str, Path]


@dataclass
class TraitMaskRecord:
    id: str
    image: Path
    mask: Optional[Path]
    url: Optional[str] = None


class _Folders:
    """The file names of each folder, listed once (a release lists thousands of images; probing every
    extension of every id with a stat each was most of the time spent)."""

    def __init__(self) -> None:
        self._names: Dict[Path, set] = {}

    def names(self, folder: Path) -> set:
        if folder not in self._names:
            try:
                self._names[folder] = {e.name for e in os.scandir(folder) if not e.is_dir()}
            except OSError:
                self._names[folder] = set()
        return self._names[folder]


_EXTENSIONS = sorted(IMAGE_EXTENSIONS)


def _find_image(folder: Path, stem: str, url: Optional[str], listed: Optional[_Folders] = None) -> Optional[Path]:
    names = (listed or _Folders()).names(folder)
    if not names:
        return None
    for ext in _EXTENSIONS:
        for candidate in (f"{stem}{ext}", f"{stem}{ext.upper()}"):
            if candidate in names:
                return folder / candidate
    name = _url_name(url)
    if name and name in names:
        return folder / name
    return None


def _url_name(url) -> str:
    """The file name a URL downloads to (percent-escapes decoded); '' for no URL."""
    if not isinstance(url, str) or not url:
        return ""
    return unquote(Path(urlparse(url).path).name)


def _url_folder(url) -> str:
    """The folder of a URL's file (``.../test/melanarius%20melanarius/x.png`` → ``melanarius melanarius``)."""
    if not isinstance(url, str) or not url:
        return ""
    parts = [unquote(p) for p in urlparse(url).path.split("/") if p]
    return parts[-2] if len(parts) >= 2 else ""


def _entry(item, path: Path, group: Optional[str] = None) -> Dict[str, Optional[str]]:
    if isinstance(item, (list, tuple)) and item:
        # [id, url, mask path, ...]: minor_species.json adds a symmetry map, not needed to read a mask.
        url = item[1] if len(item) > 1 and isinstance(item[1], str) and item[1] else None
        mask = item[2] if len(item) > 2 and isinstance(item[2], str) and item[2] else None
        return {"id": str(item[0]), "url": url, "mask": mask, "group": group}
    if isinstance(item, dict):
        ident = item.get("id", item.get("image_id", item.get("name")))
        if ident is None:
            raise UserError(f"{path}: an entry has no id (expected id / image_id / name): {item}")
        url = item.get("url", item.get("image_url", item.get("file")))
        mask = item.get("mask", item.get("mask_path"))
        return {"id": str(ident), "url": url if isinstance(url, str) else None,
                "mask": mask if isinstance(mask, str) else None, "group": group}
    return {"id": str(item), "url": None, "mask": None, "group": group}


def _entries(path: Path, group: Optional[str] = None) -> List[Dict[str, Optional[str]]]:
    """The entries of a listing. A dict of lists (``minor_species.json``: ``{species: [[id, url, mask, …]]}``)
    gives each entry its species as ``group``; ``group=`` keeps one species. A dict of strings is ``{id: url}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON list ({exc})") from None
    if isinstance(data, dict) and not ("images" in data or "data" in data):
        if data and all(isinstance(v, list) for v in data.values()):
            if group is not None and group not in data:
                names = sorted(data)
                raise UserError(f"{path}: no group {group!r} (it has {len(names)}: {', '.join(names[:8])}"
                                f"{' ...' if len(names) > 8 else ''})")
            return [_entry(item, path, name) for name, items in data.items() if group in (None, name)
                    for item in items]
        return [_entry({"id": k, "url": v}, path) for k, v in data.items()]
    if isinstance(data, dict):
        data = data.get("images", data.get("data"))
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of entries (or a dict of lists)")
    return [_entry(item, path) for item in data]


def _listings(root: Path, split: str, group: Optional[str]) -> List[Path]:
    flat = [root / f"{split}{suffix}.json" for suffix in ("", "_data", "_list", "_images")]
    flat += [root / "train_test_separate" / f"{split}.json"]
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

    ``split``: ``train``, ``test`` (the ``train_test_separate`` lists) or any ``<split>.json`` beside them,
    e.g. ``minor_species`` (``group=`` then names one species). Entries whose image is not on disk are an
    error naming the first missing id (download them first), or, when a ``skipped`` list is given, left out,
    their ids appended to it and one line logged (a partly downloaded release);
    ``require_mask=False`` keeps images without a mask (``mask=None``: queries to segment).
    """
    root = Path(root)
    listings = _listings(root, split, group)
    if not listings:
        where = f"train_test_separate/{group or '*'}/{split}_data.json"
        raise UserError(f"{root}: no {split}.json or {where} list of image ids and URLs")
    records, missing, seen, listed = [], [], set(), _Folders()
    for listing in listings:
        flat = listing.name == f"{split}.json" or not listing.name.endswith("_data.json")
        for entry in _entries(listing, group if flat else None):
            if entry["id"] in seen:
                continue
            seen.add(entry["id"])
            stem = Path(entry["id"]).stem
            folders = [root / images, root / images / listing.parent.name]
            if entry.get("group"):
                folders.insert(1, root / images / str(entry["group"]))
            image = next((found for f in folders if (found := _find_image(f, stem, entry["url"], listed))), None)
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


def raw_unreadable(records: Sequence[TraitMaskRecord]) -> List[TraitMaskRecord]:
    """The records whose image is a camera raw file that cannot be read here (rawpy is not installed)."""
    from traitlens.data.imageio import raw_available

    if raw_available():
        return []
    return [r for r in records if r.image.suffix.lower() in RAW_EXTENSIONS]


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
    """``metadata.json``: columns ``url``, ``mask_path``, ``species`` (a dict of lists) or a list of rows.

    The image is looked for under its URL's folder first (``images/<URL folder>/<file>``, how a download that
    keeps the URL's layout stores it; the release's ``species`` column disagrees with it on 30 rows), then
    under the URL's path below ``resolve/<revision>/`` (a snapshot of the dataset repository), then under
    ``images/<species>/`` and ``images/``."""
    try:
        data = json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{root / 'metadata.json'}: not readable JSON ({exc})") from None
    if isinstance(data, dict):
        n = len(data.get("mask_path", []))
        rows = [{k: v[i] for k, v in data.items() if isinstance(v, list) and len(v) == n} for i in range(n)]
    else:
        rows = list(data)
    records, missing, seen, listed = [], [], set(), _Folders()
    for row in rows:
        given = row.get("mask_path") or ""
        species = str(row.get("species") or "")
        url = row.get("url")
        stem = Path(given).stem or Path(_url_name(url)).stem
        mask = next((p for p in (root / given, root / masks / species / Path(given).name) if given and p.is_file()),
                    None)
        folders = []
        if _url_folder(url):
            folders.append(image_dir / _url_folder(url))
        # a snapshot of the dataset repository: the URL's path below resolve/<revision>/
        tail = unquote(urlparse(url).path).split("/resolve/", 1)[-1].split("/", 1)[-1] if isinstance(url, str) \
            and "/resolve/" in url else ""
        if tail:
            folders.append((image_dir / tail).parent)
        if species:
            folders.append(image_dir / species)
        folders.append(image_dir)
        image = next((found for f in folders if (found := _find_image(f, stem, url, listed))), None)
        if image is None:
            missing.append(stem or str(url))
            continue
        ident = f"{species}/{stem}" if species else stem
        if ident in seen:  # one file listed twice: the second row adds nothing
            continue
        seen.add(ident)
        records.append(TraitMaskRecord(ident, image, mask, url))
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


def fit_mask(mask: np.ndarray, size: Tuple[int, int], path: PathLike, orientation: int = 1) -> np.ndarray:
    """A label map fitted to its image of upright ``size`` (H, W), as the releases' own readers do.

    A mask already at ``size`` is returned as is. Otherwise it describes the image file's stored pixels (the
    reference readers open photos without EXIF rotation): it is resized with nearest-neighbour sampling to the
    stored size, *not keeping its aspect ratio* (``check_mask_image.py`` and the NEON ``demo.py`` do exactly
    this; every Heliconius mask is 1024×1024 whatever its photo's shape), then turned with the image's EXIF
    ``orientation`` (1…8, :func:`~traitlens.data.imageio.image_orientation`) so it stays on the specimen.
    ``path`` names the mask in errors.
    """
    ih, iw = (int(v) for v in size)
    if mask.shape == (ih, iw):
        return mask
    if mask.ndim != 2 or 0 in mask.shape:
        raise UserError(f"{path}: a mask must be one H×W label map, got shape {mask.shape}")
    from PIL import Image

    sh, sw = (iw, ih) if int(orientation) in (5, 6, 7, 8) else (ih, iw)  # the stored (pre-rotation) size
    im = Image.fromarray(mask if mask.dtype == np.uint8 else mask.astype(np.int32))
    resized = np.array(im.resize((sw, sh), Image.NEAREST), dtype=mask.dtype)
    return orient_labels(resized, orientation)


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
    """Records as sample dicts: ``image`` 3×H×W float in [0, 1], ``mask`` H×W long (when present), fitted to
    the upright image by :func:`fit_mask`. An unreadable image raises :class:`BadImageError`."""

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
            raw = load_mask(rec.mask)
            orientation = image_orientation(rec.image) if raw.shape != image.shape[:2] else 1
            sample["mask"] = torch.from_numpy(fit_mask(raw, image.shape[:2], rec.mask, orientation).astype(np.int64))
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
    ``support_id``, else the first masked, readable record (of the train list for Heliconius's train/test
    splits, of the split itself for another list such as ``minor_species``, of the release for NEON).
    The chosen support is not its own query. Camera raw images that cannot be read here (no rawpy) stay
    queries, so the run skips and lists each by name; their count is logged. UserError when there is no
    usable support or no query."""
    from traitlens.progress import log
    from traitlens.segment.support import check_labels

    missing: List[str] = []
    records = dataset_records(kind, root, split=split, group=group, skipped=missing)
    raw = raw_unreadable(records)
    if raw:
        log(f"{len(raw)} of {len(records)} images of {kind} ({split}) are camera raw files "
            f"({', '.join(sorted({r.image.suffix for r in raw}))}): {RAW_HINT}; they are skipped and listed "
            "in skipped.jsonl")
    if supports is None:
        own_pool = kind != "heliconius" or split not in ("train", "test")
        pool = records if own_pool else dataset_records(kind, root, split="train", group=group, skipped=[])
        unreadable = {r.image for r in raw_unreadable(pool)}
        masked = [r for r in pool if r.mask is not None and (support_id is None or r.id == support_id)]
        usable = [r for r in masked if r.image not in unreadable]
        if not usable:
            which = f"record {support_id!r}" if support_id else "record"
            why = f" ({len(masked)} are camera raw files: {RAW_HINT})" if masked else ""
            raise NoSupportRecord(f"{root}: no masked {which} to use as the support{why}")
        chosen, sample, failed = None, None, []
        for candidate in usable:  # the first that reads: an unreadable photo (a corrupt .CR2) is passed over
            try:
                sample = TraitMaskDataset([candidate])[0]
            except BadImageError as exc:
                failed.append(f"{candidate.id}: {exc.path}: {exc.reason}")
                if support_id is not None:
                    break
                continue
            chosen = candidate
            break
        if chosen is None:
            raise NoSupportRecord(f"support {failed[0]}" + (f" (and {len(failed) - 1} more unreadable)"
                                                           if len(failed) > 1 else ""))
        if failed:
            log(f"support: {len(failed)} masked record(s) before {chosen.id} are unreadable (first {failed[0]})")
        check_labels(sample["mask"], str(chosen.mask))
        supports = [(sample["image"], sample["mask"])]
        support_info = [{"image": str(chosen.image), "mask": str(chosen.mask), "id": chosen.id}]
        records = [r for r in records if r.image != chosen.image]  # the support is not its own query
    queries = [(f"{r.id}{r.image.suffix}", r.image) for r in records]
    if not queries:
        raise UserError(f"{root}: no images to segment in {kind} ({split})")
    gt = {qid: r.mask for (qid, _), r in zip(queries, records) if r.mask is not None}
    return ReleaseQueries(list(supports), list(support_info or []), queries, gt, missing)
