"""Demo section: Prompt-CAM and INTR trained on the synthetic collection, and the heads that find traits.

Prompt-CAM runs on the frozen embedded tiny ViT (only prompts and scorer train); INTR puts a tiny
DETR-style transformer on the same pretrained ViT and fine-tunes everything. Both train through the
engine; runs and scores are cached under ``ctx.cache`` so a second demo run only draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# CPU scale for the demo (2 cores): a few epochs each on the 12-species collection.
RUNS = {
    "prompt-cam": dict(method="prompt-cam", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3,
                       batch_size=32, epochs=8, warmup_epochs=1, scheduler="cosine",
                       method_options={"mode": "deep"}),
    "intr": dict(method="intr", optimizer="adamw", lr=1e-3, backbone_lr_scale=0.1, weight_decay=1e-4,
                 grad_clip=0.1, batch_size=32, epochs=8, warmup_epochs=1, scheduler="cosine",
                 method_options={"d_model": 64, "num_heads": 4, "num_encoder_layers": 1,
                                 "num_decoder_layers": 2, "dim_feedforward": 128, "dropout": 0.0}),
}


def _backbone_run(ctx) -> Path:
    run = ctx.checkpoints.get("backbone-vit")
    if run is None:
        from traitlens.backbones.embedded import embedded_backbone

        run = embedded_backbone("vit", device=ctx.device, progress=False)
    return Path(run)


def train_and_score(ctx, name: str) -> dict:
    """Train (or reuse) one model on ``ctx.data`` and score it on the test split; cached as JSON."""
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.engine.checkpoint import config_from_meta, load_model
    from traitlens.engine.config import load_config
    from traitlens.engine.train import eval_transform, fit
    from traitlens.models.trait_scores import score_dataset

    cache = Path(ctx.cache)
    record = cache / f"{name}.json"
    run = cache / name
    if record.is_file() and (run / "model.json").is_file():
        return json.loads(record.read_text())
    config = load_config(None, **RUNS[name], backbone="tiny-vit", weights=str(_backbone_run(ctx)),
                         data=str(ctx.data), out=str(run), device=ctx.device, amp="off", seed=ctx.seed)
    ctx.log(f"demo: training {name} on {ctx.data}")
    fit(config, progress=False)
    model, meta = load_model(run, device=ctx.device)
    test = ImageFolderDataset(ctx.data, "test", transform=eval_transform(model, config_from_meta(meta)))
    scores = score_dataset(model, test, ctx.traits, meta["class_names"], seed=ctx.seed, device=ctx.device)
    scores["run"] = str(run)
    record.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def _gallery(ctx, name: str, run: Path, per_species: int = 1, top: int = 3):
    """(overlay, caption) tiles: each species' first test image through its true class's top heads."""
    from traitlens.cli.traits import overlay
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.data.imageio import load_image
    from traitlens.engine.checkpoint import config_from_meta, load_model
    from traitlens.engine.train import eval_transform

    model, meta = load_model(run, device=ctx.device)
    test = ImageFolderDataset(ctx.data, "test", transform=eval_transform(model, config_from_meta(meta)))
    seen, picks = {}, []
    for i, label in enumerate(test.targets):
        if seen.get(label, 0) < per_species:
            seen[label] = seen.get(label, 0) + 1
            picks.append(i)
    tiles = []
    with torch.no_grad():
        for i in picks:
            sample = test[i]
            x = sample["image"][None].to(ctx.device)
            found = model.identify_traits(x, torch.tensor([sample["label"]]), top_k=top)
            shown = np.asarray(load_image(sample["path"]).resize(tuple(x.shape[-1:-3:-1])))
            species = meta["class_names"][sample["label"]]
            tiles.append((shown, species))
            for r, h in enumerate(found.ranked_heads[0, :top].tolist()):
                tiles.append((overlay(shown, found.maps[0, h].float().cpu().numpy()), f"{name} rank {r + 1}: head {h}"))
    return tiles


def demo_section(ctx):
    from traitlens.report import Section

    section = Section(
        "Prompt-CAM and INTR: classifiers that show their traits",
        intro="Each class gets its own query into the image: Prompt-CAM adds class prompts to a frozen ViT "
              "(the embedded tiny ViT), INTR a class query per species to a DETR-style decoder. Greedy head "
              "blurring ranks the attention heads by how much the true class needs them; the best head should "
              "look at the parts that tell a species from its siblings.")
    results = {name: train_and_score(ctx, name) for name in RUNS}
    section.table([{"model": name, "test top-1": r["top1"], "best head trait share / uniform": r["trait_ratio"],
                    "p drop, top 10% removed": r["drop_top"], "p drop, random 10% removed": r["drop_random"],
                    "images": r["n"]} for name, r in results.items()],
                  caption="Accuracy and faithfulness on the test split. Trait share: attention of the true "
                          "class's best head on the species' diagnostic parts, relative to their area.")
    rows = []
    for name, r in results.items():
        for s in r["per_species"]:
            rows.append({"model": name, "species": s["species"], "top head": s["top_head"],
                         "share of images": s["top_head_share"], "trait share / uniform": s["trait_ratio"]})
    section.table(rows, caption="The head ranked first most often for each species")
    for name, r in results.items():
        section.gallery(_gallery(ctx, name, Path(r["run"])), columns=4)
    return section
