"""Generic "image + mask PNG" pairs: two folders (or two lists) matched by relative path, else by file stem.

``images/a/b.jpg`` pairs with ``masks/a/b.png``; when no mask sits at the same relative path, a mask whose stem
is ``b`` (plus ``mask_suffix``, e.g. ``b_mask.png``) anywhere under ``masks`` is taken if it is the only one.
Label ids in the masks are kept exactly (see :func:`~traitlens.data.imageio.load_mask`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from traitlens.data.folders import find_images
from traitlens.data.imageio import load_image, load_mask
from traitlens.data.transforms import is_joint, run_transform, sample_generator
from traitlens.errors import BadImageError, UserError

PathLike = Union[str, Path]
Source = Union[PathLike, Sequence[PathLike]]


def _listing(source: Source, what: str) -> Tuple[List[Path], Optional[Path]]:
    """Files of a folder (with the folder, for relative keys) or of an explicit list (no folder)."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise UserError(f"{what} folder not found: {root}")
        return find_images(root), root
    paths = [Path(p) for p in source]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{len(missing)} listed {what} files do not exist (first: {missing[0]})")
    return paths, None


def pair_images_with_masks(images: Source, masks: Source, mask_suffix: str = ""
                           ) -> Tuple[List[Tuple[Path, Path]], List[Path]]:
    """Match images with masks → (``[(image, mask), ...]`` in image order, images without a mask)."""
    image_files, image_root = _listing(images, "image")
    mask_files, mask_root = _listing(masks, "mask")
    by_rel: Dict[str, Path] = {}
    by_stem: Dict[str, List[Path]] = {}
    for m in mask_files:
        if mask_root is not None:
            key = m.relative_to(mask_root).with_suffix("").as_posix()
            if key in by_rel:
                raise UserError(f"two masks for one image: {by_rel[key]} and {m}")
            by_rel[key] = m
        by_stem.setdefault(m.stem, []).append(m)

    pairs, unpaired = [], []
    for img in image_files:
        mask = None
        if image_root is not None and mask_root is not None:
            rel = img.relative_to(image_root).with_suffix("")
            mask = by_rel.get((rel.parent / (rel.name + mask_suffix)).as_posix())
        if mask is None:
            candidates = by_stem.get(img.stem + mask_suffix, [])
            if len(candidates) > 1:
                raise UserError(f"image {img} matches {len(candidates)} masks by name ({candidates[0]}, "
                                f"{candidates[1]}, ...); keep image and mask trees in the same layout")
            mask = candidates[0] if candidates else None
        if mask is None:
            unpaired.append(img)
        else:
            pairs.append((img, mask))
    return pairs, unpaired


class MaskPairDataset(torch.utils.data.Dataset):
    """Images with their label maps. ``images``/``masks``: folders or lists of files.

    ``missing="error"`` raises a :class:`UserError` when an image has no mask; ``"skip"`` leaves it out and
    records it in ``unpaired`` (``num_unpaired``). ``palette`` reads RGB mask pictures (see
    :func:`~traitlens.data.imageio.load_mask`: a ``{(r, g, b): id}`` dict or ``"grey"``); without one they are
    unreadable pairs. Items: ``{"image", "mask" (H×W long, ids exact), "label": -1
    (no class), "index", "path", "mask_path"}``, or ``{"error", "path", "index"}`` for an unreadable pair.
    """

    def __init__(self, images: Source, masks: Source, transform=None, missing: str = "error",
                 mask_suffix: str = "", seed: int = 0, palette=None):
        if missing not in ("error", "skip"):
            raise UserError(f"missing must be 'error' or 'skip', got {missing!r}")
        if transform is not None and not is_joint(transform):
            raise UserError("MaskPairDataset needs a joint transform (SpecimenTransform, or a callable taking "
                            "image, mask=, generator=) so masks stay aligned with their images")
        pairs, unpaired = pair_images_with_masks(images, masks, mask_suffix)
        if unpaired and missing == "error":
            raise UserError(f"{len(unpaired)} of {len(pairs) + len(unpaired)} images have no mask in {masks} "
                            f"(first: {unpaired[0]}); pass missing='skip' to leave them out")
        if not pairs:
            raise UserError(f"no image has a mask: images {images}, masks {masks}")
        self.pairs: List[Tuple[str, str]] = [(str(i), str(m)) for i, m in pairs]
        self.unpaired: List[str] = [str(p) for p in unpaired]
        self.transform = transform
        self.seed, self.epoch = int(seed), 0
        self.palette = palette

    @property
    def num_unpaired(self) -> int:
        return len(self.unpaired)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path, mask_path = self.pairs[index]
        try:
            image = load_image(path)
            mask = load_mask(mask_path, palette=self.palette)
            if mask.shape != (image.height, image.width):
                raise BadImageError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                               f"{image.width}x{image.height}")
        except BadImageError as exc:
            return {"error": exc.reason if exc.path == path else f"{exc.path}: {exc.reason}",
                    "path": path, "index": int(index)}
        img, m, _ = run_transform(self.transform, image, mask, sample_generator(self.seed, self.epoch, index))
        return {"image": img, "mask": m, "label": -1, "index": int(index), "path": path, "mask_path": mask_path}
