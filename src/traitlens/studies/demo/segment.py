"""The demo's segmentation section: one labelled specimen per species segments the others (SST), birds and
then a small butterfly collection (turned and mirrored queries too), with a picture of the butterfly and
beetle body plans.

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
    _butterflies(ctx, s)
    return s


def _butterflies(ctx, s: Section) -> None:
    """The small butterfly collection beside the birds, and a picture of the butterfly and beetle plans."""
    from traitlens.studies.recipes import plan_segmentation

    settings = asdict(replace(plan_segmentation("butterfly", "standard"), seed=int(ctx.seed)))
    cache = memo_path(ctx.cache, "butterfly-segment-gallery", settings)
    cache.mkdir(parents=True, exist_ok=True)
    r = memo_json(ctx.cache, "butterfly-segment", settings, lambda: segment_plan(settings, cache))
    plans = cache / "plans.png"
    if not plans.exists():
        draw_plans(plans, seed=int(ctx.seed))
    s.text(f"Butterflies and beetles (traitlens data synth --body-plan butterfly|beetle): wing patterns as real "
           f"wings carry them (forewing bands, hindwing bars and rays, discal and marginal spots, some under 3% of "
           f"the image side wide), and beetles with head, pronotum, elytra, legs and antennae; sibling species "
           f"differ in one or two pattern elements.")
    s.figure(plans, caption="Top: butterfly specimens and their part maps; bottom: beetles (colours: part ids)")
    poses = ", ".join(f"{p} {v:.3f}" for p, v in r["poses"].items() if p not in ("upright", "upright-subset"))
    s.text(f"{r['queries']} butterflies at {settings['size']} px segmented from one support per species: trait mIoU "
           f"{r['miou']:.3f} vs {r['miou_copy']:.3f} for copy-the-mask; thin traits {r['thin_iou']:.3f}. The same "
           f"queries turned or mirrored (one per species): {poses} (upright {r['poses']['upright-subset']:.3f}): "
           "registration searches every rotation and mirror image.")
    s.table([{"part": p["part"], "IoU": p["iou"], "IoU (copy the mask)": p["iou_copy"]} for p in r["parts"]],
            caption="Butterflies: per-part IoU")
    s.gallery([(cache / name, caption) for name, caption in r["gallery"]], columns=2)


def draw_plans(path: Path, seed: int = 0, n: int = 4, size: int = 128) -> Path:
    """A PNG of ``n`` butterflies and ``n`` beetles (any orientation) above their part-label maps."""
    from PIL import Image

    from traitlens.data.synthetic import SynthConfig, generate_arrays
    from traitlens.data.traits import colourise_parts

    rows = []
    for plan in ("butterfly", "beetle"):
        cfg = SynthConfig(species=n, per_species=1, size=size, seed=seed, body_plan=plan, rotation=180.0,
                          split=(1.0, 0.0, 0.0))
        images, labels, _ = generate_arrays(cfg, "train")
        rows += [np.concatenate(list(images), axis=1), np.concatenate(list(colourise_parts(labels)), axis=1)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


# ------------------------------------------------------------------------------ other body plans, any pose
THIN_SHARE = 0.03  # a trait instance thinner than this share of the image side is a "thin trait"


def posed(image: torch.Tensor, labels: torch.Tensor, pose: str, pairs, rng: np.random.Generator):
    """A query frame ``3×H×W`` and its label map ``H×W`` in another pose: ``"90"``/``"180"``/``"270"``
    (quarter turns), ``"mirror"`` (left/right ``pairs`` swap: a mirrored specimen keeps "left" for the part on
    its left) or ``"resampled"`` (any angle by resampling the frame; the border colours fill the corners,
    labels 0 there). :func:`segment_plan`'s ``"random"`` pose instead renders the same specimen again at an
    angle drawn over the full circle (no resampling blur)."""
    import math

    import torch.nn.functional as F

    if pose in ("90", "180", "270"):
        k = int(pose) // 90
        return torch.rot90(image, k, (1, 2)), torch.rot90(labels, k, (0, 1))
    if pose == "mirror":
        swap = torch.arange(256)
        for a, b in pairs:
            swap[a], swap[b] = b, a
        return image.flip(2), swap[labels.flip(1)]
    if pose != "resampled":
        raise ValueError(f"unknown pose {pose!r}")
    a = float(rng.uniform(0, 2 * math.pi))
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]])
    grid = F.affine_grid(theta, (1, 3, *image.shape[-2:]), align_corners=False)
    im = F.grid_sample(image[None], grid, padding_mode="border", align_corners=False)[0]
    lb = F.grid_sample(labels[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0].long()
    return im, lb


def segment_plan(settings: dict, cache: Path) -> dict:
    """Segment a butterfly or beetle collection (:class:`~traitlens.studies.recipes.PlanSegmentation` as a
    dict): trait mIoU upright and per pose, thin-trait IoU, copy-the-support baseline, per-part IoU,
    images/s; the gallery's PNGs go to ``cache``."""
    from PIL import Image

    from dataclasses import replace as replaced

    from traitlens.data.synthetic import SynthConfig, body_plan, generate_arrays, make_taxonomy, render_batch
    from traitlens.report.overlay import overlay_labels
    from traitlens.segment.features import ColourPositionFeatures
    from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
    from traitlens.segment.metrics import confusion, iou_from_confusion, mean_iou
    from traitlens.segment.support import WORK_BOUNDS, trait_widths
    from traitlens.segment.tracking import track

    size, per_species = settings["size"], settings["per_species"]
    cfg = SynthConfig(species=settings["species"], per_species=per_species, size=size, seed=settings["seed"],
                      split=(1 / per_species, 0.0, 1 - 1 / per_species), body_plan=settings["plan"],
                      rotation=settings["rotation"])
    table = make_taxonomy(cfg)
    plan = body_plan(table)
    tr_i, tr_l, tr_s = generate_arrays(cfg, "train", table)
    te_i, te_l, te_s = generate_arrays(cfg, "test", table)
    # "random": the very same specimens rendered at an angle uniform over the full circle (the rotation is one
    # draw of each image's stream whatever its range, so geometry, background and lighting stay the same)
    n_pose = settings["pose_queries"]
    test_ids = list(cfg.split_indices("test"))[:n_pose]
    anywhere = render_batch(table, [(sp, i) for sp in range(table.num_species) for i in test_ids],
                            replaced(cfg, rotation=180.0)) if "random" in settings["poses"] else None
    k = plan.num_parts
    frame = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255  # noqa: E731
    auto = settings["work"] == "auto"
    side = WORK_BOUNDS[0] if auto else int(settings["work"])
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(
        work_size=(side, side), align=True, local=settings["local"], mirror_pairs=plan.mirror_pairs,
        auto_work=WORK_BOUNDS if auto else None))
    poses = ["upright"] + list(settings["poses"])
    cms = {p: torch.zeros(k, k, dtype=torch.long) for p in poses + ["upright-subset"]}
    cm_copy = torch.zeros(k, k, dtype=torch.long)
    thin_inter, thin_union, thin_n = 0, 0, 0
    gallery, work_sides = [], []
    rng = np.random.default_rng(settings["seed"])
    start, predictions = time.time(), 0
    for sp in range(table.num_species):
        s = int(np.where(tr_s == sp)[0][0])
        support = (frame(tr_i[s]), torch.from_numpy(tr_l[s].astype(np.int64)))
        idx = [int(i) for i in np.where(te_s == sp)[0]]
        subset = set(idx[:settings["pose_queries"]])
        queries, truths = [], {}
        for i in idx:
            truth = torch.from_numpy(te_l[i].astype(np.int64))
            queries.append((f"upright/{i}", frame(te_i[i])))
            truths[f"upright/{i}"] = truth
            for p in settings["poses"]:
                if i in subset and p == "random":
                    j = sp * n_pose + idx.index(i)
                    im, lb = frame(anywhere[0][j]), torch.from_numpy(anywhere[1][j].astype(np.int64))
                    queries.append((f"{p}/{i}", im))
                    truths[f"{p}/{i}"] = lb
                elif i in subset:
                    im, lb = posed(frame(te_i[i]), truth, p, plan.mirror_pairs, rng)
                    queries.append((f"{p}/{i}", im))
                    truths[f"{p}/{i}"] = lb
        for qid, soft in track(prop, [support], queries, order="pairwise", num_labels=k):
            pose, i = qid.split("/")[0], int(qid.split("/")[1])
            pred, truth = soft.argmax(0), truths[qid]
            cm = confusion(pred, truth, k)
            cms[pose] += cm
            predictions += 1
            if pose == "upright":
                cm_copy += confusion(support[1], truth, k)
                if i in subset:
                    cms["upright-subset"] += cm
                for t, width in trait_widths(truth, max_width=THIN_SHARE * size).items():
                    if width < THIN_SHARE * size:
                        p_t, g_t = pred == t, truth == t
                        thin_inter += int((p_t & g_t).sum())
                        thin_union += int((p_t | g_t).sum())
                        thin_n += 1
            if i == idx[0] and pose in ("upright", "180"):
                path = cache / f"{settings['plan']}{sp:02d}-{pose}.png"
                q = (queries[[q for q, _ in queries].index(qid)][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                row = np.concatenate([overlay_labels(tr_i[s], tr_l[s]), q, overlay_labels(q, pred.numpy()),
                                      overlay_labels(q, truth.numpy())], axis=1)
                Image.fromarray(row).save(path)
                gallery.append((path.name, f"{table.names[sp]} ({pose}): support, query, predicted, truth"))
        work_sides.append(int(prop.options.work_size[0]))
    seconds = time.time() - start
    per, per_copy = iou_from_confusion(cms["upright"]), iou_from_confusion(cm_copy)
    names = {int(p.id): p.name for p in table.parts}
    return {"settings": settings, "plan": settings["plan"], "queries": int(len(te_i)), "predictions": predictions,
            "seconds": seconds, "images_per_s": predictions / max(seconds, 1e-9), "work_sides": work_sides,
            "miou": mean_iou(per), "miou_copy": mean_iou(per_copy),
            "poses": {p: mean_iou(iou_from_confusion(cms[p])) for p in poses + ["upright-subset"]},
            "thin_iou": thin_inter / max(thin_union, 1), "thin_instances": thin_n,
            "parts": [{"id": i, "part": names.get(i, str(i)), "iou": float(per[i]), "iou_copy": float(per_copy[i])}
                      for i in range(1, k) if not torch.isnan(per[i])],
            "gallery": gallery}
