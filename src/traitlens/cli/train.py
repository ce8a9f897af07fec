"""``traitlens train`` and ``traitlens evaluate``: thin layers over :mod:`traitlens.engine`.

Under ``torchrun`` every process runs the same command; the engine splits the work and only
rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from traitlens.cli.common import add_common, write_json
from traitlens.errors import UserError

# CLI flag -> TrainConfig field, for the flags that set a config value directly.
FLAGS = ["method", "data", "backbone", "weights", "epochs", "batch_size", "lr", "image_size", "num_workers",
         "out", "device", "seed", "optimizer", "amp"]


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier (linear probe, fine-tuning, Prompt-CAM, INTR)",
        description="Train a model on an ImageFolder tree (DATA/train, DATA/val). Values come from the "
                    "packaged or given --config, then the flags, then --set key=value. The best epoch on the "
                    "validation split is kept in OUT/model.safetensors + OUT/model.json. Rerunning the same "
                    "command continues an interrupted run. Several processes: torchrun --nproc_per_node N "
                    "-m traitlens.cli train ...",
    )
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config file, or a packaged preset (linear-probe, finetune, tiny-cpu)")
    p.add_argument("--method", default=None, help="linear-probe, finetune, prompt-cam or intr")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="collection: train/ val/ folders, a CUB-200-2011 root, <class>/<image> folders or a split.json")
    p.add_argument("--backbone", default=None, metavar="NAME", help="backbone preset or timm model name")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="local backbone weights: a traitlens run folder, .safetensors, .pth/.pt/.bin (DINO, DINOv2, "
                        "open_clip/BioCLIP, transformers CLIP, timm), an OpenAI CLIP TorchScript archive, "
                        "embedded[:standard|broad|tiny] (the embedded pretrained tiny backbone, pretrained once if "
                        "needed) or none (random weights). Default for tiny-vit / tiny-cnn: embedded; for others: "
                        "random unless --pretrained. Every tensor must fit unless --allow-partial")
    p.add_argument("--allow-partial", dest="allow_partial", action="store_true", default=None,
                   help="load --weights even when some tensors do not fit (default: a partial load is an error; "
                        "what was loaded, dropped and resampled is printed and kept in model.json)")
    p.add_argument("--pretrained", action="store_true", default=None,
                   help="download the backbone's pretrained weights")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the head")
    p.add_argument("--optimizer", default=None, choices=["adamw", "sgd"])
    p.add_argument("--amp", default=None, choices=["auto", "off", "bf16", "fp16"], help="mixed precision")
    p.add_argument("--image-size", dest="image_size", type=int, default=None, help="default: the backbone's")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="train on these classes only, keeping every class as an output")
    p.add_argument("--num-workers", dest="num_workers", type=int, default=None, help="data loading processes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key (repeatable), e.g. --set warmup_epochs=1 --set method_options.k=4")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=None,
                       help="continue the interrupted run in OUT (error if there is none)")
    group.add_argument("--restart", dest="resume", action="store_false",
                       help="start afresh even if OUT holds an earlier run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common(p, out_required=False)
    p.set_defaults(func=run_train, device=None, seed=None)

    e = sub.add_parser(
        "evaluate", help="score a checkpoint on a split: top-1/top-5, per-class accuracy, confusion",
        description="Evaluate a trained checkpoint (run folder, model.safetensors or model.json) on DATA/SPLIT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    e.add_argument("--num-workers", dest="num_workers", type=int, default=0)
    add_common(e, out_required=False)  # --out: also write OUT/evaluation.json; --seed: evaluation draws nothing
    e.set_defaults(func=run_evaluate)


def run_train(args) -> int:
    from dataclasses import replace

    from traitlens.engine import distributed
    from traitlens.engine.config import load_config
    from traitlens.methods import train

    values = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    if args.out is not None:
        values["out"] = str(args.out)
    if args.pretrained:
        values["pretrained"] = True
    if args.allow_partial:
        values["allow_partial"] = True
    config = load_config(args.config, args.overrides, **values)
    if args.classes:
        config = replace(config, classes=_class_folders(args.classes, config))
    config, start = starting_weights(config, progress=not args.no_progress)
    if distributed.is_main():
        print(start)
    with distributed.leaving():
        result = train(config, progress=not args.no_progress, resume=args.resume)
        if distributed.is_main():
            best = result["best"] or {}
            metrics = best.get("metrics", {})
            line = f"run {result['run_dir']}: best epoch {best.get('epoch')}"
            if metrics.get("val_top1") is not None:
                line += f", val top-1 {metrics['val_top1']:.4f}"
            print(line)
            write_json(args.json, result)
    return 0


def _class_folders(text: str, config):
    """--classes as the training split's folder names (display names and indices accepted too)."""
    from traitlens.cli.common import class_names_for
    from traitlens.engine.data import split_classes

    typed = [c.strip() for c in text.split(",") if c.strip()]
    if not config.data:
        return typed
    return class_names_for(typed, split_classes(config.data, config.train_split), "--classes")


