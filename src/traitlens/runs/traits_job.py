"""The traits job: which attention heads of a Prompt-CAM or INTR model find a class's traits (``traitlens traits``).

Per image: greedy head blurring for the class (``None``: the predicted class) with the model's
``identify_traits``, every head's map (``maps/<name>.npy``, heads×h×w float32, the head order of the model),
overlays of the top heads (``overlays/<name>_rank<r>_head<h>.png``) and one record in ``results.jsonl``; at
the end a gallery (``index.html``) of each image and its top heads. Resume, sharding, locks and skipped
files are the runner's.

The overlays are drawn on the photo itself (its own resolution, up to ``DISPLAY_MAX`` px), through the model's
crop. Head rankings mean something only when the model has learnt and blurring moves its output: the summary's
``warnings`` (printed by the CLI, shown on the page) say so when the model is at chance (mean top probability
under :data:`CHANCE_FACTOR` × 1/K) or when blurring any number of heads moves the class probability by less than
:data:`NO_EFFECT` on most images; the files that could not be read are listed on the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from traitlens.data.imageio import SkippedFiles, load_image
from traitlens.errors import BadImageError
from traitlens.data.transforms import SpecimenTransform, map_to_input
from traitlens.report.overlay import blend
from traitlens.runs.inputs import Item, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, Output, batched, run
from traitlens.runs.store import npy_bytes, png_bytes

GALLERY = 200  # images shown in index.html (a page of 100,000 embedded images would not open)
DISPLAY_MAX = 1024  # longer side of the overlays (drawn at the photo's own resolution up to this)
#: A model whose mean top probability is under CHANCE_FACTOR / K is "at chance" (an untrained INTR gives 1/K).
CHANCE_FACTOR = 1.5
#: Blurring that moves the class probability by less than this on an image "changes nothing" there.
NO_EFFECT = 0.01


class TraitsJob(Job):
    """Rank each image's heads for ``target`` (a class index; ``None``: the prediction), keep the ``top``."""

    name = "traits"
    outputs = ("maps", "overlays", "index.html")

    def __init__(self, model: torch.nn.Module, transform, class_names: Sequence[str], target: Optional[int] = None,
                 top: int = 4, stop: bool = True, batch_size: int = 16, title: str = ""):
        self.model, self.transform, self.names = model, transform, list(class_names)
        self.target, self.top, self.stop, self.batch_size, self.title = target, top, stop, batch_size, title
        self.heads = int(model.num_heads)
        self.device = next(model.parameters()).device

    def settings(self) -> dict:
        return {"class": self.target, "top_heads": self.top, "stop": self.stop}

    def prepare(self, image, item: Item) -> Tuple[torch.Tensor, dict]:
        """The model's input (3×H×W) and what to draw on: the photo (≤ DISPLAY_MAX px) and the crop between."""
        width, height = image.size
        if isinstance(self.transform, SpecimenTransform):
            x, _, geometry = self.transform.with_geometry(image)
        else:  # another callable: the overlays are drawn on the image resized to the model's input
            x, geometry = self.transform(image)[0], None
        shrink = min(1.0, DISPLAY_MAX / max(width, height))
        shown = image if shrink == 1 else image.resize((max(1, round(width * shrink)), max(1, round(height * shrink))))
        if geometry is None:
            shown = image.resize((x.shape[-1], x.shape[-2]))
        return x, {"picture": np.asarray(shown), "geometry": geometry, "size": (height, width)}

    def process(self, samples: Iterator[Tuple[Item, Tuple[torch.Tensor, np.ndarray]]]) -> Iterator[Output]:
        for batch in batched(samples, self.batch_size):
            yield from self._batch(batch)

    def _batch(self, batch) -> Iterator[Output]:
        images = torch.stack([x for _, (x, _) in batch]).to(self.device)  # B×3×H×W
        with torch.no_grad():
            probs = self.model(images).softmax(1)
            classes = probs.argmax(1) if self.target is None else torch.full_like(probs[:, 0], self.target).long()
            found = self.model.identify_traits(images, classes, top_k=self.top,
                                               stop_on_misclassification=self.stop)
        for i, (item, (_, view)) in enumerate(batch):
            name = flat_name(item.id)
            maps = found.maps[i].float().cpu().numpy().astype(np.float32)  # heads×h×w
            ranked = found.ranked_heads[i].tolist()
            artifacts = {f"maps/{name}.npy": npy_bytes(maps)}
            tiles = []
            picture = view["picture"]
            top = torch.from_numpy(maps[ranked[:self.top]])  # T×h×w, the heads drawn
            if view["geometry"] is not None:
                drawn, seen = map_to_input(top, view["geometry"], view["size"], picture.shape[:2])
            else:
                drawn = torch.nn.functional.interpolate(top[None], size=picture.shape[:2], mode="bilinear",
                                                        align_corners=False)[0]
                seen = torch.ones(picture.shape[:2], dtype=torch.bool)
            lo = drawn[:, seen].amin(1)[:, None, None]
            hi = drawn[:, seen].amax(1)[:, None, None]
            drawn = ((drawn - lo) / (hi - lo + 1e-12)).numpy()  # each head's map min-max scaled over the photo
            for rank, h in enumerate(ranked[:self.top]):
                tile = f"overlays/{name}_rank{rank + 1}_head{h}.png"
                artifacts[tile] = png_bytes(blend(picture, drawn[rank], seen.numpy()))
                tiles.append(tile)
            c = int(found.classes[i])
            record = {
                "path": str(item.path), "class": self.names[c], "class_index": c,
                "predicted": self.names[int(probs[i].argmax())], "probability": float(probs[i, c]),
                "ranked_heads": ranked, "kept_heads": found.kept(i), "num_kept": int(found.num_kept[i]),
                "target_prob_after_blurs": [float(v) for v in found.target_prob[i]],
                "top_probability": float(probs[i].max()), "num_classes": int(probs.shape[1]),
                "blur_effect": float((found.target_prob[i] - found.target_prob[i, :1]).abs().max()),
                "maps": f"maps/{name}.npy", "overlays": tiles,
            }
            yield item, record, artifacts

    def finish(self, out: Path, records: List[dict]) -> dict:
        from traitlens.report import Section, write_page

        counts = np.zeros(self.heads, dtype=int)
        for r in records:
            counts[r["ranked_heads"][0]] += 1
        gallery = []
        for r in records[:GALLERY]:
            try:
                picture = load_image(r["path"], max_size=256)
            except BadImageError:
                picture = None  # the input changed since its record was written; its overlays remain
            if picture is not None:
                gallery.append((np.asarray(picture), f"{Path(r['path']).name}: {r['class']} (p={r['probability']:.2f})"))
            gallery += [(str(out / t), f"rank {k + 1}: head {r['ranked_heads'][k]}") for k, t in enumerate(r["overlays"])]
        shown = f"; the first {GALLERY} images are shown" if len(records) > GALLERY else ""
        section = Section(f"Trait-detecting heads{self.title}",
                          intro=f"{len(records)} images; heads ranked by greedy blurring, the top {self.top} shown "
                                f"per image{shown}.")
        warnings = trust_warnings(records)
        for w in warnings:
            section.text("Warning: " + w)
        section.gallery(gallery, columns=self.top + 1)
        section.table([{"head": h, "ranked first on": int(counts[h])} for h in range(self.heads)],
                      caption="How often each head was the most important one")
        sections = [section]
        skipped = list(SkippedFiles.read(out / "skipped.jsonl")) if (out / "skipped.jsonl").exists() else []
        if skipped:
            listed = Section("Files that could not be read", intro=f"{len(skipped)} file(s), also in skipped.jsonl.")
            listed.table([{"file": path, "reason": reason} for path, reason in skipped[:100]],
                         caption="The first 100" if len(skipped) > 100 else "")
            sections.append(listed)
        write_page("traitlens traits", sections, out / "index.html")
        return {"images": len(records), "heads": self.heads, "top_head_counts": counts.tolist(),
                "warnings": warnings}


