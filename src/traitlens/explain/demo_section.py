"""Demo section "What distinguishes sibling species": Grad-CAM vs Finer-CAM on sibling pairs, scored against
the diagnostic parts of ``traits.json``. The metric table and the overlays are cached under ``ctx.cache``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from traitlens.cache import recipe_key
from traitlens.report import Section

METHODS = "gradcam,finer-gradcam"
METRICS = ["drop", "contrastive_drop", "diagnostic_energy", "energy", "pointing", "deletion", "insertion"]
RECIPE = dict(methods=METHODS, metrics=METRICS, alpha=1.0, references="logit-distance", steps=10, limit=144, v=1)


def _dataset(ctx, model, meta):
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform

    return ImageFolderDataset(ctx.data, split="test", transform=eval_transform(model, config_from_meta(meta)),
                              classes=meta["class_names"], masks="auto")


def _table(ctx, kind: str) -> dict:
    from traitlens.data.folders import collate
    from traitlens.engine.checkpoint import load_model
    from traitlens.explain.evaluate import evaluate_explanations

    key = recipe_key(dict(RECIPE, checkpoint=str(ctx.checkpoints[kind]), seed=ctx.seed))
    path = Path(ctx.cache) / f"table-{kind}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    model, meta = load_model(ctx.checkpoints[kind], device=ctx.device)
    data = _dataset(ctx, model, meta)
    # An even spread over species: every k-th test image.
    step = max(1, len(data) // RECIPE["limit"])
    subset = torch.utils.data.Subset(data, list(range(0, len(data), step))[:RECIPE["limit"]])
    loader = torch.utils.data.DataLoader(subset, batch_size=48, collate_fn=collate)
    res = evaluate_explanations(model, loader, METHODS, metrics=METRICS, alpha=RECIPE["alpha"],
                                references=RECIPE["references"], steps=RECIPE["steps"], traits=ctx.traits,
                                class_names=meta["class_names"])
    payload = res.to_json()
    path.write_text(json.dumps(payload))
    return payload


def _pairs(ctx, kind: str, per_genus: int = 1):
    """(image, Grad-CAM overlay, Finer-CAM overlay, diagnostic mask) for one image of the first sibling pair of
    each genus, Finer-CAM comparing with that sibling."""
    from traitlens.engine.checkpoint import load_model
    from traitlens.explain import explain
    from traitlens.explain.metrics import diagnostic_masks, diagnostic_table
    from traitlens.explain.outputs import overlay

    key = recipe_key(dict(RECIPE, checkpoint=str(ctx.checkpoints[kind]), what="pairs"))
    path = Path(ctx.cache) / f"pairs-{kind}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return [tuple(z[f"{i}_{j}"] for j in range(4)) + (str(z[f"{i}_caption"]),)
                    for i in range(int(z["n"]))]
    model, meta = load_model(ctx.checkpoints[kind], device=ctx.device)
    data = _dataset(ctx, model, meta)
    names = meta["class_names"]
    traits = ctx.traits
    labels = [s[1] for s in data.samples]
    chosen = []
    for genus in traits.genera:
        species = traits.species_in(genus)[:2]
        if len(species) < 2:
            continue
        a, b = (names.index(traits.folder(s)) for s in species)
        idx = [i for i, y in enumerate(labels) if y == a][:per_genus]
        chosen += [(i, a, b) for i in idx]
    items = [data[i] for i, _, _ in chosen]
    x = torch.stack([it["image"] for it in items]).to(ctx.device)
    parts = torch.stack([it["mask"] for it in items])
    target = torch.tensor([a for _, a, _ in chosen], device=ctx.device)
    refs = torch.tensor([[b] for _, _, b in chosen], device=ctx.device)
    base = explain(model, x, finer=False, target=target)
    finer = explain(model, x, finer=True, alpha=1.0, target=target, references=refs)
    diag = diagnostic_masks(parts, target.cpu(), refs[:, 0].cpu(), diagnostic_table(traits, names))
    mean = torch.tensor(data.transform.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.transform.std).view(1, 3, 1, 1)
    pics = ((x.cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = []
    for i, (_, a, b) in enumerate(chosen):
        mask_img = np.where(diag[i].numpy()[..., None], np.array([255, 60, 60], np.uint8), pics[i] // 3)
        out.append((pics[i], overlay(pics[i], base.maps[i].cpu().numpy()),
                    overlay(pics[i], finer.maps[i].cpu().numpy()), mask_img.astype(np.uint8),
                    f"{names[a]} vs {names[b]}"))
    arrays = {"n": np.array(len(out))}
    for i, row in enumerate(out):
        for j in range(4):
            arrays[f"{i}_{j}"] = row[j]
        arrays[f"{i}_caption"] = np.array(row[4])
    np.savez_compressed(path, **arrays)
    return out


def demo_section(ctx) -> Section:
    from traitlens.explain.evaluate import bar_plots, EvaluationResult

    s = Section("What distinguishes sibling species",
                intro="Grad-CAM shows everything that supports a species' logit; Finer-CAM (α = 1) explains the "
                      "difference to the most similar species, T = Σ w_i (z_n − α z_r_i), and should light up the "
                      "traits that tell siblings apart. The red mask marks those diagnostic parts (traits.json).")
    kind = "cnn" if "cnn" in ctx.checkpoints else next(iter(k for k in ctx.checkpoints if not k.startswith("backbone")))
    gallery = []
    for pic, grad, fin, diag, caption in _pairs(ctx, kind):
        gallery += [(pic, caption), (diag, "diagnostic parts"), (grad, "Grad-CAM"), (fin, "Finer-CAM vs sibling")]
    s.gallery(gallery, columns=8, scale=2)
    table = _table(ctx, kind)
    rows = []
    for method, stats in table["summary"].items():
        row = {"method": method}
        for m in table["metrics"]:
            row[m] = stats[m]["mean"]
            row[f"{m} ±95%"] = stats[m]["ci95"]
        rows.append(row)
    s.table(rows, caption=f"Tiny {kind.upper()} classifier, {table['summary']['gradcam']['drop']['n']} test images: "
                          "relative / contrastive confidence drop after masking the top 5% (higher = more faithful), "
                          "energy on the diagnostic parts and on the specimen, pointing game, deletion (lower is "
                          "better) and insertion AUC; mean and 95% CI.")
    result = EvaluationResult(table["methods"], table["metrics"], table["per_image"])
    s.figure(bar_plots(result), caption="The same table as bars", width=720)
    g, f = table["summary"]["gradcam"], table["summary"]["finer-gradcam"]
    s.text(f"Measured here: diagnostic-part energy {g['diagnostic_energy']['mean']:.3f} (Grad-CAM) vs "
           f"{f['diagnostic_energy']['mean']:.3f} (Finer-CAM); top-5% relative confidence drop "
           f"{g['drop']['mean']:.3f} vs {f['drop']['mean']:.3f}; contrastive drop {g['contrastive_drop']['mean']:.3f} "
           f"vs {f['contrastive_drop']['mean']:.3f}. The diagnostic parts are small (about 1% of the pixels), and on "
           "these coarse 8×8 maps their energy share moves little; the faithfulness gain of the contrastive drop "
           "is the robust effect.", note=True)
    return s
