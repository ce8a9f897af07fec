"""The demo's segmentation section: one labelled specimen per species segments the others (SST).

Uses its own small synthetic collection (the demo's species and taxonomy, rendered at 128 px, :data:`traitlens.studies.recipes.SEGMENTATION`, so that
small traits are several pixels wide), label propagation with registration on colour/position features, and
the "copy the support mask" baseline. Results and overlays are cached under ``ctx.cache`` by :mod:`traitlens.studies.memo`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from traitlens.report import Section
from traitlens.studies.memo import memo_json, memo_path
from traitlens.studies.recipes import SEGMENTATION


def _settings(ctx) -> dict:
    recipe = replace(SEGMENTATION, seed=int(ctx.seed), species=int(getattr(ctx.traits, "num_species", 12) or 12))
    return asdict(recipe)


def segment_specimens(settings: dict, cache: Path) -> dict:
    """Segment the specimens of the :class:`~traitlens.studies.recipes.Segmentation` ``settings`` (as a dict);
    the gallery's PNGs go to ``cache``. Returns mIoU, copy-the-mask mIoU, per-part IoU, seconds."""
    from PIL import Image

    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy
    from traitlens.segment.features import ColourPositionFeatures
    from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
    from traitlens.segment.metrics import confusion, iou_from_confusion, mean_iou
    from traitlens.report.overlay import overlay_labels
    from traitlens.segment.tracking import track

    size, per_species = settings["size"], settings["per_species"]
    cfg = SynthConfig(species=settings["species"], per_species=per_species, size=size, seed=settings["seed"],
                      split=(1 / per_species, 0.0, 1 - 1 / per_species))
    table = make_taxonomy(cfg)
    tr_i, tr_l, tr_s = generate_arrays(cfg, "train", table)
    te_i, te_l, te_s = generate_arrays(cfg, "test", table)
    k = 1 + int(max(tr_l.max(), te_l.max()))
    frame = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255  # noqa: E731
    prop = LabelPropagation(ColourPositionFeatures(),
                            LabelPropOptions(work_size=(size, size), align=True, local=settings["local"]))
    cm, cm_copy = torch.zeros(k, k, dtype=torch.long), torch.zeros(k, k, dtype=torch.long)
    gallery = []
    start = time.time()
    for sp in range(table.num_species):
        s = int(np.where(tr_s == sp)[0][0])
        support = (frame(tr_i[s]), torch.from_numpy(tr_l[s].astype(np.int64)))
        queries = [(str(i), frame(te_i[i])) for i in np.where(te_s == sp)[0]]
        for n, (qid, soft) in enumerate(track(prop, [support], queries, order="pairwise", num_labels=k)):
            i = int(qid)
            pred = soft.argmax(0)
            truth = torch.from_numpy(te_l[i].astype(np.int64))
            cm += confusion(pred, truth, k)
            cm_copy += confusion(support[1], truth, k)
            if n == 0:
                path = cache / f"species{sp:02d}.png"
                row = np.concatenate([overlay_labels(tr_i[s], tr_l[s]), te_i[i], overlay_labels(te_i[i], pred.numpy()),
                                      overlay_labels(te_i[i], te_l[i].astype(np.int64))], axis=1)
                Image.fromarray(row).save(path)
                gallery.append((path.name, f"{table.names[sp]}: support, query, predicted, truth"))
    seconds = time.time() - start
    per, per_copy = iou_from_confusion(cm), iou_from_confusion(cm_copy)
    names = {int(p.id): p.name for p in table.parts}
    return {"settings": settings, "queries": int(len(te_i)), "seconds": seconds,
            "miou": mean_iou(per), "miou_copy": mean_iou(per_copy),
            "parts": [{"id": i, "part": names.get(i, str(i)), "iou": float(per[i]), "iou_copy": float(per_copy[i])}
                      for i in range(1, k) if not torch.isnan(per[i])],
            "gallery": gallery}


def demo_section(ctx) -> Section:
    settings = _settings(ctx)
    cache = memo_path(ctx.cache, "segment-gallery", settings)  # the gallery's PNGs, beside the figures
    cache.mkdir(parents=True, exist_ok=True)
    result = memo_json(ctx.cache, "segment", settings, lambda: segment_specimens(settings, cache))
    s = Section("Segmenting traits by tracking (SST)",
                intro="One labelled specimen per species is the support; its part map is propagated to the "
                      "species' other specimens, which differ in pose (rotation ±35°, scale, position), shape "
                      "jitter, lighting and background. Label propagation (DINO protocol: top-5 of "
                      "exp(f·f/0.1)) on colour and position features, after registering the support onto "
                      "each query, with the query's own frame border as background and an edge-aware clean-up on the "
                      "query; the baseline copies the support's mask unchanged.")
    s.text(f"{result['queries']} specimens at {settings['size']} px segmented in {result['seconds']:.0f} s: trait mIoU "
           f"{result['miou']:.3f} with label propagation vs {result['miou_copy']:.3f} for copy-the-mask.")
    s.table([{"part": p["part"], "IoU": p["iou"], "IoU (copy the mask)": p["iou_copy"]} for p in result["parts"]],
            caption="Per-part IoU over all segmented specimens")
    s.gallery([(cache / name, caption) for name, caption in result["gallery"]], columns=2)
    return s