def trust_warnings(records: Sequence[dict]) -> List[str]:
    """Why the head rankings of ``records`` may mean nothing: a model at chance, blurring without effect."""
    rows = [r for r in records if "top_probability" in r]
    if not rows:
        return []
    out = []
    k = rows[0]["num_classes"]
    mean_top = float(np.mean([r["top_probability"] for r in rows]))
    if mean_top < CHANCE_FACTOR / k:
        out.append(f"the model is at chance: its mean top probability is {mean_top:.3f} on {k} classes (chance "
                   f"{1 / k:.3f}), so the head ranking means nothing; train it first")
    still = sum(r["blur_effect"] < NO_EFFECT for r in rows)
    if still > len(rows) / 2:
        out.append(f"blurring heads changes the class probability by less than {NO_EFFECT} on {still} of "
                   f"{len(rows)} images: the ranking of those heads is arbitrary")
    return out


def traits_images(model: torch.nn.Module, items: Sequence[Item], transform, out: Path, class_names: Sequence[str],
                  workers: int = 0, max_pixels: int = MAX_PIXELS, skipped: Optional[SkippedFiles] = None,
                  run_options: Optional[dict] = None, restart: bool = False, **options) -> dict:
    """Rank the heads on ``items`` into ``out`` (``options``: those of :class:`TraitsJob`); returns the
    runner's counts, on rank 0 with ``images``, ``heads`` and ``top_head_counts`` over all records.
    ``run_options``/``restart``: as :func:`traitlens.runs.runner.run`'s ``options``/``restart``."""
    return run(TraitsJob(model, transform, class_names, **options), items, out, workers=workers,
               max_pixels=max_pixels, skipped=skipped, options=run_options, restart=restart)
