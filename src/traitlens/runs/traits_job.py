"""The traits job: which attention heads of a Prompt-CAM or INTR model find a class's traits (``traitlens traits``).

Per image: greedy head blurring for the class (``None``: the predicted class) with the model's
``identify_traits``, every head's map (``maps/<name>.npy``, heads×h×w float32, the head order of the model),
overlays of the top heads (``overlays/<name>_rank<r>_head<h>.png``) and one record in ``results.jsonl``; at
the end a gallery (``index.html``) of each image and its top heads. Resume, sharding, locks and skipped
files are the runner's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from traitlens.data.imageio import SkippedFiles, load_image
from traitlens.errors import BadImageError
from traitlens.report.overlay import overlay
from traitlens.runs.inputs import Item, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, Output, batched, run
from traitlens.runs.store import npy_bytes, png_bytes

GALLERY = 200  # images shown in index.html (a page of 100,000 embedded images would not open)


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

    def prepare(self, image, item: Item) -> Tuple[torch.Tensor, np.ndarray]:
        x, _ = self.transform(image)  # 3×H×W
        return x, np.asarray(image.resize((x.shape[-1], x.shape[-2])))  # and the H×W×3 picture it shows

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
        for i, (item, (_, shown)) in enumerate(batch):
            name = flat_name(item.id)
            maps = found.maps[i].float().cpu().numpy().astype(np.float32)  # heads×h×w
            ranked = found.ranked_heads[i].tolist()
            artifacts = {f"maps/{name}.npy": npy_bytes(maps)}
            tiles = []
            for rank, h in enumerate(ranked[:self.top]):
                tile = f"overlays/{name}_rank{rank + 1}_head{h}.png"
                artifacts[tile] = png_bytes(overlay(shown, maps[h], normalise=True))
                tiles.append(tile)
            c = int(found.classes[i])
            record = {
                "path": str(item.path), "class": self.names[c], "class_index": c,
                "predicted": self.names[int(probs[i].argmax())], "probability": float(probs[i, c]),
                "ranked_heads": ranked, "kept_heads": found.kept(i), "num_kept": int(found.num_kept[i]),
                "target_prob_after_blurs": [float(v) for v in found.target_prob[i]],
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
        section.gallery(gallery, columns=self.top + 1)
        section.table([{"head": h, "ranked first on": int(counts[h])} for h in range(self.heads)],
                      caption="How often each head was the most important one")
        write_page("traitlens traits", [section], out / "index.html")
        return {"images": len(records), "heads": self.heads, "top_head_counts": counts.tolist()}


def traits_images(model: torch.nn.Module, items: Sequence[Item], transform, out: Path, class_names: Sequence[str],
                  workers: int = 0, max_pixels: int = MAX_PIXELS, skipped: Optional[SkippedFiles] = None,
                  run_options: Optional[dict] = None, restart: bool = False, **options) -> dict:
    """Rank the heads on ``items`` into ``out`` (``options``: those of :class:`TraitsJob`); returns the
    runner's counts, on rank 0 with ``images``, ``heads`` and ``top_head_counts`` over all records.
    ``run_options``/``restart``: as :func:`traitlens.runs.runner.run`'s ``options``/``restart``."""
    return run(TraitsJob(model, transform, class_names, **options), items, out, workers=workers,
               max_pixels=max_pixels, skipped=skipped, options=run_options, restart=restart)
