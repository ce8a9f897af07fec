"""The papers' claims, measured: one function per claim, at a scale (:data:`~traitlens.studies.recipes.SCALES`)
and a seed, memoized under ``$TRAITLENS_CACHE/claims``.

Each function returns the figures its claim is judged on; the claims tests (``tests/claims``) assert the
direction of each effect with a margin at ``tiny`` scale (``make test``) and the published figures at
``broad`` scale (``make claims``), for every seed of the recipe.

    >>> from traitlens.studies import claims
    >>> claims.segmentation("tiny", seed=1)["miou"]        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from traitlens.cache import cache_dir
from traitlens.studies.memo import TRAINING, memo_json, memo_path
from traitlens.studies.recipes import Training, check_scale, finer_cam as finer_cam_recipe
from traitlens.studies.recipes import FINER_CAM_EVALUATION, interpretable as interpretable_recipe
from traitlens.studies.recipes import calibration as calibration_recipe
from traitlens.studies.recipes import segmentation as segmentation_recipe

def _root() -> Path:
    return cache_dir("claims")


def _collection(recipe) -> Path:
    from traitlens.studies.demo import collection

    return collection(recipe, progress=False)


def _train(run: Path, data: Path, preset: str, recipe: Training, seed: int) -> Path:
    """The ``preset`` trained from random weights on ``data`` with ``recipe`` into ``run``."""
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import train

    config = TrainConfig(data=str(data), out=str(run), backbone=preset, seed=seed, device="cpu", amp="off",
                         **recipe.config())
    train(config, progress=False)  # returns at once for a finished run, resumes an interrupted one
    return run


# ------------------------------------------------------------------------------------------ Finer-CAM
def _finer_cam_figures(run: Path, data: Path, traits, settings: str) -> dict:
    """Grad-CAM → Finer-CAM on every test image of ``data``: for each claim metric [Grad-CAM mean, Finer-CAM
    mean, share of images where Finer-CAM is higher], and the classifier's accuracy and scored images."""
    from traitlens.data.folders import collate
    from traitlens.explain.evaluate import evaluate_explanations, recommended_settings
    from traitlens.methods import load_model
    from traitlens.studies.demo import test_split

    protocol = FINER_CAM_EVALUATION
    model, meta = load_model(run)
    model.eval()
    test = test_split(data, model, meta)
    batch = collate([test[i] for i in range(len(test))])
    chosen = recommended_settings(model, batch["image"].shape[-2:]) if settings == "recommended" else {}
    # pair_drop: the relative drop measured against the compared sibling (why the CNN's relative drop falls:
    # tests/claims/test_finer_cam.py).
    metrics = list(protocol.claim_metrics) + [m for m in ("pair_drop",) if m not in protocol.claim_metrics]
    res = evaluate_explanations(model, [batch], protocol.methods, metrics=metrics, alpha=protocol.alpha,
                                references=protocol.references, target=protocol.target,
                                only_correct=protocol.only_correct, traits=traits, class_names=meta["class_names"],
                                **chosen)
    out = {"n": res.counts["scored"], "acc": res.counts["correct"] / res.counts["images"], "settings": chosen}
    for m in metrics:
        g = np.array(res.per_image["gradcam"][m], dtype=float)
        f = np.array(res.per_image["finer-gradcam"][m], dtype=float)
        ok = ~(np.isnan(g) | np.isnan(f))
        out[m] = [float(g[ok].mean()), float(f[ok].mean()), float(np.mean(f[ok] > g[ok]))]
    return out


def finer_cam(scale: str = "broad", seed: int = 0) -> Dict[str, dict]:
    """Finer-CAM against Grad-CAM on ground truth: ``{"vit": ..., "vit default layer": ..., "cnn": ...}`` (the
    ViT at the layer and scale traitlens recommends for small parts, and at its layout's default layer)."""
    from traitlens.data.traits import load_traits

    recipe = finer_cam_recipe(scale)

    def measure() -> dict:
        torch.manual_seed(seed)
        if recipe.training is None:  # the demo's classifiers, fine-tuned from the embedded backbones
            from traitlens.studies.demo import prepare

            ctx = prepare(seed=seed)
            data, runs = ctx.data, {k: ctx.checkpoints[k] for k in ("vit", "cnn")}
        else:
            data = _collection(recipe.collection)
            runs = {kind: _train(memo_path(_root(), f"finer-cam-{kind}", (recipe, seed), code=TRAINING), data, f"tiny-{kind}",
                                 training, seed) for kind, training in recipe.training.items()}
        traits = load_traits(data)
        return {"vit": _finer_cam_figures(runs["vit"], data, traits, "recommended"),
                "vit default layer": _finer_cam_figures(runs["vit"], data, traits, "default"),
                "cnn": _finer_cam_figures(runs["cnn"], data, traits, "default")}

    return memo_json(_root(), f"finer-cam-{scale}-seed{seed}", (recipe, FINER_CAM_EVALUATION, seed), measure)


# ------------------------------------------------------------------------------------ Prompt-CAM, INTR
MODELS = ("prompt-cam", "intr", "prompt-cam-broad")


