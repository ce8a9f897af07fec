"""The segment job: trait label maps, overlays, measurements and scores for a collection (``traitlens segment``).

Output folder::

    OUT/labels/<name>.png       uint8 (16-bit when more than 255 labels) label maps at each image's size
    OUT/overlays/<name>.png     the image with the traits painted over it
    OUT/results.jsonl           one record per image: traits found, area per trait (px), score, a score per
                                trait of the supports (``trait_scores``: mean probability over its predicted
                                pixels, 0 when not found), ``flags`` (``no_specimen``, ``low_confidence``,
                                ``missing_traits``, ``small_support_traits``), IoU with the ground truth, and
                                its measurement rows
    OUT/measurements.csv        per image and trait: area, centroid, bounding box, mean colour (rebuilt from
                                the records at the end)
    OUT/summary.json            counts, per-trait IoU and mIoU (with ground truth), images/s
    OUT/index.html              a gallery of overlays
    OUT/skipped.jsonl           unreadable images

``<name>`` mirrors the input tree (:func:`~traitlens.runs.inputs.artifact_stem` of the image's id: a PNG
keeps its name, ``a.jpg`` becomes ``a.jpg.png``). Resume, sharding, locks and skipped files are the runner's.

Large photos (a 4,000×3,000 px camera image) are shrunk to at most ``max_side`` px (area-averaged) before they
enter the pseudo-video: the backends work at a few hundred pixels anyway, and a batch of full-size float
frames and ``(K+1)``-channel soft maps would take gigabytes. The label map comes back at the photo's own size,
upsampled in bands of rows, so memory stays bounded whatever the photo's size.

Bad input never stops the run: a blank frame or one without a specimen gets an (empty) label map and the
``no_specimen`` flag; a prediction whose traits are uncertain or missing is flagged ``low_confidence``; support
traits of a few pixels (which may not be found) are named in every record and in ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from traitlens.data.imageio import SkippedFiles, load_mask
from traitlens.errors import BadImageError, UserError
from traitlens.progress import log
from traitlens.report.overlay import overlay_labels
from traitlens.runs.inputs import Item, artifact_stem, unique_items
from traitlens.runs.runner import MAX_PIXELS, Job, Output, run
from traitlens.runs.store import png_bytes, write_durably
from traitlens.segment.metrics import confusion, iou_from_confusion, mean_iou, measure
from traitlens.segment.propagator import Propagator
from traitlens.segment.support import MAX_TRAIT_ID, check_labels, small_traits, to_frame
from traitlens.segment.tracking import Support, track

#: Below this share of foreground pixels a prediction says "no specimen here".
NO_SPECIMEN_SHARE = 0.002
#: A record is flagged ``low_confidence`` when its score, or a support trait's, falls below this.
LOW_CONFIDENCE = 0.5
#: Frames larger than this (pixels per side) are shrunk before tracking.
MAX_SIDE = 1024

MEASURE_COLUMNS = ["path", "trait", "trait_name", "area_px", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1",
                   "bbox_y1", "mean_r", "mean_g", "mean_b"]


class SegmentJob(Job):
    """Propagate the supports' label maps to every image with :func:`traitlens.segment.tracking.track`.

    ``gt``: a folder of label maps mirroring the inputs (``<name>.png``) or ``{image id: mask file}``.
    """

    name = "segment"
    outputs = ("labels", "overlays", "measurements.csv", "summary.json", "index.html")

    def __init__(self, propagator: Propagator, supports: Sequence[Support], order: str = "pairwise",
                 batch_size: int = 8, reinsert_every: Optional[int] = None,
                 gt: Optional[Union[Path, Mapping[str, Path]]] = None, num_labels: Optional[int] = None,
                 overlays: bool = True, gallery: int = 60, support_info: Sequence[dict] = (),
                 extra: Optional[dict] = None, trait_names: Optional[Mapping[int, str]] = None,
                 max_side: int = MAX_SIDE):
        self.propagator, self.supports, self.order = propagator, list(supports), order
        for i, (_, lbl) in enumerate(self.supports):
            check_labels(lbl, f"#{i + 1}")  # no traits at all: one clear line, before any work
        self.max_side = int(max_side)
        self.support_traits = sorted({int(k) for _, lbl in self.supports for k in torch.unique(lbl) if int(k) > 0})
        self.small = sorted({k for _, lbl in self.supports for k in small_traits(lbl)})
        if self.small:
            log(f"warning: support trait(s) {', '.join(map(str, self.small))} cover only a few pixels; they may "
                "not be found (records say so under flags)")
        self.batch_size, self.reinsert_every, self.gt = batch_size, reinsert_every, gt
        self.k = num_labels or 1 + max(int(lbl.max()) for _, lbl in self.supports)
        self.overlays, self.gallery, self.support_info, self.extra = overlays, gallery, list(support_info), extra
        self.trait_names = {int(k): str(v) for k, v in (trait_names or {}).items()}
        self.started = time.time()

    def settings(self) -> dict:
        return {"order": self.order, "reinsert_every": self.reinsert_every, "labels": self.k,
                "overlays": self.overlays}

    def prepare(self, image, item: Item) -> np.ndarray:
        return np.asarray(image)  # H×W×3 uint8

    def process(self, samples: Iterator[Tuple[Item, np.ndarray]]) -> Iterator[Output]:
        held: Dict[str, Tuple[Item, np.ndarray]] = {}  # only until each image's prediction is written

        def frames():
            for item, image in samples:
                held[item.id] = (item, image)
                yield item.id, shrink(to_frame(image), self.max_side)

        for iid, probs in track(self.propagator, self.supports, frames(), order=self.order,
                                batch_size=self.batch_size, reinsert_every=self.reinsert_every, num_labels=self.k):
            item, image = held.pop(iid)
            top, labels_t = labels_at(probs.detach(), tuple(image.shape[:2]))
            labels = labels_t.cpu().numpy().astype(np.int64)
            stem = artifact_stem(iid)
            fg = labels > 0
            rows = measure(labels, image)
            record = {"path": iid, "file": str(item.path), "traits": [r["trait"] for r in rows],
                      "areas": {str(r["trait"]): r["area_px"] for r in rows},
                      "score": float(top.cpu().numpy()[fg].mean()) if fg.any() else 0.0,
                      "labels": f"labels/{stem}.png"}
            record.update(self._confidence(top.cpu().numpy(), labels))
            artifacts = {record["labels"]: _label_png(labels)}
            if self.overlays:
                record["overlay"] = f"overlays/{stem}.png"
                artifacts[record["overlay"]] = png_bytes(overlay_labels(image, labels))
            if self.gt is not None:
                record.update(_score_against(self.gt, iid, labels_t.cpu(), self.k, image=item.path))
            record["measurements"] = rows
            yield item, record, artifacts

    def _confidence(self, top: np.ndarray, labels: np.ndarray) -> dict:
        """A score per support trait (mean probability over its predicted pixels; 0 when not found) and flags."""
        counts = np.bincount(labels.ravel(), minlength=max(self.support_traits, default=0) + 1)
        sums = np.bincount(labels.ravel(), weights=top.ravel(), minlength=len(counts))
        scores = {str(k): (float(sums[k] / counts[k]) if counts[k] else 0.0) for k in self.support_traits}
        flags = []
        if (labels > 0).mean() < NO_SPECIMEN_SHARE:
            flags.append("no_specimen")
        missing = [k for k in self.support_traits if not counts[k] and k not in self.small]
        if missing:
            flags.append("missing_traits")
        fg = labels > 0
        if "no_specimen" in flags or missing or (fg.any() and float(top[fg].mean()) < LOW_CONFIDENCE) or \
                any(v < LOW_CONFIDENCE for k, v in scores.items() if counts[int(k)]):
            flags.append("low_confidence")
        if self.small:
            flags.append("small_support_traits")
        out = {"trait_scores": scores, "flags": flags}
        if missing:
            out["missing_traits"] = missing
        if self.small:
            out["small_support_traits"] = self.small
        return out

    def finish(self, out: Path, records: List[dict]) -> dict:
        flagged = {f: sum(f in r.get("flags", ()) for r in records) for f in
                   ("no_specimen", "low_confidence", "missing_traits")}
        extra = {**(self.extra or {}), "flagged": flagged}
        if self.small:
            extra["small_support_traits"] = self.small
        return summarise(out, records, self.support_info, gallery=self.gallery,
                         seconds=time.time() - self.started, extra=extra, trait_names=self.trait_names)


def shrink(frame: torch.Tensor, max_side: int) -> torch.Tensor:
    """A ``3×H×W`` frame area-averaged to at most ``max_side`` px on its long side (unchanged when smaller)."""
    h, w = frame.shape[-2:]
    if max(h, w) <= max_side:
        return frame
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(frame[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def labels_at(soft: torch.Tensor, size: Tuple[int, int], rows: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(K+1)×h×w`` soft labels → (top probability, label id) maps ``H×W`` at ``size``, bilinear.

    Upsampled in bands of ``rows`` output rows (``grid_sample`` with the sample positions of
    ``F.interpolate(align_corners=False)``), so a 4,000×3,000 label map never needs ``(K+1)`` full-size
    channels at once.
    """
    h, w = size
    if tuple(soft.shape[-2:]) == (h, w):
        return soft.max(0)
    if h * w <= 1024 * 1024:
        return F.interpolate(soft[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0].max(0)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    top = torch.empty(h, w, dtype=torch.float32)
    ids = torch.empty(h, w, dtype=torch.long)
    src = soft[None].float().cpu()
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5) / h * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]  # 1×n×W×2 (x, y)
        band = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        top[r0:r1], ids[r0:r1] = band.max(0)
    return top, ids


