"""What the page's handlers compute, without gradio: the values each tab shows, from the explorer,
the collection and the segmentation project (unit-tested in ``tests/app`` without a browser).

One :class:`AppSession` serves every browser tab of one app: the model and the project folder are
shared, what one visitor looks at (:class:`View`: the current image and its kept gradients) travels in
the page's state. Model runs are serialised by a lock (the CAM hook and the parameters' grad flags are
per model); the α slider never takes it.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from traitlens.app.collection import Collection
from traitlens.app.explorer import COMPARISONS, METHOD_TITLES, Explorer, MapCache
from traitlens.app.project import (SegmentProject, brush_colour, labels_from_layers, layer_from_labels,
                                   parse_parts, part_colours, parts_text, read_label_map)
from traitlens.errors import UserError
from traitlens.report.overlay import overlay, overlay_labels

RESULTS_SHOWN = 60


@dataclass
class View:
    """One visitor's current explanation: the kept gradients, the display image and where it came from."""

    cache: MapCache
    display: np.ndarray            # H'×W'×3 uint8: the model's input as shown
    input_size: Tuple[int, int]    # (H, W) of the model input
    name: str                      # the image's id or file name
    seconds: float = 0.0           # the model run's time (forward + backward)


class AppSession:
    """The app's state and computations. ``project``: the Segment tab's folder (created on first save)."""

    def __init__(self, explorer: Explorer, collection: Collection, project: SegmentProject,
                 work: Optional[Path] = None, title: str = ""):
        self.explorer, self.collection, self.project = explorer, collection, project
        self.atlas = None  # an AtlasView when the app is started with --atlas
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="traitlens-app-"))
        self.title = title or Path(str(explorer.meta.get("run_dir", ""))).name or explorer.method
        self._model_lock = threading.Lock()
        self._project_lock = threading.Lock()

    # --------------------------------------------------------------------------------- Explain
    def grid(self, query: str = "") -> Tuple[List[Tuple[str, str]], List[str]]:
        """The thumbnail grid for ``query``: ``[(thumbnail path, caption)]`` and the ids in the same order."""
        hits = self.collection.search(query)
        return ([(str(self.collection.thumbnail(s)), s.species or s.id) for s in hits], [s.id for s in hits])

    def collection_ids(self) -> List[str]:
        return [s.id for s in self.collection.items]

    def image_path(self, current: dict) -> Tuple[Path, str]:
        if current.get("id"):
            spec = self.collection.get(current["id"])
            return spec.path, spec.id
        if current.get("path"):
            return Path(current["path"]), Path(current["path"]).name
        raise UserError("choose an image first")

    def view(self, current: dict, method: str = "gradcam", target: Optional[str] = None,
             comparison: str = next(iter(COMPARISONS)), chosen: Sequence[str] = ()) -> View:
        """Run the model once on the current image: the :class:`View` every α is drawn from."""
        if comparison not in COMPARISONS:
            raise UserError(f"unknown comparison {comparison!r}; choose one of {', '.join(COMPARISONS)}")
        path, name = self.image_path(current)
        x, display = self.explorer.load(path)
        with self._model_lock:
            t0 = time.perf_counter()
            cache = self.explorer.gradients(x, method=method, target=target, comparison=COMPARISONS[comparison],
                                            classes=list(chosen or []))
            seconds = time.perf_counter() - t0
        return View(cache, display, tuple(x.shape[-2:]), name, seconds)

    def render(self, view: View, alpha: float) -> np.ndarray:
        """The Finer-CAM overlay at ``alpha`` (H'×W'×3 uint8): a recombination of kept gradients."""
        heat = view.cache.map(float(alpha), view.display.shape[:2]).cpu().numpy()
        return overlay(view.display, heat)

    def explain(self, current: dict, alpha: float, method: str, target: Optional[str], comparison: str,
                chosen: Sequence[str]):
        """The Explain tab's outputs: base CAM, Finer-CAM at α, top-5, a caption, the view, the image.

        For a model without CAM maps (Prompt-CAM, INTR) only the top-5 and a caption saying why."""
        if self.explorer.cam_problem:
            path, name = self.image_path(current)
            x, _ = self.explorer.load(path)
            with self._model_lock:
                logits = self.explorer.logits(x)
            return None, None, self.explorer.top(logits), f"**{name}**: {self.explorer.cam_problem}.", None, current
        view = self.view(current, method, target, comparison, chosen)
        return (self.render(view, 0.0), self.render(view, alpha), self.explorer.top(view.cache.logits),
                self.caption(view, alpha), view, current)

    def rerender(self, view: Optional[View], alpha: float, current=None):
        """α moved: the Finer-CAM overlay and caption again, without a model run."""
        if view is None:
            return None, "Choose an image from the collection, or upload one."
        return self.render(view, alpha), self.caption(view, alpha)

    def caption(self, view: View, alpha: float) -> str:
        ex, c = self.explorer, view.cache
        refs = ex.names(c.references)
        title = METHOD_TITLES.get(c.method, c.method)
        truth = self.collection.true_class(view.name)
        return (f"**{view.name}**{f' (true: {truth})' if truth else ''}: {title} of **{ex.names(c.target)[0]}** "
                f"and Finer-CAM against {', '.join(refs) or 'no class'} at α = {float(alpha):.2f} "
                f"(layer `{c.layer}`, model run {view.seconds * 1000:.0f} ms).")

    def save_map(self, view: Optional[View], alpha: float, current=None) -> List[str]:
        """Write the Finer-CAM overlay (PNG) and the map (``.npy``: H×W float32 in [0, 1] at the model's
        input size, as ``Explanation.maps``) for download; returns both paths."""
        from PIL import Image

        if view is None:
            raise UserError("choose an image first")
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", view.name.rsplit(".", 1)[0]) + f".finer-alpha{float(alpha):.2f}"
        out = self.work / "downloads"
        out.mkdir(parents=True, exist_ok=True)
        png, npy = out / f"{stem}.png", out / f"{stem}.npy"
        Image.fromarray(self.render(view, alpha)).save(png)
        np.save(npy, view.cache.map(float(alpha), view.input_size).cpu().numpy().astype(np.float32),
                allow_pickle=False)
        return [str(png), str(npy)]

    # ----------------------------------------------------------------------------------- Heads
    def heads(self, current: Optional[dict], cls: str, top_k: int = 4):
        """The Heads tab: ``[(per-head overlay, caption)]``, the trait heads' mean overlay, a caption."""
        if not current:
            raise UserError("choose an image in the Explain tab first")
        path, name = self.image_path(current)
        x, display = self.explorer.load(path)
        if cls == "(true class)":
            cls = self.collection.true_class(current.get("id"))
            if cls is None:
                raise UserError("an uploaded image has no true class; choose a class")
        elif cls == "(predicted)":
            cls = None
        with self._model_lock:
            found, logits = self.explorer.heads(x, cls, top_k=int(top_k))
        maps = found.maps[0].float().cpu().numpy()  # H×h×w
        kept = found.kept(0)
        rank = {h: i for i, h in enumerate(kept)}
        tiles = []
        for h in range(maps.shape[0]):
            tile = overlay(display, maps[h], normalise=True)
            caption = f"head {h}"
            if h in rank:
                tile = _frame(tile, (220, 30, 30))
                caption += f" · trait head #{rank[h] + 1}"
            tiles.append((tile, caption))
        mean = overlay(display, found.aggregate()[0].float().cpu().numpy(), normalise=True)
        c = self.explorer.class_names[int(found.classes[0])]
        pred = self.explorer.class_names[int(logits.argmax(1))]
        prob = found.target_prob[0]
        text = (f"**{name}** through the prompt of **{c}** (predicted: {pred}). Trait heads: "
                f"{', '.join(str(h) for h in kept) or 'none'}; p({c}) {float(prob[0]):.3f} with every head, "
                f"{float(prob[len(prob) - 1 - len(kept)]):.3f} with only the trait heads left.")
        return tiles, mean, text

    # --------------------------------------------------------------------------------- Segment
    def parts_text(self) -> str:
        if self.project.parts:
            return parts_text(self.project.parts)
        traits = self.explorer.traits
        if traits is not None:
            return parts_text({int(p.id): p.name for p in traits.parts if int(p.id) > 0})
        return "1: part 1"

    def brush_colours(self, text: str) -> List[str]:
        parts = parse_parts(text) or {1: "part 1"}
        colours = part_colours(max(parts))
        return [brush_colour(colours[i]) for i in sorted(parts)]

    def legend_markdown(self, text: str) -> str:
        parts = parse_parts(text) or {1: "part 1"}
        colours = part_colours(max(parts))
        return "Brush colours: " + " · ".join(
            f"<span style='color:{brush_colour(colours[i])}'>■</span> {i} {n}" for i, n in sorted(parts.items()))

    def canvas(self, image_path, labels: Optional[np.ndarray] = None) -> dict:
        """The editor's value: the image as background and ``labels`` (H×W) as a painted layer."""
        from traitlens.data.imageio import load_image
        from traitlens.errors import BadImageError

        try:
            rgb = np.asarray(load_image(image_path))
        except BadImageError as exc:
            raise UserError(f"{Path(str(exc.path)).name}: {exc.reason}") from None
        background = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
        layers = [] if labels is None else [layer_from_labels(labels)]
        composite = background.copy()
        if labels is not None:
            composite[..., :3] = overlay_labels(rgb, labels, alpha=1.0)
        return {"background": background, "layers": layers, "composite": composite}

    def support_canvas(self, support_id: Optional[str]):
        """The support specimen was chosen: the editor with its image, and where it came from."""
        if not support_id:
            return None, None, self.project_markdown()
        spec = self.collection.get(support_id)
        value = self.canvas(spec.path)
        return value, str(spec.path), self.project_markdown(f"Paint the parts of {spec.id}, or upload its label map.")

    def upload_labels(self, file, canvas_source: Optional[str], text: str):
        """An uploaded label map for the chosen support: the editor shows it as a painted layer; parts named
        in it but not in the list are added."""
        if not canvas_source:
            raise UserError("choose the support specimen first, then upload its label map")
        from traitlens.data.imageio import load_image

        size = load_image(canvas_source).size
        labels = read_label_map(file, (size[1], size[0]))
        parts = parse_parts(text)
        for pid in sorted(int(i) for i in np.unique(labels) if i > 0):
            parts.setdefault(pid, f"part {pid}")
        return self.canvas(canvas_source, labels), parts_text(parts)

    def labels_from_editor(self, value: Optional[dict], canvas_source: Optional[str], text: str) -> np.ndarray:
        """The editor's painted layers → the support's H×W label map (at the image's own size)."""
        from PIL import Image

        from traitlens.data.imageio import load_image

        if not canvas_source or not value:
            raise UserError("choose the support specimen first")
        size = load_image(canvas_source).size
        parts = parse_parts(text) or {1: "part 1"}
        layers = [np.asarray(la) for la in (value.get("layers") or []) if la is not None]
        fitted = []
        for layer in layers:
            if layer.ndim == 3 and layer.shape[2] == 3:  # a layer without alpha: painted where not black
                layer = np.concatenate([layer, np.where(layer.any(-1), 255, 0).astype(np.uint8)[..., None]], -1)
            if layer.shape[:2] != (size[1], size[0]):  # the canvas was drawn at another size
                layer = np.asarray(Image.fromarray(layer.astype(np.uint8)).resize(size, Image.NEAREST))
            fitted.append(layer)
        labels = labels_from_layers(fitted, max(parts), shape=(size[1], size[0]))
        if not labels.any():
            raise UserError("the mask is empty: paint at least one part, or upload a label map")
        return labels

    def add_support(self, value: Optional[dict], canvas_source: Optional[str], text: str) -> str:
        labels = self.labels_from_editor(value, canvas_source, text)
        with self._project_lock:
            self.project.parts.update(parse_parts(text))
            n = self.project.add_support(canvas_source, labels)
            self.project.save()
        areas = {int(i): int((labels == i).sum()) for i in np.unique(labels) if i > 0}
        return self.project_markdown(f"Support {n} added ({Path(canvas_source).name}; pixels per part: {areas}).")

    def clear_supports(self) -> str:
        with self._project_lock:
            self.project.remove_supports()
            self.project.save()
        return self.project_markdown("No supports: choose a specimen and give its mask.")

    def propagate(self, folder: str, on_progress: Optional[Callable[[int, int], None]] = None):
        """Propagate the supports to ``folder``: the results gallery and a summary line."""
        folder = Path(str(folder or self.collection.root)).expanduser()
        if not folder.is_dir():
            raise UserError(f"folder to propagate to not found: {folder}")
        with self._project_lock:
            t0 = time.perf_counter()
            summary = self.project.propagate(folder, on_progress=on_progress, device=str(self.explorer.device))
            seconds = time.perf_counter() - t0
        gallery = self.result_gallery()
        note = (f"Propagated to {summary['done'] + summary['resumed']} images of {folder} "
                f"({summary['done']} new, {summary['resumed']} already done, {summary['skipped']} unreadable) in "
                f"{seconds:.1f} s → `{summary['out']}`.")
        return gallery, self.project_markdown(note)

    def result_gallery(self) -> List[Tuple[np.ndarray, str]]:
        from PIL import Image

        items = []
        for r in self.project.results()[:RESULTS_SHOWN]:
            if r.get("overlay") and Path(r["overlay"]).exists():
                items.append((np.asarray(Image.open(r["overlay"]).convert("RGB")), r["id"]))
        return items

    def fix_result(self, index: Optional[int]):
        """A result was chosen: the editor with its image and its predicted label map, ready to be fixed."""
        from traitlens.data.imageio import load_mask

        records = self.project.results()[:RESULTS_SHOWN]
        if index is None or not 0 <= int(index) < len(records):
            raise UserError("choose a result of the last propagation")
        r = records[int(index)]
        labels = load_mask(r["labels"])
        note = (f"Fix the mask of {r['id']} with the brush and the eraser, then *Add as support* and *Propagate* "
                "again.")
        return self.canvas(r["file"], labels), r["file"], self.project_markdown(note)

    def save_project(self) -> str:
        with self._project_lock:
            path = self.project.save()
        how = (f" In bulk: `bash {self.project.folder / 'segment.sh'}`." if (self.project.folder / "segment.sh").exists()
               else "")
        return self.project_markdown(f"Saved `{path}`.{how}")

    def project_markdown(self, note: str = "") -> str:
        p = self.project
        supports = ", ".join(Path(s.get("source", s["image"])).name for s in p.supports) or "none yet"
        return (f"{note}\n\nProject `{p.folder}` · supports: {supports} · last run: "
                f"{p.last_run or 'none'}").strip()


def _frame(tile: np.ndarray, colour, width: int = 4) -> np.ndarray:
    out = tile.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
    return out
