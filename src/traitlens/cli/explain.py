"""``traitlens explain`` and ``traitlens evaluate-explanations``: Finer-CAM over images and a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from traitlens.cli.common import (add_common, add_crop, add_restart, checkpoint_options, class_names_for,
                                  write_json, with_crop)
from traitlens.errors import UserError


def register(sub) -> None:
    e = sub.add_parser(
        "explain", help="explain a classifier's predictions with (Finer-)CAM maps",
        description="Explain what distinguishes each image's predicted (or --target) class from its most similar "
                    "classes (Finer-CAM), with the base CAM beside it. Writes overlays/*.png, results.jsonl, "
                    "index.html and, with --save-maps, maps.npz. Resumable (done images are skipped) and "
                    "shardable with torchrun.")
    add_common(e)
    e.add_argument("--checkpoint", type=Path, required=True, help="classifier run folder (or its .safetensors/.json)")
    e.add_argument("--images", type=Path, nargs="+", required=True, help="image files and/or folders")
    e.add_argument("--method", default="finer-gradcam",
                   help="gradcam, hirescam, gradcam++, xgradcam, layercam, scorecam, or pgc:<grad-cam class>; "
                        "prefix finer- for Finer-CAM (default finer-gradcam)")
    e.add_argument("--alpha", default="1", help="comparison strength(s), comma-separated (default 1)")
    e.add_argument("--compare", default="auto",
                   help="auto (choose by --references) or classes to compare with, comma-separated: folder names "
                        "(01_Pseudavis_flava), display names (\"Pseudavis flava\") or ids")
    e.add_argument("--references", default="logit-distance",
                   choices=["logit-distance", "top-predicted", "weight-cosine", "taxonomy"],
                   help="how --compare auto picks the similar classes (default logit-distance)")
    e.add_argument("--k", type=int, default=3, help="number of reference classes (default 3)")
    e.add_argument("--target", default=None, help="explain this class (a name as --compare) instead of the prediction")
    e.add_argument("--traits", type=Path, default=None, metavar="FILE",
                   help="traits.json (for --references taxonomy; its display names are accepted too)")
    e.add_argument("--layer", default=None, help="target layer module path (default: the backbone's layout)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    e.add_argument("--limit", type=int, default=None, help="explain at most this many images")
    e.add_argument("--save-maps", action="store_true", help="also write the raw maps to maps.npz")
    e.add_argument("--gallery", type=int, default=200, help="overlays shown in index.html (default 200)")
    e.add_argument("--ood-threshold", type=float, default=0.5, metavar="P",
                   help="flag a prediction as out of domain when the model's maximum softmax probability is below "
                        "P (default 0.5; the energy score -logsumexp(logits) is recorded too)")
    add_crop(e)
    add_restart(e)
    e.set_defaults(func=_explain)

    v = sub.add_parser(
        "evaluate-explanations", help="score explanation methods: confidence drops, deletion/insertion, localisation",
        description="Explain a dataset split with several methods and score each map: relative and contrastive "
                    "confidence drop after masking the top k%% of pixels, deletion/insertion AUC, and with part "
                    "masks the pointing game, energy in the specimen and the diagnostic-trait energy (traits.json). "
                    "Writes table.json, table.md, metrics.png and index.html.")
    add_common(v)
    v.add_argument("--checkpoint", type=Path, required=True)
    v.add_argument("--data", type=Path, required=True, help="dataset folder (<split>/<class>/<image>, masks/)")
    v.add_argument("--split", default="test")
    v.add_argument("--methods", default="gradcam,finer-gradcam", help="comma-separated (default gradcam,finer-gradcam)")
    v.add_argument("--metrics", default=None, help="comma-separated subset (default: all the data allow)")
    v.add_argument("--alpha", type=float, default=1.0)
    v.add_argument("--references", default="auto",
                   choices=["auto", "logit-distance", "top-predicted", "weight-cosine", "taxonomy"],
                   help="reference classes of Finer-CAM and the 'most similar class' of the contrastive drop and "
                        "the diagnostic parts; auto: taxonomy (siblings) when the data has a traits.json with "
                        "genera, else logit-distance")
    v.add_argument("--k", type=int, default=3)
    v.add_argument("--topk", type=float, default=0.05, help="masked fraction for the confidence drops (default 0.05)")
    v.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    v.add_argument("--baseline", default="zero", choices=["zero", "blur"])
    v.add_argument("--target", default="predicted", choices=["label", "predicted"],
                   help="explain the predicted class (default, as the Finer-CAM paper) or the true label")
    v.add_argument("--only-correct", action=argparse.BooleanOptionalAction, default=True,
                   help="score only correctly classified images (default; --no-only-correct scores all)")
    v.add_argument("--layer", default="auto",
                   help="target layer module path; auto (default): the layer recommended for scoring against small "
                        "parts (traitlens.explain.evaluate.recommended_settings: a token-pooling ViT's last block "
                        "output), else the layout's default")
    v.add_argument("--scale", default="auto",
                   help="resize the images by this factor before explaining; auto (default): 2 for a ViT with "
                        "dynamic image size whose patch grid is coarser than 14x14 at its input size, else 1")
    v.add_argument("--batch-size", type=int, default=32)
    v.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    v.set_defaults(func=_evaluate)


def _parse_alphas(text: str):
    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError:
        raise UserError(f"--alpha must be numbers separated by commas, got {text!r}") from None
    if not alphas or min(alphas) < 0:
        raise UserError(f"--alpha must be ≥ 0, got {text!r}")
    return alphas


def _display_names(names, traits):
    """The display names of the model's classes: traits.json's when it describes them, else the folder names
    without their number."""
    from traitlens.cli.common import display_name

    if traits is not None:
        try:
            return [traits.name(n) for n in names]
        except UserError:
            pass
    return [display_name(n) for n in names]


def _load(checkpoint: Path, device):
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.methods import load_model
    from traitlens.engine.train import eval_transform

    model, meta = load_model(checkpoint, device=device)
    if meta.get("method") == "prompt-cam":  # its blocks run outside their modules: no layer for a CAM to hook
        raise UserError(f"{checkpoint} is a Prompt-CAM run: its traits are shown by its attention heads; "
                        f"use `traitlens traits --checkpoint {checkpoint} --images ...` (or the app's Heads tab)")
    names = list(meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))])
    return model, meta, names, eval_transform(model, config_from_meta(meta))


def _explain(args) -> int:
    import torch

    from traitlens.data.imageio import SkippedFiles
    from traitlens.engine import distributed
    from traitlens.explain.evaluate import parse_methods
    from traitlens.runs import discover
    from traitlens.runs.explain_job import explain_images

    spec = parse_methods(args.method)
    if len(spec) != 1:
        raise UserError("--method takes one method (use evaluate-explanations to compare several)")
    alphas = _parse_alphas(args.alpha)
    ctx = distributed.setup(args.device)  # joins the torchrun group, if any: each rank takes a shard
    device = ctx.device
    torch.manual_seed(args.seed)
    model, meta, names, transform = _load(args.checkpoint, device)
    traits = None
    if args.traits is not None:
        from traitlens.data.traits import load_traits
        traits = load_traits(args.traits)
    if args.compare == "auto" and args.references == "taxonomy" and traits is None:
        raise UserError("--references taxonomy needs --traits FILE (a traits.json with genera)")
    if not 0 <= args.ood_threshold <= 1:
        raise UserError(f"--ood-threshold {args.ood_threshold}: a probability in [0, 1]")
    display = _display_names(names, traits)
    skipped = SkippedFiles()
    items = discover(args.images, skipped)
    if args.limit is not None:
        items = items[:args.limit]
    references = (args.references if args.compare == "auto"
                  else class_names_for([c for c in args.compare.split(",") if c.strip()], names, "--compare", display))
    target = None if args.target is None else class_names_for([args.target], names, "--target", display)[0]
    transform = with_crop(transform, args.crop)
    summary = explain_images(model, items, transform, args.out, class_names=names, method=spec[0].base,
                             finer=spec[0].finer, alphas=alphas, references=references, k=args.k,
                             target=target, traits=traits, target_layer=args.layer,
                             batch_size=args.batch_size, workers=args.workers, save_maps=args.save_maps,
                             gallery=args.gallery, skipped=skipped, ood_threshold=args.ood_threshold,
                             run_options=checkpoint_options(args.checkpoint), restart=args.restart)
    distributed.cleanup()
    if not ctx.main:
        return 0
    print(f"explained {summary['explained']} images ({summary['skipped_done']} already done, "
          f"{summary['unreadable']} unreadable) → {args.out}")
    if summary.get("labelled"):
        print(f"{summary['wrong']} of {summary['labelled']} images whose folder names a class are predicted wrongly")
    if summary.get("out_of_domain"):
        print(f"{summary['out_of_domain']} prediction(s) look out of domain (max softmax probability < "
              f"{args.ood_threshold:g}): see out_of_domain in results.jsonl")
    if summary.get("small_inputs"):
        print(f"{summary['small_inputs']} image(s) far below the model's input size (small_input in results.jsonl)")
    write_json(args.json, summary)
    return 0


def _evaluate(args) -> int:
    import torch

    from traitlens.data.folders import collate, open_collection_split
    from traitlens.engine import distributed
    from traitlens.explain.engine import resolve_layer
    from traitlens.explain.evaluate import evaluate_explanations, recommended_settings
    from traitlens.report.pages import explanation_evaluation_page, scored_sentence
    from traitlens.report.plots import metrics_bar_plot
    from traitlens.progress import progress

    device = distributed.resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, meta, names, transform = _load(args.checkpoint, device)
    dataset = open_collection_split(args.data, args.split, transform=transform, classes=names, masks="auto")
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    traits = None
    if (Path(args.data) / "traits.json").exists():
        from traitlens.data.traits import load_traits
        traits = load_traits(args.data)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collate)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    references = args.references
    if references == "auto":
        references = "taxonomy" if traits is not None and any(traits.siblings(n) for n in names) else "logit-distance"
    first = dataset[0]
    recommended = recommended_settings(model, first["image"].shape[-2:] if "image" in first else None)
    layer = recommended["target_layer"] if args.layer == "auto" else args.layer
    try:
        scale = float(recommended["scale"] if args.scale == "auto" else args.scale)
    except ValueError:
        raise UserError(f"--scale must be a number or auto, got {args.scale!r}") from None
    result = evaluate_explanations(model, progress(loader, desc="evaluate explanations", unit="batch"),
                                   args.methods, metrics=metrics, alpha=args.alpha, references=references,
                                   k=args.k, topk=args.topk, baseline=args.baseline, steps=args.steps,
                                   target=args.target, traits=traits, class_names=names, target_layer=layer,
                                   only_correct=args.only_correct, scale=scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_json()
    payload.update(checkpoint=str(args.checkpoint), data=str(args.data), split=args.split, alpha=args.alpha,
                   references=references, topk=args.topk, steps=args.steps, target=args.target,
                   only_correct=args.only_correct, layer=resolve_layer(model, layer).name, scale=scale)
    (out / "table.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| method | " + " | ".join(result.metrics) + " |", "|---" * (len(result.metrics) + 1) + "|"]
    for row in result.table():
        cells = [f"{row[m]:.3f} ± {row[m + '_ci95']:.3f}" for m in result.metrics]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    metrics_bar_plot(result).savefig(out / "metrics.png", dpi=110)
    page = explanation_evaluation_page(payload, out, figure=out / "metrics.png")
    print("\n".join(lines))
    print(scored_sentence(result.counts, args.only_correct))
    print(f"wrote {out / 'table.json'}, table.md, metrics.png and {page}")
    write_json(args.json, payload)
    return 0