def _label_png(labels: np.ndarray) -> bytes:
    if labels.max() > 255:
        return png_bytes(labels.astype(np.uint16))
    return png_bytes(labels.astype(np.uint8), mode="L")


def _score_against(gt, iid: str, labels: torch.Tensor, k: int, image: Optional[Path] = None) -> dict:
    """IoU against the ground truth of ``iid``; masks stored at another size are fitted to the image as the
    releases' readers do (``segment.datasets.fit_mask``: resized, then turned with ``image``'s orientation)."""
    from traitlens.data.imageio import image_orientation
    from traitlens.segment.datasets import fit_mask

    if isinstance(gt, Mapping):
        path = Path(gt[iid]) if iid in gt else None
    else:
        path = Path(gt) / (artifact_stem(iid) + ".png")
    if path is None or not path.exists():
        return {"gt": None}
    try:
        truth = load_mask(path, max_label=MAX_TRAIT_ID)
        turn = image_orientation(image) if image is not None and truth.shape != tuple(labels.shape) else 1
        truth = fit_mask(truth, tuple(labels.shape), path, turn)
    except BadImageError as exc:
        return {"gt": None, "gt_error": exc.reason}
    except UserError as exc:
        return {"gt": None, "gt_error": str(exc)}
    truth = torch.from_numpy(truth.astype(np.int64))
    cm = confusion(labels, truth, max(k, int(truth.max()) + 1))
    return {"gt": str(path), "confusion": cm.tolist(), "miou": mean_iou(iou_from_confusion(cm))}


