"""Segment a whole collection on disk: streaming, resumable, shardable; label maps, overlays and tables.

Output folder::

    OUT/labels/<rel>.png        uint8 (16-bit when more than 255 labels) label maps at each image's size
    OUT/overlays/<rel>.png      the image with the traits painted over it
    OUT/results.jsonl           one line per image: traits found, area per trait (px), score, IoU with --gt
    OUT/measurements.csv        per image and trait: area, centroid, bounding box, mean colour
    OUT/summary.json            counts, per-trait IoU and mIoU (with ground truth), images/s
    OUT/index.html              a gallery of overlays
    OUT/skipped.jsonl           unreadable images

``<rel>`` mirrors the input tree (the path below the ``--images`` folder). With torchrun every rank
handles its own share (:func:`traitlens.engine.distributed.shard`) and writes ``results.rank<r>.jsonl``
and ``measurements.rank<r>.csv``; rank 0 summarises once all are done. A rerun skips the images already
listed in the results files, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from traitlens.data.imageio import SkippedFiles, load_image, load_mask
from traitlens.errors import BadImageError, UserError
from traitlens.progress import bar, log
from traitlens.segment.metrics import confusion, iou_from_confusion, mean_iou, measure
from traitlens.segment.propagator import Propagator
from traitlens.segment.tracking import Support, track

MEASURE_COLUMNS = ["path", "trait", "area_px", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1",
                   "bbox_y1", "mean_r", "mean_g", "mean_b"]


def trait_colours(num_labels: int) -> np.ndarray:
    """``num_labels×3`` uint8 colours: black background, then well-separated hues."""
    import colorsys

    colours = [(0, 0, 0)]
    for k in range(1, num_labels):
        h = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H×W×3 uint8 image with each trait painted in its colour (background untouched)."""
    colours = trait_colours(int(labels.max()) + 1)
    paint = colours[labels].astype(np.float32)
    out = image.astype(np.float32)
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * out + alpha * paint, out).clip(0, 255).astype(np.uint8)


def load_support(image_path: Path, mask_path: Path) -> Support:
    """A support pair (frame 3×H×W in [0, 1], labels H×W) from files; UserError when they do not fit."""
    try:
        image = load_image(image_path)
        labels = load_mask(mask_path)
    except BadImageError as exc:
        raise UserError(f"--support/--support-mask: {exc.path}: {exc.reason}") from None
    if labels.shape != (image.height, image.width):
        raise UserError(f"--support-mask {mask_path}: size {labels.shape[1]}×{labels.shape[0]} differs from the "
                        f"support image's {image.width}×{image.height}")
    if labels.max() == 0:
        raise UserError(f"--support-mask {mask_path}: no trait pixels (every id is 0)")
    return to_frame(np.asarray(image)), torch.from_numpy(labels.astype(np.int64))


