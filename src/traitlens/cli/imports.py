"""``traitlens import``: the papers' released trained models as traitlens run folders.

``traitlens import intr FILE --out RUN`` (an Imageomics/INTR release checkpoint) and ``traitlens import
prompt-cam model.pt --out RUN`` (a Prompt_CAM trained model) write ``RUN/model.safetensors`` + ``RUN/model.json``,
which ``traits``, ``explain`` and ``evaluate`` read like any traitlens run.
"""

from __future__ import annotations

import json
from pathlib import Path

from traitlens.cli.common import add_common, write_json
from traitlens.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="turn a released INTR checkpoint or Prompt-CAM model.pt into a traitlens run folder",
        description="Read a trained model published by the INTR or Prompt-CAM authors (every tensor loaded, nothing "
                    "unpickled beyond tensors and argparse.Namespace) and write it as a traitlens run folder "
                    "(model.safetensors + model.json) for traits, explain and evaluate.")
    p.add_argument("kind", choices=["intr", "prompt-cam"], help="what the file is")
    p.add_argument("checkpoint", type=Path, metavar="FILE", help="the released checkpoint (.pth / model.pt)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--classes", type=Path, default=None, metavar="FILE",
                       help="class names in training order: a text file (one a line) or a JSON list")
    names.add_argument("--data", type=Path, default=None, metavar="DIR",
                       help="take the class names from DIR/train's class folders (sorted, as traitlens trains)")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="input size recorded for the run (default: the paper's: 800 for INTR, 224 for Prompt-CAM)")
    add_common(p, device=False, seed=False)
    p.set_defaults(func=run_import)


def _read_names(args):
    if args.data is not None:
        from traitlens.engine.data import split_classes

        return split_classes(args.data, "train")
    if args.classes is None:
        return None
    if not args.classes.is_file():
        raise UserError(f"class name file not found: {args.classes}")
    text = args.classes.read_text(encoding="utf-8")
    if args.classes.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{args.classes} is not valid JSON ({exc.msg})") from None
        if not isinstance(names, list):
            raise UserError(f"{args.classes} must hold a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_import(args) -> int:
    from traitlens.methods import import_trained

    if args.image_size is not None and args.image_size < 8:
        raise UserError(f"--image-size must be at least 8 pixels, got {args.image_size}")
    result = import_trained(args.checkpoint, args.out, kind=args.kind, class_names=_read_names(args),
                            image_size=args.image_size)
    print(f"{result['run_dir']}: {result['method']} on {result['backbone']}, {result['num_classes']} classes, "
          f"all {result['tensors']} tensors of {args.checkpoint} loaded"
          + (f" (left out: {', '.join(result['dropped'])})" if result["dropped"] else ""))
    write_json(args.json, result)
    return 0