#: The tiny presets and the kind of embedded backbone that was pretrained for each.
EMBEDDED = {"tiny-vit": "vit", "tiny-cnn": "cnn"}


def starting_weights(config, progress: bool = True):
    """``(config, line)``: the config with ``weights`` resolved and one line saying what the backbone starts from.

    ``embedded[:BREADTH]`` is the embedded pretrained tiny backbone (pretrained once and cached: the standard one
    takes ~2 min on 2 CPU cores); the tiny presets use it when no weights are given, since from random weights the
    README's first model stops near chance (val top-1 0.25 after 10 epochs). ``none`` trains from random weights.
    """
    from dataclasses import replace

    weights = None if config.weights is None else str(config.weights)
    if weights is not None and weights.lower() in ("none", "random"):
        config = replace(config, weights=None)
        return config, f"backbone {config.backbone}: random weights (--weights none)"
    if weights is None and not config.pretrained and config.backbone in EMBEDDED:
        weights = "embedded"
    if weights is not None and (weights == "embedded" or weights.startswith("embedded:")):
        from traitlens.backbones.embedded import BREADTHS
        from traitlens.engine.checkpoint import WEIGHTS
        from traitlens.studies.embedded import embedded_backbone

        kind = EMBEDDED.get(config.backbone)
        if kind is None:
            raise UserError(f"--weights {weights}: the embedded backbones are tiny-vit and tiny-cnn, not "
                            f"{config.backbone} (use --backbone tiny-vit or tiny-cnn)")
        breadth = weights.partition(":")[2] or "standard"
        if breadth not in BREADTHS:
            raise UserError(f"--weights {weights}: breadth must be one of {', '.join(BREADTHS)}")
        run = embedded_backbone(kind, breadth=breadth, progress=progress)
        config = replace(config, weights=str(run / WEIGHTS))
        return config, (f"backbone {config.backbone}: the embedded pretrained backbone ({breadth}, {run / WEIGHTS}); "
                        "--weights none trains from random weights")
    if config.pretrained:
        return config, f"backbone {config.backbone}: its published pretrained weights (--pretrained)"
    if config.weights is not None:
        return config, f"backbone {config.backbone}: weights {config.weights}"
    return config, (f"backbone {config.backbone}: random weights (no --weights or --pretrained given; expect a "
                    "weak model on little data)")


def run_evaluate(args) -> int:
    from traitlens.engine import distributed
    from traitlens.methods import evaluate_checkpoint

    if distributed.env_world() > 1:
        distributed.setup(args.device)
    with distributed.leaving():
        result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, device=args.device,
                                     batch_size=args.batch_size, num_workers=args.num_workers)
        if distributed.is_main():
            print(f"{args.split}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} on {result['n']} images"
                  + (f" ({len(result['skipped'])} unreadable skipped)" if result.get("skipped") else ""))
            write_json(args.json, result)
            if args.out is not None:
                write_json(Path(args.out) / "evaluation.json", result)
                print(f"wrote {Path(args.out) / 'evaluation.json'}")
    return 0
