"""The explain job: Finer-CAM overlays, raw maps, records and a gallery for a collection (``traitlens explain``).

Per image: ``overlays/<name>.png`` (the image, the base CAM and Finer-CAM per α side by side), with
``--save-maps`` its raw maps ``maps/<name>.npy`` (A×h×w float32, A the α sweep), and one record in
``results.jsonl``. At the end ``maps.npz`` (key: image id; the documented file other tools read) is built
from the records' maps, and ``index.html`` shows the first overlays. Resume, sharding, locks and skipped files
are the runner's (:mod:`traitlens.runs.runner`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from traitlens.data.imageio import SkippedFiles
from traitlens.explain.engine import explain
from traitlens.report.overlay import overlay
from traitlens.runs.inputs import Item, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, Output, batched, run
from traitlens.runs.store import TMP_MARK, npy_bytes, png_bytes

MAPS = "maps.npz"
OVERLAYS = "overlays"
METHOD_TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                 "layercam": "Layer-CAM", "scorecam": "Score-CAM"}


def panel_strip(panels: Sequence[Tuple[np.ndarray, str]], min_side: int = 160) -> np.ndarray:
    """Panels side by side, each with its caption above it (small images are enlarged to ``min_side``)."""
    font = ImageFont.load_default()
    h, w = panels[0][0].shape[:2]
    scale = max(1, int(np.ceil(min_side / max(h, w))))
    ph, pw = h * scale, w * scale
    lines = max(len(c.split("\n")) for _, c in panels)
    top = 12 * lines + 6
    canvas = Image.new("RGB", (len(panels) * (pw + 4) + 4, ph + top + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, caption) in enumerate(panels):
        x = 4 + i * (pw + 4)
        tile = Image.fromarray(img).resize((pw, ph), Image.NEAREST if scale > 1 else Image.BILINEAR)
        canvas.paste(tile, (x, top))
        draw.multiline_text((x, 3), _fit(caption, pw), fill="black", font=font, spacing=2)
    return np.asarray(canvas)


def _fit(caption: str, width_px: int) -> str:
    chars = max(8, width_px // 6)
    return "\n".join(line if len(line) <= chars else line[:chars - 1] + "…" for line in caption.split("\n"))


def merge_maps(out: Path, records: Sequence[dict]) -> Optional[Path]:
    """``maps.npz`` (keys: image ids; values: A×h×w raw maps) from the records' ``maps/`` files, streamed
    into the archive one array at a time."""
    rows = [r for r in records if r.get("maps")]
    if not rows:
        return None
    target = Path(out) / MAPS
    tmp = Path(out) / f".{MAPS}{TMP_MARK}{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for r in rows:
            with zf.open(r["id"] + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.load(Path(out) / r["maps"]), allow_pickle=False)
    tmp.replace(target)
    return target


def write_gallery(out: Path, rows: Sequence[dict], title: str = "traitlens explain", limit: int = 200) -> Path:
    """``index.html``: the first ``limit`` overlays (by id) with their predictions, embedded offline."""
    from traitlens.report import Section, write_page

    s = Section(title, intro=f"{len(rows)} images explained"
                + (f"; the first {limit} are shown" if len(rows) > limit else "") + ". Each row: the image, "
                "the base CAM of the predicted class, and Finer-CAM against the most similar classes per α.")
    items: List[Tuple[str, str]] = []
    for r in rows[:limit]:
        items.append((str(Path(out) / r["overlay"]), f"{r['id']}: {r['prediction']} ({r['probability']:.2f})"))
    if items:
        s.gallery(items, columns=2)
    s.table([{"id": r["id"], "prediction": r["prediction"], "p": r["probability"],
              "references": ", ".join(x["class"] for x in r.get("references", []))} for r in rows[:limit]],
            caption="Predictions and the classes each explanation is compared with")
    return write_page(title, [s], Path(out) / "index.html")


def batch_records(paths: Sequence[str], probs: np.ndarray, target: np.ndarray, references: np.ndarray,
                  alphas: Iterable[float], scores: np.ndarray, method: str, class_names: Sequence[str]) -> List[dict]:
    """One record per image of a batch (probs B×K, target B, references B×k, scores A×B); the runner adds ``id``."""
    alphas = list(alphas)
    out = []
    for i, path in enumerate(paths):
        pred = int(probs[i].argmax())
        top = np.argsort(-probs[i])[:5]
        out.append({
            "path": str(path), "method": method,
            "prediction": class_names[pred], "prediction_index": pred, "probability": float(probs[i, pred]),
            "target": class_names[int(target[i])], "target_index": int(target[i]),
            "references": [{"class": class_names[int(r)], "index": int(r), "probability": float(probs[i, int(r)])}
                           for r in references[i] if r >= 0],
            "alpha": alphas, "scores": [float(s) for s in scores[:, i]],
            "top5": [{"class": class_names[int(c)], "probability": float(probs[i, int(c)])} for c in top],
        })
    return out


class ExplainJob(Job):
    """Explain batches of images with :func:`traitlens.explain.explain` (arguments as there)."""

    name = "explain"

    def __init__(self, model: torch.nn.Module, transform, class_names: Sequence[str], method: str = "gradcam",
                 finer: bool = True, alphas: Sequence[float] = (1.0,), references="logit-distance", k: int = 3,
                 target=None, traits=None, target_layer=None, batch_size: int = 32, save_maps: bool = False,
                 gallery: int = 200):
        self.model, self.transform, self.class_names = model, transform, list(class_names)
        self.method, self.finer, self.references, self.k = method, finer, references, k
        self.target, self.traits, self.target_layer = target, traits, target_layer
        self.batch_size, self.save_maps, self.gallery = batch_size, save_maps, gallery
        # The base CAM is Finer-CAM at α = 0: one sweep gives both panels.
        self.sweep: List[float] = ([0.0] + [a for a in alphas if a != 0.0]) if finer else [1.0]
        self.mean = torch.tensor(getattr(transform, "mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(transform, "std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)

    def settings(self) -> dict:
        refs = self.references if isinstance(self.references, str) else list(self.references)
        return {"method": ("finer-" if self.finer else "") + self.method, "alpha": self.sweep, "references": refs,
                "k": self.k, "target": self.target, "layer": self.target_layer, "save_maps": self.save_maps}

    def prepare(self, image, item: Item) -> torch.Tensor:
        x = self.transform(image)
        return x[0] if isinstance(x, tuple) else x  # 3×H×W

    def process(self, samples: Iterator[Tuple[Item, torch.Tensor]]) -> Iterator[Output]:
        for batch in batched(samples, self.batch_size):
            yield from self._batch(batch)

    def _batch(self, batch: List[Tuple[Item, torch.Tensor]]) -> Iterator[Output]:
        items = [it for it, _ in batch]
        images = torch.stack([x for _, x in batch])  # B×3×H×W
        e = explain(self.model, images, method=self.method, finer=self.finer, alpha=list(self.sweep),
                    target=self.target, references=self.references, k=self.k, traits=self.traits,
                    class_names=self.class_names, target_layer=self.target_layer)
        probs = e.probs.cpu().numpy()
        maps = e.maps.cpu().numpy()  # A×B×H×W
        raw = e.raw_maps.cpu().numpy()  # A×B×h×w
        pictures = ((images.cpu() * self.std + self.mean).clamp(0, 1) * 255).round().byte()
        pictures = pictures.permute(0, 2, 3, 1).numpy()  # B×H×W×3
        records = batch_records([str(it.path) for it in items], probs, e.target.cpu().numpy(),
                                e.references.cpu().numpy(), self.sweep, e.scores.cpu().numpy(),
                                ("finer-" if self.finer else "") + self.method, self.class_names)
        title = METHOD_TITLES.get(self.method, self.method)
        for i, (item, rec) in enumerate(zip(items, records)):
            panels = [(pictures[i], f"{item.path.name}\npred {rec['prediction']} ({rec['probability']:.2f})"),
                      (overlay(pictures[i], maps[0, i]), f"{title}\n{rec['target']}")]
            if self.finer:
                vs = ", ".join(f"{r['class']} ({r['probability']:.2f})" for r in rec["references"][:2])
                for ai, a in enumerate(self.sweep[1:], start=1):
                    panels.append((overlay(pictures[i], maps[ai, i]), f"Finer α={a:g}\nvs {vs}"))
            name = flat_name(item.id)
            rec["overlay"] = f"{OVERLAYS}/{name}.png"
            artifacts = {rec["overlay"]: png_bytes(panel_strip(panels))}
            if self.save_maps:
                rec["maps"] = f"maps/{name}.npy"
                artifacts[rec["maps"]] = npy_bytes(raw[:, i].astype(np.float32))
            yield item, rec, artifacts

    def finish(self, out: Path, records: List[dict]) -> dict:
        if self.save_maps:
            merge_maps(out, records)
        write_gallery(out, records, limit=self.gallery)
        return {}


def explain_images(model: torch.nn.Module, items: Sequence[Item], transform, out: Path,
                   class_names: Sequence[str], workers: int = 0, skipped: Optional[SkippedFiles] = None,
                   max_pixels: int = MAX_PIXELS, **options) -> dict:
    """Explain ``items`` into ``out`` (``options``: those of :class:`ExplainJob`); returns
    ``{"explained", "skipped_done", "unreadable", "out"}`` counts."""
    job = ExplainJob(model, transform, class_names, **options)
    counts = run(job, items, out, workers=workers, max_pixels=max_pixels, skipped=skipped)
    return {"explained": counts["done"], "skipped_done": counts["resumed"], "unreadable": counts["skipped"],
            "out": counts["out"]}