def summarise(out: Path, rows: Sequence[dict], supports_info: List[dict], gallery: int = 60,
              seconds: Optional[float] = None, extra: Optional[dict] = None,
              trait_names: Optional[Mapping[int, str]] = None) -> dict:
    """``summary.json`` (per-trait IoU and mIoU with ground truth), ``measurements.csv`` and ``index.html``
    from all records; ``extra`` entries join the summary (e.g. the images a release lists but the disk lacks).
    ``trait_names`` (``{id: name}``, from traits.json or a part-names file) name the traits in all three."""
    from traitlens.report import Section, write_page

    out = Path(out)
    names = {int(k): str(v) for k, v in (trait_names or {}).items()}

    def named(t) -> str:
        return f"{names[int(t)]} ({t})" if int(t) in names else str(t)

    summary: Dict[str, object] = {"images": len(rows), "supports": supports_info}
    if names:
        summary["trait_names"] = {str(k): v for k, v in sorted(names.items())}
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
        if names:
            summary["per_trait_iou_by_name"] = {names.get(int(i), str(i)): v for i, v in summary["per_trait_iou"].items()}
        summary["miou"] = mean_iou(per)
    failed = [r for r in rows if r.get("gt_error")]
    if failed:  # ground truth that was listed but could not be scored is reported, never dropped silently
        summary["gt_errors"] = {"count": len(failed), "first": f"{failed[0]['path']}: {failed[0]['gt_error']}"}
    if seconds:
        summary["images_per_s"] = len(rows) / seconds
    summary.update(extra or {})
    write_durably(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=MEASURE_COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerows({"path": r["path"], **m, "trait_name": names.get(int(m["trait"]), "")}
                         for m in r.get("measurements", []))
    write_durably(out / "measurements.csv", table.getvalue().encode("utf-8"))
    section = Section("Trait segmentation by tracking",
                      intro=f"{len(rows)} images segmented from {len(supports_info)} labelled support image(s).")
    found: Dict[int, List[float]] = {}
    for r in rows:
        for m in r.get("measurements", []):
            found.setdefault(int(m["trait"]), []).append(float(m["area_px"]))
    if found:
        section.table([{"trait": named(t), "images": len(a), "mean area (px)": float(np.mean(a))}
                       for t, a in sorted(found.items())], caption="The traits found")
    if "miou" in summary:
        section.table([{"trait": named(t), "IoU": v} for t, v in summary["per_trait_iou"].items()] +
                      [{"trait": "mean", "IoU": summary["miou"]}], caption="IoU against the ground truth")
    items = []
    for r in rows[:gallery]:
        if r.get("overlay") and (out / r["overlay"]).exists():
            caption = r["path"] + (f" · mIoU {r['miou']:.2f}" if r.get("miou") is not None else "")
            items.append((out / r["overlay"], caption))
    if items:
        section.gallery(items, columns=6)
    write_page("traitlens segment", [section], out / "index.html")
    return summary


def segment_collection(propagator: Propagator, supports: Sequence[Support], queries: Sequence[Tuple[str, Path]],
                       out: Path, gt: Optional[Union[Path, Mapping[str, Path]]] = None, workers: int = 0,
                       max_pixels: int = MAX_PIXELS, skipped: Optional[SkippedFiles] = None,
                       run_options: Optional[dict] = None, restart: bool = False, **options) -> dict:
    """Segment ``queries`` (``(wanted id, image file)``, e.g. :class:`~traitlens.runs.inputs.Item` s from
    :func:`~traitlens.runs.inputs.discover`) into ``out``; ``options`` are those of :class:`SegmentJob`.

    Returns ``{"done", "resumed", "skipped", "seconds", "out"}``; on rank 0 also the summary's fields.
    ``run_options``/``restart``: as :func:`traitlens.runs.runner.run`'s ``options``/``restart``.
    """
    pairs = [(q.id, q.path) if isinstance(q, Item) else tuple(q) for q in queries]
    items = unique_items(pairs)
    if isinstance(gt, Mapping):  # keyed by the ids asked for; an id made unique keeps its mask
        gt = {it.id: gt[wanted] for it, (wanted, _) in zip(items, pairs) if wanted in gt}
    job = SegmentJob(propagator, supports, gt=gt, **options)
    return run(job, items, out, workers=workers, max_pixels=max_pixels, skipped=skipped, options=run_options,
               restart=restart)
