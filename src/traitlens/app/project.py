"""The Segment tab's project: labelled supports, named parts, a folder to propagate to, and its runs.

A project is a folder another command reads back::

    PROJECT/project.json          parts (id → name), supports, the image folder, the propagation options,
                                  the last run, and ``segment_args``: the same job as explicit
                                  ``traitlens segment`` arguments
    PROJECT/supports/<n>.<ext>    each support image (a byte copy of the file it came from)
    PROJECT/supports/<n>.mask.png its label map (uint8, 0 = background, k = part k)
    PROJECT/segment.sh            ``traitlens segment --project PROJECT --out PROJECT/runs/bulk``: the same job
                                  in bulk (flags appended to the script override the project's options)
    PROJECT/runs/<key>/           the app's propagations (the ``traitlens segment`` output layout); ``key``
                                  hashes the supports and options, so a changed support gets a new folder
                                  and an unchanged one resumes

Propagation is :func:`traitlens.runs.segment_job.segment_collection` with the propagator the CLI builds,
so ``bash PROJECT/segment.sh`` (``traitlens segment --project``, or ``traitlens segment`` with ``segment_args``)
writes the same label maps. The image folder is stored as an absolute path, so the project is read from anywhere.
Painted masks arrive from the page as RGBA layers whose colours are the parts' brush colours
(:func:`labels_from_layers`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from traitlens.errors import BadImageError, UserError

PROJECT_FILE = "project.json"
#: The propagation options a project stores, with the defaults of ``traitlens segment``.
DEFAULT_OPTIONS = {"backend": "labelprop", "features": "colour", "work_size": 128, "local": 3, "order": "pairwise",
                   "batch_size": 8, "seed": 0}
_FLAGS = {"backend": "--backend", "features": "--features", "work_size": "--work-size", "local": "--local",
          "order": "--order", "batch_size": "--batch-size", "seed": "--seed"}


# ------------------------------------------------------------------------------------- painted masks
def part_colours(num_parts: int) -> np.ndarray:
    """``(num_parts + 1)×3`` uint8 brush colours (row 0: background), those of the segment overlays."""
    from traitlens.report.overlay import trait_colours

    return trait_colours(num_parts + 1)


def brush_colour(rgb) -> str:
    return "rgb({}, {}, {})".format(*(int(c) for c in rgb))


def labels_from_layers(layers: Sequence[np.ndarray], num_parts: int, shape=None) -> np.ndarray:
    """Painted RGBA layers (H×W×4 uint8, later layers on top) → an H×W uint8 label map.

    A pixel belongs to the part whose brush colour is nearest to its colour where its alpha is at least
    half (the brush's anti-aliased rim is split between the parts it touches; erased pixels are
    transparent and stay background).
    """
    palette = part_colours(num_parts)[1:].astype(np.int32)  # K×3
    if not layers:
        if shape is None:
            raise UserError("paint at least one part, or upload a label map")
        return np.zeros(shape, dtype=np.uint8)
    out = np.zeros(layers[0].shape[:2], dtype=np.uint8)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise UserError(f"a painted layer must be H×W×4 (RGBA), got shape {layer.shape}")
        if layer.shape[:2] != out.shape:
            raise UserError(f"painted layers differ in size: {layer.shape[:2]} and {out.shape}")
        painted = layer[..., 3] >= 128
        if not painted.any():
            continue
        rgb = layer[painted][:, :3].astype(np.int32)  # N×3
        packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
        colours, which = np.unique(packed, return_inverse=True)  # a brush paints few colours: U ≪ N
        unique_rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)  # U×3
        nearest = ((unique_rgb[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1)  # U
        out[painted] = (nearest[which.reshape(-1)] + 1).astype(np.uint8)
    return out


def layer_from_labels(labels: np.ndarray, num_parts: Optional[int] = None) -> np.ndarray:
    """An H×W label map → an H×W×4 RGBA layer in the brush colours (background transparent)."""
    labels = np.asarray(labels)
    k = int(labels.max()) if num_parts is None else max(int(num_parts), int(labels.max()))
    colours = part_colours(k)
    layer = np.zeros((*labels.shape, 4), dtype=np.uint8)
    layer[..., :3] = colours[labels]
    layer[..., 3] = np.where(labels > 0, 255, 0)
    return layer


def read_label_map(path, shape) -> np.ndarray:
    """An uploaded label map file → H×W uint8 ids, checked against the support's ``shape`` (H, W)."""
    from traitlens.data.imageio import load_mask
    from traitlens.segment.support import MAX_TRAIT_ID

    try:
        labels = load_mask(path, max_label=min(255, MAX_TRAIT_ID))
    except BadImageError as exc:
        raise UserError(f"label map {Path(str(exc.path)).name}: {exc.reason}") from None
    if labels.shape != tuple(shape):
        raise UserError(f"label map {Path(path).name}: size {labels.shape[1]}×{labels.shape[0]} differs from the "
                        f"support image's {shape[1]}×{shape[0]}")
    return labels.astype(np.uint8)


