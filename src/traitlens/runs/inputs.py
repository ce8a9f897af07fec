"""What a bulk run reads: image files and folders named by the user, each with a unique, stable id.

An id is the file's path below the folder it was found in, extension kept (``class/img001.png``), so
``a.png`` and ``a.jpg`` are two inputs. With several inputs, a folder's files are prefixed by the folder's
name (``photos/class/img001.png``; a second folder of the same name becomes ``photos~2/...``) and a loose file
is its name; whatever still collides gets a ``~2``, ``~3``, … suffix in input order. The same inputs in the
same order give the same ids, so a rerun finds its earlier records.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from traitlens.data.folders import IMAGE_EXTENSIONS, file_identity, find_images
from traitlens.data.imageio import SkippedFiles
from traitlens.errors import UserError


@dataclass(frozen=True)
class Item:
    """One input of a run: its id (the key of its record) and the file to read."""

    id: str
    path: Path


def discover(inputs: Sequence[Path], skipped: Optional[SkippedFiles] = None) -> List[Item]:
    """The images of ``inputs`` (files and folders) as :class:`Item` s with unique ids, in input order.

    A file reached twice (through a link, or named twice) is one input; special files (FIFO, socket,
    device) and broken links go to ``skipped`` and are never opened. Raises :class:`UserError` for a path
    that does not exist, and when nothing is found.
    """
    inputs = [Path(p) for p in inputs]
    several = len(inputs) > 1
    named: List[tuple] = []  # (wanted id, path)
    seen_files = set()
    root_names: Dict[str, int] = {}
    for p in inputs:
        if not os.path.exists(p):
            raise UserError(f"no such image or folder: {p}")
        if p.is_dir():
            prefix = ""
            if several:
                name = p.resolve().name or "root"
                root_names[name] = root_names.get(name, 0) + 1
                prefix = name + (f"~{root_names[name]}" if root_names[name] > 1 else "") + "/"
            found = [(prefix + f.relative_to(p).as_posix(), f) for f in find_images(p, skipped=skipped)]
        else:
            found = [(p.name, p)]
        for wanted, f in found:
            key = file_identity(f, os.stat(f), skipped)
            if key is not None and key not in seen_files:  # one input however often it is reached
                seen_files.add(key)
                named.append((wanted, f))
    if not named:
        raise UserError("no images found in " + ", ".join(map(str, inputs))
                        + f" (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return unique_items(named)


def unique_items(named: Sequence[tuple]) -> List[Item]:
    """``(wanted id, path)`` pairs as items whose ids, and the artifact names made from them (the tree's
    :func:`artifact_stem` and the flat folder's :func:`flat_name`: ``a__b/c.png`` and ``a/b__c.png`` flatten
    alike), are unique: a repeat gets ``~2``, ``~3``, … in order."""
    taken = set()
    items = []
    for wanted, path in named:
        iid, n = wanted, 1
        while {("tree", artifact_stem(iid)), ("flat", flat_name(iid))} & taken:
            n += 1
            iid = f"{wanted}~{n}"
        taken |= {("tree", artifact_stem(iid)), ("flat", flat_name(iid))}
        items.append(Item(iid, Path(path)))
    return items


def artifact_stem(iid: str) -> str:
    """The path (no extension) under which an id's artifacts are stored, mirroring the input tree:
    ``sp0/0.png`` → ``sp0/0`` (a PNG's artifacts keep the input's name), ``sp0/0.jpg`` → ``sp0/0.jpg``."""
    return iid[:-4] if iid.lower().endswith(".png") else iid


def flat_name(iid: str) -> str:
    """An id as one file name (folders joined by ``__``), for outputs that are one flat folder."""
    return artifact_stem(iid).replace("/", "__")


# ------------------------------------------------------------------------------------- names a user reads
def fold_name(name: str) -> str:
    """Case, underscores, hyphens and runs of spaces do not matter: ``01_Pseudavis_flava`` ~ ``01 pseudavis flava``."""
    return " ".join(re.split(r"[\s_\-]+", str(name).strip().lower()))


def display_name(folder: str) -> str:
    """``01_Pseudavis_flava`` → ``Pseudavis flava`` (a numbered class folder's species name; others unchanged)."""
    return re.sub(r"^\d+[_\-\s]+", "", str(folder)).replace("_", " ")


def class_from_folder(path: Path, class_names: Sequence[str]) -> Optional[int]:
    """The class an image's folder names (``<class>/<image>``, the ImageFolder convention: its folder name or the
    display name), or None when the folder is not a class of the model."""
    folder = Path(path).parent.name
    names = list(class_names)
    if folder in names:
        return names.index(folder)
    for candidates in (names, [display_name(n) for n in names]):
        hits = [i for i, n in enumerate(candidates) if fold_name(n) == fold_name(folder)]
        if len(hits) == 1:
            return hits[0]
    return None
