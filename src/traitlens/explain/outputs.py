"""What ``traitlens explain`` writes: overlay PNGs, ``results.jsonl``, ``maps.npz`` and a gallery page.

A run over a large folder keeps its memory bounded (images stream through in batches; raw maps are
flushed to numbered ``maps/`` chunks) and is resumable: ``results.jsonl`` is appended one line per
finished image, and a rerun skips every image id already there. Several processes (torchrun) can
share one output folder: each takes its :func:`~traitlens.engine.distributed.shard` of the images and
appends whole lines (one ``write`` each, O_APPEND), and map chunks carry the rank in their name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RESULTS = "results.jsonl"
MAPS = "maps.npz"
OVERLAYS = "overlays"


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


def image_id(path: Path, root: Optional[Path]) -> str:
    """A stable id: the path relative to its input root, without the extension (``class/img001``)."""
    path = Path(path)
    rel = path.relative_to(root) if root is not None and root in path.parents else Path(path.name)
    return rel.with_suffix("").as_posix()


def done_ids(out: Path) -> set:
    """Ids already in ``out/results.jsonl`` (a torn last line from a crash is ignored)."""
    path = Path(out) / RESULTS
    done = set()
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                done.add(json.loads(line)["id"])
            except (ValueError, KeyError):
                continue
    return done


class ResultWriter:
    """Appends records and overlays as images finish; buffers raw maps into bounded chunks."""

    def __init__(self, out: Path, save_maps: bool = False, rank: int = 0, chunk: int = 2048):
        self.out = Path(out)
        (self.out / OVERLAYS).mkdir(parents=True, exist_ok=True)
        self.save_maps = save_maps
        self.rank = rank
        self.chunk = chunk
        self._maps: Dict[str, np.ndarray] = {}
        self._fd = os.open(self.out / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        existing = sorted((self.out / "maps").glob(f"rank{rank}-*.npz")) if (self.out / "maps").exists() else []
        self._seq = len(existing)

    def overlay_path(self, image_id_: str) -> Path:
        return self.out / OVERLAYS / (image_id_.replace("/", "__") + ".png")

    def add(self, record: dict, strip: np.ndarray, raw_maps: Optional[np.ndarray] = None) -> None:
        """Write one image's overlay, then its record (so a listed id always has its PNG)."""
        path = self.overlay_path(record["id"])
        Image.fromarray(strip).save(path, optimize=False, compress_level=3)
        record = dict(record, overlay=path.relative_to(self.out).as_posix())
        if self.save_maps and raw_maps is not None:
            self._maps[record["id"]] = raw_maps.astype(np.float32)
            if len(self._maps) >= self.chunk:
                self.flush_maps()
        os.write(self._fd, (json.dumps(record) + "\n").encode("utf-8"))

    def flush_maps(self) -> None:
        if not self._maps:
            return
        folder = self.out / "maps"
        folder.mkdir(exist_ok=True)
        tmp = folder / f"rank{self.rank}-{self._seq:05d}.tmp.npz"
        np.savez(tmp, **self._maps)
        tmp.replace(folder / f"rank{self.rank}-{self._seq:05d}.npz")
        self._seq += 1
        self._maps = {}

    def close(self) -> None:
        self.flush_maps()
        os.close(self._fd)


def merge_maps(out: Path) -> Optional[Path]:
    """Join the ``maps/`` chunks into ``maps.npz`` (keys: image ids; values: A×h×w raw maps)."""
    folder = Path(out) / "maps"
    chunks = sorted(folder.glob("rank*-*.npz")) if folder.exists() else []
    chunks = [c for c in chunks if not c.name.endswith(".tmp.npz")]
    if not chunks:
        return None
    merged: Dict[str, np.ndarray] = {}
    for c in chunks:
        with np.load(c) as z:
            merged.update({k: z[k] for k in z.files})
    target = Path(out) / MAPS
    tmp = Path(out) / "maps.tmp.npz"
    np.savez_compressed(tmp, **merged)
    tmp.replace(target)
    return target


def read_results(out: Path) -> List[dict]:
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def write_gallery(out: Path, title: str = "traitlens explain", limit: int = 200) -> Path:
    """``index.html``: the first ``limit`` overlays (by id) with their predictions, embedded offline."""
    from traitlens.report import Section, write_page

    rows = sorted(read_results(out), key=lambda r: r["id"])
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


def batch_records(ids: Sequence[str], paths: Sequence[str], probs: np.ndarray, target: np.ndarray,
                  references: np.ndarray, alphas: Iterable[float], scores: np.ndarray, method: str,
                  class_names: Sequence[str]) -> List[dict]:
    """One ``results.jsonl`` record per image of a batch (probs B×K, references B×k, scores A×B)."""
    alphas = list(alphas)
    out = []
    for i, (iid, path) in enumerate(zip(ids, paths)):
        pred = int(probs[i].argmax())
        top = np.argsort(-probs[i])[:5]
        out.append({
            "id": iid, "path": str(path), "method": method,
            "prediction": class_names[pred], "prediction_index": pred, "probability": float(probs[i, pred]),
            "target": class_names[int(target[i])], "target_index": int(target[i]),
            "references": [{"class": class_names[int(r)], "index": int(r), "probability": float(probs[i, int(r)])}
                           for r in references[i] if r >= 0],
            "alpha": alphas, "scores": [float(s) for s in scores[:, i]],
            "top5": [{"class": class_names[int(c)], "probability": float(probs[i, int(c)])} for c in top],
        })
    return out