def interpretable(scale: str = "broad", seed: int = 0, models: Sequence[str] = MODELS) -> Dict[str, dict]:
    """Prompt-CAM and INTR trained and scored (:func:`traitlens.models.trait_scores.score_dataset`):
    ``{"prompt-cam": ..., "intr": ...}`` and at broad scale ``"prompt-cam-broad"`` (frozen on the broad
    embedded ViT), or only those of ``models``. Each: test top-1, best-head trait share over uniform,
    probability drops when the top or a random 10% of the image is removed."""
    from traitlens.data.traits import load_traits
    from traitlens.studies.demo import DemoContext
    from traitlens.studies.demo.interpretable import train_and_score
    from traitlens.studies.embedded import embedded_backbone

    recipe = interpretable_recipe(check_scale(scale))
    data = _collection(recipe.collection)
    traits = load_traits(data)
    root = _root() / f"interpretable-{scale}"
    root.mkdir(parents=True, exist_ok=True)

    def context(backbone: Path) -> DemoContext:
        return DemoContext(out=root, cache=root, data=data, traits=traits, seed=seed,
                           checkpoints={"backbone-vit": backbone})

    if recipe.backbone is not None:
        backbone = _train(memo_path(root, "backbone", (recipe.collection, recipe.backbone, seed), code=TRAINING), data, "tiny-vit",
                          recipe.backbone, seed)
    else:
        backbone = embedded_backbone("vit", progress=False)
    out = {}
    for name, training in (("prompt-cam", recipe.prompt_cam), ("intr", recipe.intr)):
        if name in models:
            out[name] = train_and_score(context(backbone), name, training)
    if recipe.prompt_cam_broad is not None and "prompt-cam-broad" in models:
        broad = embedded_backbone("vit", breadth="broad", progress=False)
        out["prompt-cam-broad"] = train_and_score(context(broad), "prompt-cam", recipe.prompt_cam_broad)
    return out


# ------------------------------------------------------------------------------------------ SST
def segmentation(scale: str = "broad", seed: int = 0) -> dict:
    """One labelled specimen per species segments the others: trait mIoU of label propagation and of copying
    the support's mask, per-part IoU (the demo section's study at ``scale``)."""
    from traitlens.studies.demo.segment import segment_specimens

    recipe = replace(segmentation_recipe(scale), seed=seed)
    settings = asdict(recipe)
    gallery = memo_path(_root(), "segmentation-gallery", settings)
    gallery.mkdir(parents=True, exist_ok=True)
    return memo_json(_root(), f"segmentation-{scale}", settings, lambda: segment_specimens(settings, gallery))


def body_plan_segmentation(plan: str = "butterfly", scale: str = "broad", seed: int = 0) -> dict:
    """Segmentation by tracking on butterflies or beetles: trait mIoU upright and in other poses (turned,
    mirrored), thin traits, copy-the-support baseline (:func:`traitlens.studies.demo.segment.segment_plan`)."""
    from traitlens.studies.demo.segment import segment_plan
    from traitlens.studies.recipes import plan_segmentation

    settings = asdict(replace(plan_segmentation(plan, scale), seed=seed))
    gallery = memo_path(_root(), "plan-segmentation-gallery", settings)
    gallery.mkdir(parents=True, exist_ok=True)
    return memo_json(_root(), f"plan-segmentation-{scale}", settings, lambda: segment_plan(settings, gallery))


# ------------------------------------------------------------------------------------------ calibration
def calibration(scale: str = "broad", seed: int = 0) -> dict:
    """The calibrated fine-tuning experiment (:func:`traitlens.studies.calibration.run_experiment`)."""
    from traitlens.studies.calibration import run_experiment

    cfg = replace(calibration_recipe(scale), seed=seed)
    start = None
    if cfg.backbone.startswith("embedded-"):
        from traitlens.studies.embedded import recipe

        start = recipe(cfg.backbone[len("embedded-"):])
    return memo_json(_root(), f"calibration-{scale}", dict(experiment=cfg, start=start), lambda: run_experiment(cfg))


# ------------------------------------------------------------------------------------------ trait atlas
def atlas_supports(data: Path, class_names, traits, per_species: int = 1):
    """The first ``per_species`` training specimens of each species with their true part maps, as the
    :class:`~traitlens.atlas.PartPropagator` a user who labels a few images would build."""
    from traitlens.atlas import LabelledSupport, PartPropagator
    from traitlens.segment import load_support

    supports = []
    for i, name in enumerate(class_names):
        for img in sorted((data / "train" / name).glob("*.png"))[:per_species]:
            frame, labels = load_support(img, data / "masks" / "train" / name / img.name)
            supports.append(LabelledSupport(frame, labels, i, str(img)))
    return PartPropagator(supports, {i: traits.genus_of(n) for i, n in enumerate(class_names)})


