"""``traitlens traits``: which attention heads of a Prompt-CAM or INTR model find a class's traits.

    traitlens traits --checkpoint runs/pcam --images photos/ --class auto --top-heads 4 --out traits/

For every image: greedy head blurring for the class (``auto``: the predicted class), every head's map
(``maps/<n>_<stem>.npy``, heads×h×w float32, the head order of the model), a panel of all heads
ranked, overlays of the top heads, one line of ``results.jsonl``, and an HTML gallery (``index.html``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from traitlens.cli.common import add_common, write_json
from traitlens.engine.distributed import resolve_device
from traitlens.errors import BadImageError, UserError
from traitlens.report.overlay import overlay


def register(sub) -> None:
    p = sub.add_parser("traits", help="rank the attention heads that find a class's traits (Prompt-CAM, INTR)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a prompt-cam or intr run folder")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--class", dest="target", default="auto", metavar="NAME|auto",
                   help="class to explain on every image (name or index), or auto: the predicted class")
    p.add_argument("--top-heads", dest="top_heads", type=int, default=4, help="heads to keep (default 4)")
    p.add_argument("--no-stop", dest="stop", action="store_false",
                   help="rank down to --top-heads even when blurring would misclassify the image")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    add_common(p)
    p.set_defaults(func=run)


def _class_index(target: str, names: list) -> int | None:
    if target == "auto":
        return None
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    folded = [n for n in names if n.lower().replace("_", " ") == target.lower().replace("_", " ")]
    if len(folded) == 1:
        return names.index(folded[0])
    raise UserError(f"unknown class {target!r}; the model knows {len(names)} classes, e.g. {', '.join(names[:5])}")


def run(args) -> int:
    from traitlens.data.folders import find_images
    from traitlens.data.imageio import SkippedFiles, load_image
    from traitlens.engine.checkpoint import config_from_meta, load_model
    from traitlens.engine.train import eval_transform
    from traitlens.progress import progress
    from traitlens.report import Section, write_page

    if args.top_heads < 1:
        raise UserError("--top-heads must be at least 1")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, meta = load_model(args.checkpoint, device=device)
    if not hasattr(model, "identify_traits"):
        raise UserError(f"{args.checkpoint} is a {meta.get('method')} model; traits needs a prompt-cam or intr run")
    names = list(meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))])
    target = _class_index(args.target, names)
    heads = int(model.num_heads)
    top = min(args.top_heads, heads)
    transform = eval_transform(model, config_from_meta(meta))

    paths = []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            paths += find_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"no such image or folder: {p}")
    if not paths:
        raise UserError("no images found in " + ", ".join(args.images))

    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    skipped = SkippedFiles()
    results, gallery = [], []
    with open(out / "results.jsonl", "w") as log:
        for start in progress(range(0, len(paths), args.batch_size), desc="traits", unit="batch"):
            batch, shown, kept_paths = [], [], []
            for path in paths[start:start + args.batch_size]:
                try:
                    img = load_image(path)
                except BadImageError as err:
                    skipped.add_error(err)
                    continue
                x, _ = transform(img)
                batch.append(x)
                size = (x.shape[-1], x.shape[-2])
                shown.append(np.asarray(img.resize(size)))
                kept_paths.append(path)
            if not batch:
                continue
            images = torch.stack(batch).to(device)
            with torch.no_grad():
                probs = model(images).softmax(1)
                classes = probs.argmax(1) if target is None else torch.full_like(probs[:, 0], target).long()
                found = model.identify_traits(images, classes, top_k=top, stop_on_misclassification=args.stop)
            for i, path in enumerate(kept_paths):
                n = len(results)
                stem = f"{n:05d}_{path.stem}"
                maps = found.maps[i].float().cpu().numpy()
                np.save(out / "maps" / f"{stem}.npy", maps.astype(np.float32))
                ranked = found.ranked_heads[i].tolist()
                tiles = []
                for rank, h in enumerate(ranked[:top]):
                    file = out / "overlays" / f"{stem}_rank{rank + 1}_head{h}.png"
                    from PIL import Image

                    Image.fromarray(overlay(shown[i], maps[h], normalise=True)).save(file)
                    tiles.append(file)
                c = int(found.classes[i])
                row = {
                    "path": str(path), "class": names[c], "class_index": c,
                    "predicted": names[int(probs[i].argmax())], "probability": float(probs[i, c]),
                    "ranked_heads": ranked, "kept_heads": found.kept(i), "num_kept": int(found.num_kept[i]),
                    "target_prob_after_blurs": [float(v) for v in found.target_prob[i]],
                    "maps": str(Path("maps") / f"{stem}.npy"),
                    "overlays": [str(t.relative_to(out)) for t in tiles],
                }
                log.write(json.dumps(row) + "\n")
                results.append(row)
                gallery.append((shown[i], f"{path.name}: {names[c]} (p={row['probability']:.2f})"))
                gallery += [(str(t), f"rank {r + 1}: head {ranked[r]}") for r, t in enumerate(tiles)]
    if skipped:
        skipped.write(out / "skipped.jsonl")
    if not results:
        raise UserError("none of the images could be read (see skipped.jsonl)")

    section = Section(f"Trait-detecting heads ({meta.get('method')})",
                      intro=f"Checkpoint {args.checkpoint}; class {args.target}; heads ranked by greedy blurring, "
                            f"the top {top} shown per image.")
    section.gallery(gallery, columns=top + 1)
    counts = np.zeros(heads, dtype=int)
    for r in results:
        counts[r["ranked_heads"][0]] += 1
    section.table([{"head": h, "ranked first on": int(counts[h])} for h in range(heads)],
                  caption="How often each head was the most important one")
    write_page("traitlens traits", [section], out / "index.html")
    summary = {"out": str(out), "images": len(results), "skipped": len(skipped), "heads": heads,
               "top_head_counts": counts.tolist()}
    write_json(args.json, summary)
    print(f"{len(results)} images → {out / 'results.jsonl'}, {out / 'index.html'}")
    return 0