def to_frame(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def _done(out: Path) -> set:
    done = set()
    for path in out.glob("results*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError):
                continue  # a line cut by an interruption: redo that image
    return done


def _save_labels(labels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.max() > 255:
        Image.fromarray(labels.astype(np.uint16)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def segment_collection(propagator: Propagator, supports: Sequence[Support], items: Sequence[Tuple[str, Path]],
                       out: Path, order: str = "pairwise", batch_size: int = 8,
                       reinsert_every: Optional[int] = None, gt: Optional[Union[Path, Mapping[str, Path]]] = None,
                       num_labels: Optional[int] = None, rank: int = 0, world: int = 1,
                       overlays: bool = True) -> Dict[str, object]:
    """Segment ``items`` (``(relative path, file)``; already this rank's share) into ``out``.

    Returns this rank's counts: ``{"done": n, "skipped": n, "resumed": n, "seconds": s}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k = num_labels or 1 + max(int(lbl.max()) for _, lbl in supports)
    done = _done(out)
    todo = [(rel, path) for rel, path in items if rel not in done]
    skipped = SkippedFiles()
    suffix = f".rank{rank}" if world > 1 else ""
    images: Dict[str, np.ndarray] = {}

    def frames() -> Iterator[Tuple[str, torch.Tensor]]:
        for rel, path in todo:
            try:
                arr = np.asarray(load_image(path))
            except BadImageError as exc:
                skipped.add_error(exc)
                continue
            images[rel] = arr  # held only until its prediction is written (at most one batch)
            yield rel, to_frame(arr)

    start = time.time()
    n_done = 0
    progress = bar(len(todo), desc="segment", unit="img")
    with open(out / f"results{suffix}.jsonl", "a", encoding="utf-8") as results, \
            open(out / f"measurements{suffix}.csv", "a", newline="", encoding="utf-8") as table:
        writer = csv.DictWriter(table, fieldnames=MEASURE_COLUMNS)
        if table.tell() == 0:
            writer.writeheader()
        for rel, probs in track(propagator, supports, frames(), order=order, batch_size=batch_size,
                                reinsert_every=reinsert_every, num_labels=k):
            image = images.pop(rel)
            probs = probs.detach()
            top, labels_t = probs.max(0)
            labels = labels_t.cpu().numpy().astype(np.int64)
            stem = str(Path(rel).with_suffix(".png"))
            _save_labels(labels, out / "labels" / stem)
            if overlays:
                over = out / "overlays" / stem
                over.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(overlay_labels(image, labels)).save(over)
            rows = measure(labels, image)
            fg = labels > 0
            row = {"path": rel, "traits": [r["trait"] for r in rows],
                   "areas": {str(r["trait"]): r["area_px"] for r in rows},
                   "score": float(top.cpu().numpy()[fg].mean()) if fg.any() else 0.0}
            if gt is not None:
                row.update(_score_against(gt, rel, labels_t.cpu(), k))
            results.write(json.dumps(row) + "\n")
            results.flush()
            writer.writerows({"path": rel, **r} for r in rows)
            n_done += 1
            progress.update(1)
    progress.close()
    if skipped:
        skipped.write(out / f"skipped{suffix}.jsonl")
        log(skipped.summary(out / f"skipped{suffix}.jsonl"))
    return {"done": n_done, "skipped": skipped.count, "resumed": len(items) - len(todo),
            "seconds": time.time() - start}


def _score_against(gt, rel: str, labels: torch.Tensor, k: int) -> dict:
    """IoU against the ground truth of ``rel``: ``gt`` is a folder mirroring the inputs or a mapping
    ``{relative path: mask file}`` (a trait-mask release); masks stored at another size are resized (nearest)."""
    from traitlens.segment.datasets import fit_mask

    if isinstance(gt, Mapping):
        path = Path(gt[rel]) if rel in gt else None
    else:
        path = Path(gt) / Path(rel).with_suffix(".png")
    if path is None or not path.exists():
        return {"gt": None}
    try:
        truth = torch.from_numpy(fit_mask(load_mask(path), tuple(labels.shape), path).astype(np.int64))
    except BadImageError as exc:
        return {"gt": None, "gt_error": exc.reason}
    except UserError as exc:
        return {"gt": None, "gt_error": str(exc)}
    n = max(k, int(truth.max()) + 1)
    cm = confusion(labels, truth, n)
    return {"gt": str(path), "confusion": cm.tolist(), "miou": mean_iou(iou_from_confusion(cm))}


def summarise(out: Path, supports_info: List[dict], gallery: int = 60, seconds: Optional[float] = None,
              extra: Optional[dict] = None) -> dict:
    """Merge every rank's results into ``summary.json`` and ``index.html`` (per-trait IoU with ground truth);
    ``extra`` entries join the summary (e.g. the images a release lists but the disk lacks)."""
    from traitlens.report import Section, write_page

    out = Path(out)
    rows = []
    for path in sorted(out.glob("results*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    rows.sort(key=lambda r: r["path"])
    summary: Dict[str, object] = {"images": len(rows), "supports": supports_info}
    scored = [r for r in rows if r.get("confusion")]
    if scored:
        n = max(len(r["confusion"]) for r in scored)
        cm = torch.zeros(n, n, dtype=torch.long)
        for r in scored:
            c = torch.tensor(r["confusion"])
            cm[:len(c), :len(c)] += c
        per = iou_from_confusion(cm)
        summary["scored_images"] = len(scored)
        summary["per_trait_iou"] = {str(i): (None if torch.isnan(v) else float(v)) for i, v in enumerate(per) if i > 0}
        summary["miou"] = mean_iou(per)
    if seconds:
        summary["images_per_s"] = len(rows) / seconds
    summary.update(extra or {})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    section = Section("Trait segmentation by tracking",
                      intro=f"{len(rows)} images segmented from {len(supports_info)} labelled support image(s).")
    if "miou" in summary:
        section.table([{"trait": t, "IoU": v} for t, v in summary["per_trait_iou"].items()] +
                      [{"trait": "mean", "IoU": summary["miou"]}], caption="IoU against the ground truth (--gt)")
    items = []
    for r in rows[:gallery]:
        over = out / "overlays" / Path(r["path"]).with_suffix(".png")
        if over.exists():
            caption = r["path"] + (f" · mIoU {r['miou']:.2f}" if r.get("miou") is not None else "")
            items.append((over, caption))
    if items:
        section.gallery(items, columns=6)
    write_page("traitlens segment", [section], out / "index.html")
    return summary