def _atlas_tables(runs: Dict[str, Path], data: Path, recipe, seed: int) -> Dict[str, dict]:
    """The atlas of each run of ``runs`` on ``data``'s test split (``recipe``: an
    :class:`~traitlens.studies.recipes.AtlasStudy`): per model the precision tables with masks and SST parts,
    its test top-1, CPU seconds and the pairs without a localised trait (:func:`atlas`)."""
    import time

    from traitlens.atlas import EvidenceOptions, build_atlas, precision_table, propagate_dataset
    from traitlens.data.folders import collate
    from traitlens.data.traits import load_traits
    from traitlens.methods import load_model
    from traitlens.studies.demo import test_split

    torch.manual_seed(seed)
    traits = load_traits(data)
    options = EvidenceOptions(removal=recipe.removal, margin=recipe.margin)
    out, sst_parts = {}, None
    for kind, run in runs.items():
        model, meta = load_model(run)
        model.eval()
        test = test_split(data, model, meta)
        batch = collate([test[i] for i in range(len(test))])
        with torch.no_grad():
            accuracy = float((model(batch["image"]).argmax(1) == batch["label"]).float().mean())
        common = dict(pairs=recipe.pairs, traits=traits, options=options, bootstrap=recipe.bootstrap, seed=seed,
                      progress=False)
        start = time.process_time()
        with_masks = build_atlas(model, test, parts="masks", **common)
        seconds = time.process_time() - start
        if sst_parts is None:  # the same images for both models: propagate once
            start = time.process_time()
            sst_parts = propagate_dataset(atlas_supports(data, meta["class_names"], traits,
                                                         recipe.supports_per_species), test, progress=False)
            sst_seconds = time.process_time() - start
        with_sst = build_atlas(model, test, parts=sst_parts, **common)
        out[kind] = {"masks": precision_table(with_masks, traits), "sst": precision_table(with_sst, traits),
                     "test_top1": accuracy, "cpu_seconds": seconds, "sst_cpu_seconds": sst_seconds,
                     "pairs": len(with_masks.pairs), "not_localised": [p.key for p in with_masks.pairs if not p.localised]}
    return out


def atlas(scale: str = "broad", seed: int = 0) -> Dict[str, dict]:
    """The trait atlas against the pair table: ``{"vit": ..., "cnn": ...}``, each with the precision table
    (precision@1 and MRR per evidence source) for parts from the true masks (``masks``) and propagated by SST
    (``sst``), the classifier's test top-1, the CPU seconds of the evidence pass with masks, and the pairs
    without a localised trait."""
    from traitlens.studies.memo import source_digest
    from traitlens.studies.recipes import atlas as atlas_recipe

    recipe = atlas_recipe(scale)
    classifiers = finer_cam_recipe(recipe.classifiers)

    def measure() -> dict:
        if classifiers.training is None:  # the demo's classifiers
            from traitlens.studies.demo import prepare

            ctx = prepare(seed=seed)
            data, runs = ctx.data, {k: ctx.checkpoints[k] for k in ("vit", "cnn")}
        else:  # the Finer-CAM claim's tiny classifiers (the same memo entries)
            data = _collection(classifiers.collection)
            runs = {kind: _train(memo_path(_root(), f"finer-cam-{kind}", (classifiers, seed), code=TRAINING), data,
                                 f"tiny-{kind}", training, seed) for kind, training in classifiers.training.items()}
        return _atlas_tables(runs, data, recipe, seed)

    # the atlas package is not among memo.COMPUTING (a change to it must not retrain anything): its digest joins
    # this entry's recipe instead
    return memo_json(_root(), f"atlas-{scale}-seed{seed}", (recipe, classifiers, seed, source_digest(("atlas",))),
                     measure)


def atlas_plan(plan: str = "butterfly", scale: str = "broad", seed: int = 0) -> Dict[str, dict]:
    """:func:`atlas` on a butterfly or beetle collection (:func:`traitlens.studies.recipes.atlas_plan`): the
    collection rendered, the tiny ViT and CNN fine-tuned on it from the embedded backbones (memoized by the
    training code), then the same tables."""
    from traitlens.data.synthetic import SynthConfig, generate_collection
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import train
    from traitlens.studies.embedded import embedded_backbone
    from traitlens.studies.memo import source_digest
    from traitlens.studies.recipes import atlas_plan as plan_recipe

    recipe = plan_recipe(plan, scale)

    def measure() -> dict:
        data = generate_collection(memo_path(cache_dir("datasets"), f"synth-{plan}", recipe.synth(), code=TRAINING),
                                   SynthConfig(**recipe.synth()), progress=False)
        runs = {}
        for kind in ("vit", "cnn"):
            backbone = embedded_backbone(kind, progress=False)
            run = memo_path(_root(), f"atlas-{plan}-{kind}", (recipe.synth(), recipe.training, str(backbone), seed),
                            code=TRAINING)
            train(TrainConfig(data=str(data), out=str(run), backbone=f"tiny-{kind}", weights=str(backbone), seed=seed,
                              device="cpu", amp="off", **recipe.training.config()), progress=False)
            runs[kind] = run
        return _atlas_tables(runs, data, recipe.study, seed)

    return memo_json(_root(), f"atlas-{plan}-{scale}-seed{seed}", (recipe, seed, source_digest(("atlas",))), measure)
