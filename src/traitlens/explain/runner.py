"""Explain a folder of images in bulk: stream batches, write outputs, skip what is done, share the work.

Memory stays bounded by the batch size (images are decoded by a DataLoader and dropped after their
batch; raw maps go to chunks on disk). Each process of a torchrun job takes its
:func:`~traitlens.engine.distributed.shard` of the images not yet in ``results.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from traitlens.data.imageio import SkippedFiles, load_image
from traitlens.errors import BadImageError
from traitlens.explain.engine import explain
from traitlens.explain.outputs import (ResultWriter, batch_records, done_ids, image_id, merge_maps, panel_strip,
                                       write_gallery)
from traitlens.report.overlay import overlay

METHOD_TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                 "layercam": "Layer-CAM", "scorecam": "Score-CAM"}


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Tuple[Path, str]], transform):
        self.items, self.transform = list(items), transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, iid = self.items[i]
        try:
            image = load_image(path)
        except BadImageError as exc:
            return {"error": exc.reason, "path": str(path), "id": iid}
        x = self.transform(image)
        x = x[0] if isinstance(x, tuple) else x
        return {"image": x, "path": str(path), "id": iid}


def _collate(batch):
    good = [b for b in batch if "error" not in b]
    return {"image": torch.stack([b["image"] for b in good]) if good else None,
            "path": [b["path"] for b in good], "id": [b["id"] for b in good],
            "skipped": [(b["path"], b["error"]) for b in batch if "error" in b]}


def explain_images(model: nn.Module, items: Sequence[Tuple[Path, Optional[Path]]], transform, out: Path,
                   class_names: Sequence[str], method: str = "gradcam", finer: bool = True,
                   alphas: Sequence[float] = (1.0,), references="logit-distance", k: int = 3, target=None,
                   traits=None, target_layer=None, batch_size: int = 32, workers: int = 0,
                   save_maps: bool = False, gallery: int = 200, skipped: Optional[SkippedFiles] = None) -> dict:
    """Explain ``items`` (``(image path, input root or None)``) into ``out``; returns counts."""
    from traitlens.engine import distributed
    from traitlens.progress import progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skipped = skipped if skipped is not None else SkippedFiles()
    done = done_ids(out)
    # Shard the full list first, then skip what is done: every rank gets the same share whenever it reads
    # results.jsonl, so ranks that start at different moments never miss or repeat an image.
    mine = [(Path(p), image_id(Path(p), root)) for p, root in distributed.shard(list(items))]
    mine = [t for t in mine if t[1] not in done]
    already = len(done & {image_id(Path(p), root) for p, root in items})
    # The base CAM is Finer-CAM at α = 0: one sweep gives both panels.
    sweep: List[float] = ([0.0] if finer else []) + [a for a in alphas if not (finer and a == 0.0)]
    if not finer:
        sweep = [1.0]
    mean = torch.tensor(getattr(transform, "mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(getattr(transform, "std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    writer = ResultWriter(out, save_maps=save_maps, rank=distributed.rank())
    loader = torch.utils.data.DataLoader(_Images(mine, transform), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate)
    title = METHOD_TITLES.get(method, method)
    explained = 0
    try:
        for batch in progress(loader, desc="explain", unit="batch"):
            skipped.extend(batch["skipped"])
            if batch["image"] is None:
                continue
            e = explain(model, batch["image"], method=method, finer=finer, alpha=list(sweep), target=target,
                        references=references, k=k, traits=traits, class_names=class_names,
                        target_layer=target_layer)
            probs = e.probs.cpu().numpy()
            refs = e.references.cpu().numpy()
            maps = e.maps.cpu().numpy()  # A×B×H×W
            raw = e.raw_maps.cpu().numpy()
            pictures = ((batch["image"].cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
            records = batch_records(batch["id"], batch["path"], probs, e.target.cpu().numpy(), refs, sweep,
                                    e.scores.cpu().numpy(), ("finer-" if finer else "") + method, class_names)
            for i, rec in enumerate(records):
                pred = rec["prediction"]
                panels = [(pictures[i], f"{Path(rec['path']).name}\npred {pred} ({rec['probability']:.2f})")]
                panels.append((overlay(pictures[i], maps[0, i]), f"{title}\n{rec['target']}"))
                if finer:
                    vs = ", ".join(f"{r['class']} ({r['probability']:.2f})" for r in rec["references"][:2])
                    for ai, a in enumerate(sweep[1:], start=1):
                        panels.append((overlay(pictures[i], maps[ai, i]), f"Finer α={a:g}\nvs {vs}"))
                writer.add(rec, panel_strip(panels), raw[:, i])
            explained += len(records)
    finally:
        writer.close()
    distributed.barrier()
    if distributed.is_main():
        if save_maps:
            merge_maps(out)
        if skipped:
            skipped.write(out / "skipped.jsonl")
        write_gallery(out, limit=gallery)
    return {"explained": explained, "skipped_done": already, "unreadable": skipped.count,
            "out": str(out)}