def parse_parts(text: str) -> Dict[int, str]:
    """Part names, one a line or comma-separated (``wing``, or ``3: wing`` for an explicit id) → {id: name}."""
    parts: Dict[int, str] = {}
    entries = [e.strip() for line in (text or "").splitlines() for e in line.split(",") if e.strip()]
    for entry in entries:
        if ":" in entry and entry.split(":", 1)[0].strip().isdigit():
            pid, name = entry.split(":", 1)
            pid = int(pid)
        else:
            pid, name = max(parts, default=0) + 1, entry
        if not 1 <= pid <= 255:
            raise UserError(f"part {entry!r}: ids run from 1 to 255 (0 is the background)")
        parts[pid] = name.strip()
    return parts


def parts_text(parts: Dict[int, str]) -> str:
    return "\n".join(f"{i}: {n}" for i, n in sorted(parts.items()))


# ------------------------------------------------------------------------------------------- project
@dataclass
class SegmentProject:
    """A segmentation project in ``folder`` (see the module docstring)."""

    folder: Path
    images: Optional[Path] = None
    parts: Dict[int, str] = field(default_factory=dict)
    supports: List[Dict[str, str]] = field(default_factory=list)  # {"image": rel, "mask": rel, "source": path}
    options: Dict[str, object] = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    last_run: Optional[str] = None

    @classmethod
    def load(cls, folder) -> "SegmentProject":
        folder = Path(folder)
        path = folder / PROJECT_FILE
        if not path.exists():
            raise UserError(f"{folder}: no {PROJECT_FILE}; save a project from the app's Segment tab first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        return cls(folder=folder, images=Path(data["images"]) if data.get("images") else None,
                   parts={int(k): v for k, v in data.get("parts", {}).items()}, supports=list(data.get("supports", [])),
                   options={**DEFAULT_OPTIONS, **data.get("options", {})}, last_run=data.get("last_run"))

    @classmethod
    def open_or_new(cls, folder, images=None, parts: Optional[Dict[int, str]] = None) -> "SegmentProject":
        folder = Path(folder)
        if (folder / PROJECT_FILE).exists():
            return cls.load(folder)
        return cls(folder=folder, images=Path(images).resolve() if images else None, parts=dict(parts or {}))

    # -------------------------------------------------------------------------------- supports
    def add_support(self, image_path, labels: np.ndarray) -> int:
        """Copy ``image_path`` into the project with its H×W label map; returns the support's number."""
        from PIL import Image

        from traitlens.data.imageio import load_image
        from traitlens.segment.support import check_labels

        import torch

        image_path = Path(image_path)
        try:
            size = load_image(image_path).size
        except BadImageError as exc:
            raise UserError(f"support {image_path.name}: {exc.reason}") from None
        labels = np.asarray(labels)
        if labels.shape != (size[1], size[0]):
            raise UserError(f"the mask is {labels.shape[1]}×{labels.shape[0]} but the support image is "
                            f"{size[0]}×{size[1]}")
        check_labels(torch.from_numpy(labels.astype(np.int64)), image_path.name)
        n = len(self.supports) + 1
        sup = self.folder / "supports"
        sup.mkdir(parents=True, exist_ok=True)
        image_rel = f"supports/{n}{image_path.suffix.lower() or '.png'}"
        mask_rel = f"supports/{n}.mask.png"
        shutil.copyfile(image_path, self.folder / image_rel)
        Image.fromarray(labels.astype(np.uint8), mode="L").save(self.folder / mask_rel)
        self.supports.append({"image": image_rel, "mask": mask_rel, "source": str(image_path)})
        for pid in sorted(int(i) for i in np.unique(labels) if i > 0):
            self.parts.setdefault(pid, f"part {pid}")
        return n

    def remove_supports(self) -> None:
        """Forget every support (their files stay until overwritten)."""
        self.supports = []

    # ------------------------------------------------------------------------------ the bulk job
    def run_key(self) -> str:
        """A short hash of what the label maps depend on: the supports' files and the options."""
        h = hashlib.sha1()
        for s in self.supports:
            for rel in (s["image"], s["mask"]):
                h.update(rel.encode())
                h.update(hashlib.sha1((self.folder / rel).read_bytes()).digest())
        h.update(json.dumps({"images": str(self.images), **self.options}, sort_keys=True).encode())
        return h.hexdigest()[:12]

    def segment_args(self, out, relative: bool = False) -> List[str]:
        """The ``traitlens segment`` arguments of this project's job writing to ``out`` (paths absolute, or
        relative to the project folder with ``relative``)."""
        if not self.supports:
            raise UserError("the project has no support yet: give a mask and add the support first")
        if self.images is None:
            raise UserError("the project has no image folder to propagate to")
        base = Path(".") if relative else self.folder.resolve()
        args = ["segment"]
        for s in self.supports:
            args += ["--support", str(base / s["image"]), "--support-mask", str(base / s["mask"])]
        args += ["--images", str(Path(self.images).resolve()), "--out", str(out)]
        for key, flag in _FLAGS.items():
            args += [flag, str(self.options[key])]
        return args

    def save(self) -> Path:
        """Write ``project.json`` and ``segment.sh``; returns the project.json path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.images is not None:
            self.images = Path(self.images).resolve()
        out = "runs/bulk"
        data = {"format": "traitlens-segment-project/1", "images": str(self.images) if self.images else None,
                "parts": {str(k): v for k, v in sorted(self.parts.items())}, "supports": self.supports,
                "options": self.options, "last_run": self.last_run}
        if self.supports and self.images is not None:
            data["segment_args"] = self.segment_args(out, relative=True)
            # The script reads project.json (one source of the job, part names included) rather than repeating it.
            script = ("#!/usr/bin/env bash\n# The app's segmentation job in bulk: traitlens segment over the whole "
                      "folder (resumable; rerun to continue).\n# Flags after the script override the project's "
                      "options, e.g. bash segment.sh --device cuda --work-size auto\nset -euo pipefail\n"
                      "cd \"$(dirname \"$0\")\"\n${TRAITLENS:-traitlens} segment --project . --out "
                      + shlex.quote(out) + ' "$@"\n')
            (self.folder / "segment.sh").write_text(script)
            (self.folder / "segment.sh").chmod(0o755)
        path = self.folder / PROJECT_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def propagate(self, images=None, on_progress: Optional[Callable[[int, int], None]] = None,
                  device: str = "cpu") -> dict:
        """Propagate the supports to every image of ``images`` (default: the project's folder) into
        ``runs/<key>/`` exactly as ``traitlens segment`` does; ``on_progress(done, total)`` after each image.

        Returns the run's summary with ``out`` (the run folder).
        """
        import torch

        from traitlens.runs import discover
        from traitlens.runs.segment_job import segment_collection
        from traitlens.segment.backends import build_propagator
        from traitlens.segment.support import load_support

        if images is not None:
            self.images = Path(images).resolve()
        if self.images is None or not Path(self.images).is_dir():
            raise UserError(f"folder to propagate to not found: {self.images}")
        if not self.supports:
            raise UserError("no support yet: paint or upload its mask, then add it as a support")
        supports = [load_support(self.folder / s["image"], self.folder / s["mask"]) for s in self.supports]
        items = discover([Path(self.images)])
        key = self.run_key()
        out = self.folder / "runs" / key
        torch.manual_seed(int(self.options["seed"]))
        o = self.options
        side = "auto" if o["work_size"] == "auto" else int(o["work_size"])
        prop = build_propagator(str(o["backend"]), device=device, work_size=side,
                                features=str(o["features"]), local=int(o["local"]))
        total = len(items)
        done = len(_done_ids(out))
        if on_progress:
            on_progress(done, total)
        counted = _Counting(prop, lambda n: on_progress(min(done + n, total), total) if on_progress else None)
        info = [{"image": str(self.folder / s["image"]), "mask": str(self.folder / s["mask"])} for s in self.supports]
        summary = segment_collection(counted, supports, items, out, order=str(o["order"]),
                                     batch_size=int(o["batch_size"]), support_info=info)
        self.last_run = f"runs/{key}"
        self.save()
        summary["out"] = str(out)
        return summary

    def results(self, run: Optional[str] = None) -> List[dict]:
        """The records of ``run`` (default: the last one), each with absolute ``overlay``/``labels`` paths."""
        run = run or self.last_run
        if not run:
            return []
        from traitlens.runs.store import run_records

        folder = self.folder / run
        if not folder.exists():
            return []
        records = run_records(folder)
        for r in records:
            for key in ("overlay", "labels"):
                if r.get(key):
                    r[key] = str(folder / r[key])
        return records


def _done_ids(out: Path) -> set:
    from traitlens.runs.store import done_ids

    return done_ids(out) if out.exists() else set()


class _Counting:
    """A propagator that reports how many query frames it has predicted (progress for the page).

    Delegates everything else to the wrapped :class:`~traitlens.segment.propagator.Propagator`; only
    ``predict``/``predict_batch`` are counted, which :func:`~traitlens.segment.tracking.track` calls once
    per query frame.
    """

    def __init__(self, inner, report: Callable[[int], None]):
        self._inner, self._report, self._n = inner, report, 0
        if hasattr(inner, "predict_batch"):
            self.predict_batch = self._predict_batch

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict(self, image):
        out = self._inner.predict(image)
        self._n += 1
        self._report(self._n)
        return out

    def _predict_batch(self, images):
        out = self._inner.predict_batch(images)
        self._n += len(images)
        self._report(self._n)
        return out
