"""``traitlens data``: make the synthetic specimen collection, describe and split collections on disk, and turn
RGB mask pictures into label maps."""

from __future__ import annotations

import os
import time
from pathlib import Path

from traitlens.cli.common import add_common, add_group, write_json


def register(sub) -> None:
    data = add_group(sub, "data", "make and inspect data collections")

    synth = data.add_parser(
        "synth", help="write the trait-annotated synthetic specimen collection",
        description="Write the trait-annotated synthetic specimen collection (images, part masks, traits.json). "
                    "Cached: rerunning with the same options returns at once.")
    add_common(synth, device=False, json_out=True)
    synth.add_argument("--species", type=int, default=12, help="number of species (default 12, genera of 3)")
    synth.add_argument("--per-species", type=int, default=60, help="images per species (default 60)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--domain", default="A", choices=["A", "B"],
                       help="rendering style: A (default) or the held-out style B")
    synth.add_argument("--blur", action="store_true", help="blur every image slightly")
    synth.add_argument("--noise", type=float, default=0.03, help="pixel noise std in [0, 0.5] (default 0.03)")
    synth.add_argument("--split", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                       help="split fractions (default 0.6 0.2 0.2)")
    synth.add_argument("--body-plan", default="bird", choices=["bird", "butterfly", "beetle"],
                       help="kind of specimen: bird (default), butterfly (wing patterns) or beetle")
    synth.add_argument("--rotation", type=float, default=35.0, metavar="DEG",
                       help="largest in-plane rotation in degrees, uniform in ±DEG (default 35; 180: any orientation)")
    synth.add_argument("--mirror", type=float, default=0.0, metavar="P",
                       help="share of mirror-image specimens, 0 to 1 (default 0)")
    synth.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.1), metavar=("LOW", "HIGH"),
                       help="range of the pose scale (default 0.8 1.1)")
    synth.add_argument("--avoid-species-of", type=Path, default=None, metavar="DIR",
                       help="make species that differ from every species of this collection (for pretraining)")
    synth.set_defaults(func=_synth)

    info = data.add_parser("info", help="describe a collection folder",
                           description="Layout, species, images per split (every image format the readers "
                                       "read) and, for the synthetic collection, genera and parts. Any --data "
                                       "folder: split folders, a split.json, a CUB-200-2011 root, or an "
                                       "unsplit <class>/<image> tree.")
    info.add_argument("path", type=Path, help="collection folder")
    info.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the summary as JSON")
    info.set_defaults(func=_info)

    split = data.add_parser(
        "split", help="write the train/val/test split of a CUB root or an unsplit <class>/<image> tree",
        description="Write DIR/split.json: the seeded split every command taking --data DIR then reads. Within "
                    "each class, images are ordered by sha256('<seed>:<path>'); the first --test go to test, "
                    "the next --val to val. A CUB-200-2011 root keeps its official test split and carves val "
                    "from train (--val, default 0.1).")
    split.add_argument("path", type=Path, help="a CUB-200-2011 root or a <class>/<image> folder")
    split.add_argument("--val", type=float, default=None, help="validation fraction (default 0.15; CUB 0.1)")
    split.add_argument("--test", type=float, default=None, help="test fraction (default 0.15; CUB: official)")
    split.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    split.add_argument("--out", type=Path, default=None, metavar="FILE",
                       help="where to write it (default DIR/split.json, what --data DIR reads)")
    split.add_argument("--force", action="store_true", help="replace an existing DIR/split.json (the old one is kept as split.json.previous)")
    split.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the counts as JSON")
    split.set_defaults(func=_split)

    masks = data.add_parser(
        "masks", help="turn RGB mask pictures into label-id PNGs with an explicit palette",
        description="Read every RGB(A) mask under --masks, map its colours to label ids with --palette (a JSON "
                    "object {\"#rrggbb\": id} or {\"r,g,b\": id}; 'grey' takes the grey level as the id), and "
                    "write single-channel PNGs mirroring the tree under --out. A colour the palette lacks is an "
                    "error naming it.")
    masks.add_argument("--masks", type=Path, required=True, metavar="DIR", help="folder of RGB mask images")
    masks.add_argument("--palette", required=True, metavar="FILE|grey", help="colour → id palette (JSON) or 'grey'")
    masks.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the label-map PNGs")
    masks.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the summary as JSON")
    masks.set_defaults(func=_masks)


