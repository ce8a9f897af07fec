"""``traitlens finetune`` and ``traitlens calibrate``: fine-tune on a subset of classes, then restore the
absent classes with one logit bias γ (Mai et al., "Fine-Tuning is Fine, if Calibrated", NeurIPS 2024)."""

from __future__ import annotations

from pathlib import Path

from traitlens.cli.common import add_common, write_json
from traitlens.errors import UserError


def register(sub) -> None:
    f = sub.add_parser(
        "finetune", help="fine-tune a classifier on a subset of its classes (reference recipe)",
        description="Fully fine-tune a pre-trained classifier checkpoint on a subset S of its classes, with the "
                    "cross-entropy over all classes (the setting of 'Fine-Tuning is Fine, if Calibrated'). "
                    "Recipe: SGD Nesterov momentum 0.9, head lr --lr, backbone 0.1x, weight decay 5e-4, "
                    "batch 64, cosine schedule.")
    add_common(f)
    f.add_argument("--checkpoint", type=Path, required=True, help="pre-trained classifier run folder (or its files)")
    f.add_argument("--data", type=Path, required=True, help="dataset folder (train/ val/ test/ <class>/<image>)")
    f.add_argument("--classes", required=True,
                   help="the fine-tuning classes: a file (one class name or id a line) or N (the first N classes)")
    f.add_argument("--epochs", type=int, default=None, help="epochs (default: the CPU-scaled recipe's)")
    f.add_argument("--lr", type=float, default=None, help="head learning rate (default: the recipe's)")
    f.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field (repeatable)")
    f.set_defaults(func=_finetune)

    c = sub.add_parser(
        "calibrate", help="restore absent classes after fine-tuning with a logit bias (ALG, PCV, oracle)",
        description="Evaluate a model fine-tuned on a subset of its classes before and after adding γ to the "
                    "absent classes' logits; γ from ALG (training-data logit gap), PCV (pseudo cross-validation) "
                    "or the oracle (test labels, an upper bound). Either --logits FILE.npz, or --pretrained, "
                    "--finetuned and --data.")
    add_common(c, out_required=False)
    c.add_argument("--logits", type=Path, default=None,
                   help=".npz with logits (N×C), labels (N), seen (class ids); optional train_logits, train_labels")
    c.add_argument("--pretrained", type=Path, default=None, help="the pre-trained classifier checkpoint")
    c.add_argument("--finetuned", type=Path, default=None, help="the checkpoint `traitlens finetune` wrote")
    c.add_argument("--data", type=Path, default=None, help="dataset folder (the fine-tuning domain)")
    c.add_argument("--method", default="all", help="alg, pcv, oracle, a comma list, or all (default)")
    c.add_argument("--apply", default=None, choices=["alg", "pcv", "oracle"],
                   help="the γ written into the calibrated checkpoint (default: pcv if run, else alg)")
    c.add_argument("--pcv-seeds", type=int, default=1, help="PCV repetitions (each fine-tunes twice)")
    c.add_argument("--pcv-epochs", type=int, default=None,
                   help="epochs of each PCV fine-tuning (default: those of the fine-tuned run)")
    c.set_defaults(func=_calibrate)


def _finetune(args) -> int:
    from traitlens.calibrate.finetuning import finetune_subset
    from traitlens.engine.distributed import resolve_device

    result = finetune_subset(args.checkpoint, args.data, args.classes, args.out, epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, overrides=args.overrides,
                             device=resolve_device(args.device), seed=args.seed)
    print(f"fine-tuned on {len(result['seen'])} of {result['num_classes']} classes: {result['run_dir']}")
    write_json(args.json, result)
    return 0


def _calibrate(args) -> int:
    from traitlens.calibrate.evaluation import parse_methods

    methods = parse_methods(args.method)
    ckpt_mode = any(x is not None for x in (args.pretrained, args.finetuned, args.data))
    if args.logits is not None and ckpt_mode:
        raise UserError("give either --logits, or --pretrained/--finetuned/--data, not both")
    if args.logits is not None:
        result = _calibrate_logits(args, methods)
    elif ckpt_mode:
        missing = [n for n, v in (("--pretrained", args.pretrained), ("--finetuned", args.finetuned),
                                  ("--data", args.data)) if v is None]
        if missing:
            raise UserError(f"calibrating checkpoints needs {', '.join(missing)}")
        if args.out is None:
            raise UserError("calibrating checkpoints needs --out (the calibrated checkpoint is written there)")
        from traitlens.calibrate.finetuning import calibrate_checkpoints
        from traitlens.engine.distributed import resolve_device
        from traitlens.report.plots import seen_unseen_figure

        result = calibrate_checkpoints(args.pretrained, args.finetuned, args.data, args.out, methods=methods,
                                       apply=args.apply, pcv_seeds=args.pcv_seeds, pcv_epochs=args.pcv_epochs,
                                       device=resolve_device(args.device), seed=args.seed,
                                       figure=seen_unseen_figure)
    else:
        raise UserError("give --logits FILE.npz, or --pretrained, --finetuned and --data")
    _print(result)
    if args.out is not None:
        from traitlens.report.pages import calibration_page

        print(f"page: {calibration_page(result, Path(args.out))}")
    write_json(args.json, result)
    return 0


def _calibrate_logits(args, methods) -> dict:
    import json

    from traitlens.calibrate.evaluation import calibration_result, load_logits_npz
    from traitlens.report.plots import seen_unseen_figure

    a = load_logits_npz(args.logits)
    result = calibration_result(a["logits"], a["labels"], a["seen"], methods,
                                train_logits=a.get("train_logits"), train_labels=a.get("train_labels"))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if result["curve"] is not None:
            fig = seen_unseen_figure(result)
            fig.savefig(out / "seen_unseen.png", dpi=120)
            result["plot"] = str(out / "seen_unseen.png")
        (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print(result: dict) -> None:
    from traitlens.calibrate.evaluation import format_table

    print(format_table(result["tables"], result["gamma"]))
    if result.get("ausuc") is not None:
        print(f"AUSUC {result['ausuc']:.4f}")
    for m, why in result.get("skipped", {}).items():
        print(f"{m}: skipped ({why})")
    for key in ("plot", "checkpoint"):
        if result.get(key):
            print(f"{key}: {result[key]}")
