"""``traitlens traits``: which attention heads of a Prompt-CAM or INTR model find a class's traits.

    traitlens traits --checkpoint runs/pcam --images photos/ --class auto --top-heads 4 --out traits/

For every image: greedy head blurring for the class (``auto``: the predicted class), every head's map
(``maps/<image>.npy``, heads×h×w float32, the head order of the model), overlays of the top heads, one line of
``results.jsonl``, and an HTML gallery (``index.html``). Resumable and shardable with torchrun
(:mod:`traitlens.runs.traits_job`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from traitlens.cli.common import (add_common, add_crop, add_restart, checkpoint_options, class_index, write_json,
                                  with_crop)
from traitlens.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("traits", help="rank the attention heads that find a class's traits (Prompt-CAM, INTR)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a prompt-cam or intr run folder")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--class", dest="target", default="auto", metavar="NAME|auto",
                   help="class to explain on every image (folder name, display name such as \"Pseudavis flava\", or "
                        "index), or auto: the predicted class")
    p.add_argument("--top-heads", dest="top_heads", type=int, default=4, help="heads to keep (default 4)")
    p.add_argument("--no-stop", dest="stop", action="store_false",
                   help="rank down to --top-heads even when blurring would misclassify the image")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    add_crop(p)
    add_restart(p)
    add_common(p)
    p.set_defaults(func=run)


def _class_index(target: str, names: list) -> int | None:
    if target == "auto":
        return None
    return class_index(target, names, flag="--class")


def run(args) -> int:
    from traitlens.data.imageio import SkippedFiles
    from traitlens.engine import distributed
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.methods import load_model
    from traitlens.engine.train import eval_transform
    from traitlens.runs import discover
    from traitlens.runs.traits_job import traits_images

    if args.top_heads < 1:
        raise UserError("--top-heads must be at least 1")
    skipped = SkippedFiles()
    items = discover([Path(p) for p in args.images], skipped)
    with distributed.leaving():
        ctx = distributed.setup(args.device)  # joins the torchrun group, if any: each rank takes a shard
        torch.manual_seed(args.seed)
        model, meta = load_model(args.checkpoint, device=ctx.device)
        if not hasattr(model, "identify_traits"):
            raise UserError(f"{args.checkpoint} is a {meta.get('method')} model; traits needs a prompt-cam or intr run")
        names = list(meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))])
        target = _class_index(args.target, names)
        transform = with_crop(eval_transform(model, config_from_meta(meta)), args.crop)
        summary = traits_images(model, items, transform, Path(args.out), names,
                                skipped=skipped, target=target, top=min(args.top_heads, int(model.num_heads)),
                                stop=args.stop, batch_size=args.batch_size,
                                title=f" ({meta.get('method')}, class {args.target})",
                                run_options={**checkpoint_options(args.checkpoint), "transform": repr(transform)},
                                restart=args.restart)
    if not ctx.main:
        return 0
    if not summary["images"]:
        raise UserError("none of the images could be read (see skipped.jsonl)")
    summary.pop("seconds")
    write_json(args.json, summary)
    print(f"{summary['done']} images ({summary['resumed']} already done, {summary['skipped']} unreadable"
          + (f", listed in {Path(args.out) / 'skipped.jsonl'}" if summary["skipped"] else "") + ") → "
          f"{Path(args.out) / 'results.jsonl'}, {Path(args.out) / 'index.html'}")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    return 0