def _synth(args) -> int:
    from traitlens.data.synthetic import SynthConfig, generate_collection, collection_info

    cfg = SynthConfig(species=args.species, per_species=args.per_species, size=args.size, seed=args.seed,
                      split=tuple(args.split), domain=args.domain, blur=args.blur, noise=args.noise,
                      avoid_species_of=args.avoid_species_of, body_plan=args.body_plan, rotation=args.rotation,
                      mirror=args.mirror, scale=tuple(args.scale))
    start = time.perf_counter()
    out = generate_collection(args.out, cfg, progress=True)
    seconds = time.perf_counter() - start
    info = collection_info(out)
    total = sum(info["images"].values())
    print(out)
    print(f"{info['species']} species in {len(info['genera'])} genera, {total} images "
          f"({', '.join(f'{k} {v}' for k, v in info['images'].items())}), {cfg.size} px, domain {cfg.domain}, "
          f"{cfg.body_plan} plan, "
          f"{seconds:.1f} s")
    write_json(args.json, {**info, "seconds": round(seconds, 3)})
    return 0


def _info(args) -> int:
    from traitlens.data.folders import describe_collection

    info = describe_collection(args.path)
    if info["layout"] == "splits" and ((args.path / "collection.json").is_file() or (args.path / "traits.json").is_file()):
        from traitlens.data.synthetic import collection_info

        info = {**collection_info(args.path), **{k: v for k, v in info.items() if k != "species"}}
    layouts = {"splits": "split folders", "split-file": "split.json", "cub": "CUB-200-2011",
               "classes": "unsplit class folders"}
    print(f"{info['path']}: {info['species']} species"
          + (f" in {len(info['genera'])} genera" if "genera" in info else "") + f" ({layouts[info['layout']]})")
    print("images: " + ", ".join(f"{k} {v}" for k, v in info["images"].items())
          + (" (" + ", ".join(f"{n} {ext}" for ext, n in info["formats"].items()) + ")" if info["formats"] else ""))
    if info.get("split_rule"):
        print(f"split: {info['split_rule']}")
    cfg = info.get("config")
    if cfg:
        print(f"made with: size {cfg['size']}, seed {cfg['seed']}, domain {cfg['domain']}, "
              f"{cfg['per_species']} per species, blur {cfg['blur']}, noise {cfg['noise']}")
    for genus, members in info.get("genera", {}).items():
        print(f"  {genus}: {', '.join(members)}")
    if "parts" in info:
        print("parts: " + ", ".join(f"{k} {v}" for k, v in info["parts"].items()))
    write_json(args.json, info)
    return 0


def _split(args) -> int:
    from traitlens.data.folders import SPLIT_FILE, read_split, write_split
    from traitlens.errors import UserError

    target = args.out if args.out is not None else args.path / SPLIT_FILE
    previous = None
    if target == args.path / SPLIT_FILE and target.exists():
        if not args.force:
            raise UserError(f"{target} exists; pass --force to replace it (commands reading --data {args.path} "
                            "then use the new split)")
        # the split earlier models were trained on is kept, never deleted: moved aside while the tree is split
        # again (the old file would make it a split-file collection), put back if that fails
        previous = target.with_name(SPLIT_FILE + ".previous")
        os.replace(target, previous)
    try:
        out = write_split(args.path, target, seed=args.seed, val=args.val, test=args.test)
    except BaseException:
        if previous is not None:
            os.replace(previous, target)
        raise
    definition = read_split(out)
    counts = {k: len(v) for k, v in definition["splits"].items()}
    print(out)
    if previous is not None:
        print(f"the split it replaces: {previous}")
    print(f"{len(definition['classes'])} classes; " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; {definition['rule']}")
    write_json(args.json, {"path": str(out), "images": counts, "rule": definition["rule"], "seed": args.seed})
    return 0


def _masks(args) -> int:
    import numpy as np
    from PIL import Image

    from traitlens.data.folders import find_images
    from traitlens.data.imageio import load_mask, read_palette
    from traitlens.errors import BadImageError, UserError
    from traitlens.progress import progress

    palette = "grey" if args.palette == "grey" else read_palette(Path(args.palette))
    files = find_images(args.masks)
    if not files:
        raise UserError(f"--masks {args.masks}: no mask images there")
    counts: dict = {}
    for path in progress(files, desc="masks", unit="mask"):
        try:
            labels = load_mask(path, palette=palette)
        except BadImageError as exc:
            raise UserError(f"{exc.path}: {exc.reason}") from None
        out = args.out / path.relative_to(args.masks).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        if labels.max(initial=0) > 255:
            Image.fromarray(labels.astype(np.uint16)).save(out)
        else:
            Image.fromarray(labels.astype(np.uint8), mode="L").save(out)
        for ident, n in zip(*np.unique(labels, return_counts=True)):
            counts[int(ident)] = counts.get(int(ident), 0) + int(n)
    print(f"wrote {len(files)} label maps → {args.out} (ids: {', '.join(str(k) for k in sorted(counts))})")
    write_json(args.json, {"masks": len(files), "out": str(args.out), "pixels_per_id": counts})
    return 0
