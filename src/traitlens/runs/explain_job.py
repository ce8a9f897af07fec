"""The explain job: Finer-CAM overlays, raw maps, records and a gallery for a collection (``traitlens explain``).

Per image: ``overlays/<name>.png`` (the photo at its own resolution, up to :data:`DISPLAY_MAX` px, then the base
CAM and Finer-CAM per α drawn back through the model's crop, a colour bar; captions in a font with α), with
``--save-maps`` its raw maps ``maps/<name>.npy`` (A×h×w float32, A the α sweep), and one record in
``results.jsonl``. At the end ``maps.npz`` (key: image id; the documented file other tools read) is built
from the records' maps, and ``index.html`` shows the first overlays. Resume, sharding, locks and skipped files
are the runner's (:mod:`traitlens.runs.runner`).

Each record also says whether the prediction looks **out of domain**: the maximum softmax probability (MSP,
Hendrycks & Gimpel 2017) below ``ood_threshold`` (default :data:`OOD_THRESHOLD`) sets ``out_of_domain``; the
energy score ``-logsumexp(logits)`` (Liu et al. 2020; higher = less familiar) is recorded beside it. An image
in a folder named after a class (``<class>/<image>``) has that class as its true ``label``, and ``correct``
says whether the prediction matches it. Images whose shorter side is under half the model's input are listed
as ``small_input`` (one warning per run): they are upsampled, their maps are coarse.
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
from traitlens.data.transforms import SpecimenTransform, map_to_input
from traitlens.report.overlay import blend, colorbar_strip, label_font
from traitlens.runs.inputs import Item, class_from_folder, display_name, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, Output, batched, run
from traitlens.runs.store import TMP_MARK, npy_bytes, png_bytes

MAPS = "maps.npz"
OVERLAYS = "overlays"
#: Overlays are drawn at the photo's own resolution up to this longer side (a 24 Mpx photo would make a
#: 100 MB strip).
DISPLAY_MAX = 1024
#: An image whose shorter side is under this fraction of the model's input side is "far below" it.
SMALL_FRACTION = 0.5
#: Default maximum-softmax threshold under which a prediction is flagged out of domain (the model gives its
#: own top class less than half the probability).
OOD_THRESHOLD = 0.5
METHOD_TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                 "layercam": "Layer-CAM", "scorecam": "Score-CAM"}


def panel_strip(panels: Sequence[Tuple[np.ndarray, str]], min_side: int = 160, colorbar: bool = True,
                alert: Sequence[bool] = ()) -> np.ndarray:
    """Panels side by side, each with its caption above it (wrapped to the panel's width, never cut), and a
    colour bar on the right. Small images are enlarged to ``min_side``; ``alert[i]``: caption ``i`` in red."""
    font = label_font()
    h, w = panels[0][0].shape[:2]
    scale = max(1, int(np.ceil(min_side / max(h, w))))
    ph, pw = h * scale, w * scale
    captions = [_wrap(c, pw, font) for _, c in panels]
    line_h = font.size + 3
    top = line_h * max(len(c) for c in captions) + 6
    bar = colorbar_strip(ph) if colorbar else np.zeros((ph, 0, 3), np.uint8)
    canvas = Image.new("RGB", (len(panels) * (pw + 4) + 4 + bar.shape[1], ph + top + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((img, _), lines) in enumerate(zip(panels, captions)):
        x = 4 + i * (pw + 4)
        tile = Image.fromarray(img).resize((pw, ph), Image.NEAREST if scale > 1 else Image.BILINEAR)
        canvas.paste(tile, (x, top))
        colour = "#c00000" if i < len(alert) and alert[i] else "black"
        for n, line in enumerate(lines):
            draw.text((x, 3 + n * line_h), line, fill=colour, font=font)
    if bar.shape[1]:
        canvas.paste(Image.fromarray(bar), (4 + len(panels) * (pw + 4), top))
    return np.asarray(canvas)


def _wrap(caption: str, width_px: int, font) -> List[str]:
    """``caption``'s lines wrapped at spaces to ``width_px`` (a word wider than that is split, not cut)."""
    out: List[str] = []
    for line in caption.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if font.getlength(trial) <= width_px:
                current = trial
                continue
            if current:
                out.append(current)
            while font.getlength(word) > width_px and len(word) > 1:  # split the long word where it must
                cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width_px or i == 1))
                out.append(word[:cut])
                word = word[cut:]
            current = word
        out.append(current)
    return out


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

    flagged = sum(bool(r.get("out_of_domain")) for r in rows)
    wrong = sum(r.get("correct") is False for r in rows)
    labelled = sum(r.get("correct") is not None for r in rows)
    s = Section(title, intro=f"{len(rows)} images explained"
                + (f"; the first {limit} are shown" if len(rows) > limit else "") + ". Each row: the image, "
                "the base CAM of the predicted class, and Finer-CAM against the most similar classes per α. "
                + (f"{wrong} of {labelled} images with a known class (their folder's) are predicted wrongly "
                   "(captions in red). " if labelled else "")
                + (f"{flagged} prediction(s) look out of domain (maximum softmax probability under the "
                   "threshold): the model may never have seen anything like these images." if flagged else ""))
    items: List[Tuple[str, str]] = []
    for r in rows[:limit]:
        note = " · WRONG" if r.get("correct") is False else ""
        note += " · out of domain?" if r.get("out_of_domain") else ""
        items.append((str(Path(out) / r["overlay"]), f"{r['id']}: {r['prediction']} ({r['probability']:.2f}){note}"))
    if items:
        s.gallery(items, columns=2)
    s.table([{"id": r["id"], "true": r.get("label") or "", "prediction": r["prediction"], "p": r["probability"],
              "out of domain": "yes" if r.get("out_of_domain") else "",
              "references": ", ".join(x["class"] for x in r.get("references", []))} for r in rows[:limit]],
            caption="Predictions (true class from the image's folder, when it names one) and the classes each "
                    "explanation is compared with")
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
    outputs = (OVERLAYS, "maps", MAPS, "index.html")

    def __init__(self, model: torch.nn.Module, transform, class_names: Sequence[str], method: str = "gradcam",
                 finer: bool = True, alphas: Sequence[float] = (1.0,), references="logit-distance", k: int = 3,
                 target=None, traits=None, target_layer=None, batch_size: int = 32, save_maps: bool = False,
                 gallery: int = 200, ood_threshold: float = OOD_THRESHOLD):
        self.model, self.transform, self.class_names = model, transform, list(class_names)
        self.method, self.finer, self.references, self.k = method, finer, references, k
        self.target, self.traits, self.target_layer = target, traits, target_layer
        self.batch_size, self.save_maps, self.gallery = batch_size, save_maps, gallery
        self.ood_threshold = float(ood_threshold)
        self.warned_small = False
        # The base CAM is Finer-CAM at α = 0: one sweep gives both panels.
        self.sweep: List[float] = ([0.0] + [a for a in alphas if a != 0.0]) if finer else [1.0]
        self.mean = torch.tensor(getattr(transform, "mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(transform, "std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)

    def settings(self) -> dict:
        refs = self.references if isinstance(self.references, str) else list(self.references)
        return {"method": ("finer-" if self.finer else "") + self.method, "alpha": self.sweep, "references": refs,
                "k": self.k, "target": self.target, "layer": self.target_layer, "save_maps": self.save_maps,
                "transform": repr(self.transform), "ood_threshold": self.ood_threshold}

    def prepare(self, image, item: Item) -> dict:
        """The model's input (3×H×W), the photo to draw on (≤ DISPLAY_MAX px) and the crop between them."""
        width, height = image.size
        if isinstance(self.transform, SpecimenTransform):
            x, _, geometry = self.transform.with_geometry(image)
        else:  # another callable: no geometry, the overlay is drawn on the model's input
            x, geometry = self.transform(image), None
            x = x[0] if isinstance(x, tuple) else x
        shrink = min(1.0, DISPLAY_MAX / max(width, height))
        shown = image if shrink == 1 else image.resize((max(1, round(width * shrink)), max(1, round(height * shrink))),
                                                       Image.BILINEAR)
        return {"x": x, "picture": np.asarray(shown) if geometry is not None else None, "geometry": geometry,
                "size": (height, width)}

    def process(self, samples: Iterator[Tuple[Item, torch.Tensor]]) -> Iterator[Output]:
        for batch in batched(samples, self.batch_size):
            yield from self._batch(batch)

    def _batch(self, batch: List[Tuple[Item, dict]]) -> Iterator[Output]:
        from traitlens.progress import log

        items = [it for it, _ in batch]
        images = torch.stack([s["x"] for _, s in batch])  # B×3×H×W
        e = explain(self.model, images, method=self.method, finer=self.finer, alpha=list(self.sweep),
                    target=self.target, references=self.references, k=self.k, traits=self.traits,
                    class_names=self.class_names, target_layer=self.target_layer)
        probs = e.probs.cpu().numpy()
        energy = (-torch.logsumexp(e.logits.float(), dim=1)).cpu().numpy()  # B; higher: less familiar
        maps = e.maps.detach().float().cpu()  # A×B×H×W
        raw = e.raw_maps.cpu().numpy()  # A×B×h×w
        inputs = ((images.cpu() * self.std + self.mean).clamp(0, 1) * 255).round().byte()
        inputs = inputs.permute(0, 2, 3, 1).numpy()  # B×H×W×3: what the model saw, when there is no geometry
        records = batch_records([str(it.path) for it in items], probs, e.target.cpu().numpy(),
                                e.references.cpu().numpy(), self.sweep, e.scores.cpu().numpy(),
                                ("finer-" if self.finer else "") + self.method, self.class_names)
        title = METHOD_TITLES.get(self.method, self.method)
        side = min(images.shape[-2:])
        for i, (item, rec) in enumerate(zip(items, records)):
            sample = batch[i][1]
            label = class_from_folder(item.path, self.class_names)
            rec["label"] = None if label is None else self.class_names[label]
            rec["correct"] = None if label is None else bool(rec["prediction_index"] == label)
            rec["energy"] = float(energy[i])
            rec["out_of_domain"] = bool(rec["probability"] < self.ood_threshold)
            rec["size"] = [int(v) for v in sample["size"]]
            rec["small_input"] = bool(min(sample["size"]) < SMALL_FRACTION * side)
            if rec["small_input"] and not self.warned_small:
                self.warned_small = True
                log(f"{item.path} is {sample['size'][1]}×{sample['size'][0]} px, far below the model's "
                    f"{images.shape[-1]}×{images.shape[-2]} input: it is upsampled and its maps are coarse "
                    "(further such images are listed in results.jsonl as small_input, without this warning)")
            if sample["geometry"] is not None:
                picture = sample["picture"]
                drawn, seen = map_to_input(maps[:, i], sample["geometry"], sample["size"], picture.shape[:2])
                drawn, seen = drawn.numpy(), seen.numpy()
            else:
                picture, drawn, seen = inputs[i], maps[:, i].numpy(), None
            head = f"{item.path.name}\npred {display_name(rec['prediction'])} ({rec['probability']:.2f})"
            if rec["label"] is not None:
                head += f"\ntrue {display_name(rec['label'])}" + ("" if rec["correct"] else " (WRONG)")
            if rec["out_of_domain"]:
                head += f"\nout of domain? max p {rec['probability']:.2f} < {self.ood_threshold:g}"
            panels = [(picture, head), (blend(picture, drawn[0], seen), f"{title}\n{display_name(rec['target'])}")]
            if self.finer:
                vs = ", ".join(f"{display_name(r['class'])} ({r['probability']:.2f})" for r in rec["references"][:2])
                for ai, a in enumerate(self.sweep[1:], start=1):
                    panels.append((blend(picture, drawn[ai], seen), f"Finer-CAM α = {a:g}\nvs {vs}"))
            name = flat_name(item.id)
            rec["overlay"] = f"{OVERLAYS}/{name}.png"
            alert = [rec["correct"] is False or rec["out_of_domain"]]
            artifacts = {rec["overlay"]: png_bytes(panel_strip(panels, alert=alert))}
            if self.save_maps:
                rec["maps"] = f"maps/{name}.npy"
                artifacts[rec["maps"]] = npy_bytes(raw[:, i].astype(np.float32))
            yield item, rec, artifacts

    def finish(self, out: Path, records: List[dict]) -> dict:
        if self.save_maps:
            merge_maps(out, records)
        write_gallery(out, records, limit=self.gallery)
        return {"out_of_domain": sum(bool(r.get("out_of_domain")) for r in records),
                "wrong": sum(r.get("correct") is False for r in records),
                "labelled": sum(r.get("correct") is not None for r in records),
                "small_inputs": sum(bool(r.get("small_input")) for r in records)}


def explain_images(model: torch.nn.Module, items: Sequence[Item], transform, out: Path,
                   class_names: Sequence[str], workers: int = 0, skipped: Optional[SkippedFiles] = None,
                   max_pixels: int = MAX_PIXELS, run_options: Optional[dict] = None, restart: bool = False,
                   **options) -> dict:
    """Explain ``items`` into ``out`` (``options``: those of :class:`ExplainJob`); returns
    ``{"explained", "skipped_done", "unreadable", "out"}`` counts. ``run_options``/``restart``: as
    :func:`traitlens.runs.runner.run`'s ``options``/``restart``."""
    job = ExplainJob(model, transform, class_names, **options)
    counts = run(job, items, out, workers=workers, max_pixels=max_pixels, skipped=skipped, options=run_options,
                 restart=restart)
    summary = {"explained": counts["done"], "skipped_done": counts["resumed"], "unreadable": counts["skipped"],
               "out": counts["out"]}
    summary.update({k: counts[k] for k in ("out_of_domain", "wrong", "labelled", "small_inputs") if k in counts})
    return summary
