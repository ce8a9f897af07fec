"""The image collection the app browses: every image under ``--images DIR``, its species, and thumbnails.

The species of an image is its folder below ``DIR`` (the ``<species>/<image>`` layout of every traitlens
collection); images straight in ``DIR`` have none. Thumbnails are written once, on first view, to the app's
working folder, so a page of the grid never sends full-size photographs to the browser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from traitlens.errors import UserError

THUMB_SIZE = 96


@dataclass(frozen=True)
class Specimen:
    """One image of the collection: ``id`` is its path below the folder (``species/name.png``)."""

    id: str
    path: Path
    species: str


class Collection:
    """The images under ``root`` (found with :func:`traitlens.data.folders.find_images`)."""

    def __init__(self, root, work: Path):
        from traitlens.data.folders import find_images

        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"--images {root}: not a folder")
        self.work = Path(work)
        self.items: List[Specimen] = []
        for path in find_images(self.root):
            rel = path.relative_to(self.root)
            self.items.append(Specimen(rel.as_posix(), path, rel.parts[0] if len(rel.parts) > 1 else ""))
        if not self.items:
            raise UserError(f"--images {root}: no images found")
        self._by_id = {s.id: s for s in self.items}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def species(self) -> List[str]:
        return sorted({s.species for s in self.items if s.species})

    def get(self, specimen_id: str) -> Specimen:
        if specimen_id not in self._by_id:
            raise UserError(f"no image {specimen_id!r} in {self.root}")
        return self._by_id[specimen_id]

    def search(self, query: str = "", limit: int = 48) -> List[Specimen]:
        """Images whose species or file name contains ``query`` (case-insensitive), at most ``limit``."""
        q = (query or "").strip().lower()
        hits = [s for s in self.items if not q or q in s.species.lower() or q in s.id.lower()]
        return hits[:limit]

    def thumbnail(self, specimen: Specimen, size: int = THUMB_SIZE) -> Path:
        """A PNG thumbnail (longer side ``size``) of ``specimen``, written on first use."""
        from PIL import Image

        from traitlens.data.imageio import load_image
        from traitlens.errors import BadImageError

        key = hashlib.sha1(f"{specimen.path.resolve()}:{specimen.path.stat().st_mtime_ns}:{size}".encode()).hexdigest()
        out = self.work / "thumbs" / f"{key[:20]}.png"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                image = load_image(specimen.path)
            except BadImageError:
                image = Image.new("RGB", (size, size), (200, 200, 200))  # shown grey; choosing it says why
            image.thumbnail((size, size), Image.BILINEAR if max(image.size) > size else Image.NEAREST)
            if max(image.size) < size:  # tiny specimens are enlarged so the grid stays legible
                scale = size / max(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
            tmp = out.with_suffix(".tmp.png")
            image.save(tmp)
            tmp.replace(out)
        return out

    def true_class(self, specimen_id: Optional[str]) -> Optional[str]:
        """The species folder of an image of the collection (None for an upload)."""
        if not specimen_id or specimen_id not in self._by_id:
            return None
        return self._by_id[specimen_id].species or None
