"""``traitlens atlas``: which trait tells species A from species B, across a whole collection.

    traitlens atlas --checkpoint runs/vit --data synth/ --pairs siblings --out atlas/
    traitlens atlas --checkpoint runs/vit --data photos/ --parts-from support \\
        --support photos/train/A/1.png --support-mask masks/A_1.png --part-names parts.txt --out atlas/

For every pair of species: the parts ranked by the combined evidence (Finer-CAM energy share with the other
species as reference against the part's area, Grad-CAM as the control, Prompt-CAM/INTR heads when the model has
them, and the drop in p(A) − p(B) when the part is removed against a random region of the same area), each with
a bootstrap 95% interval; ``atlas.json``, ``atlas.csv`` and ``index.html`` (one card per pair). Resumable and
shardable with torchrun (:mod:`traitlens.runs.atlas_job`); a rerun into a finished folder redraws it in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from traitlens.cli.common import add_common, write_json
from traitlens.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("atlas", help="rank the parts that tell species pairs apart, over a whole collection",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="a trained classifier run folder")
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="collection: split folders (<split>/<species>/<image>, optional masks/ and traits.json), a CUB root, "
                        "an unsplit <species>/<image> tree or a folder with split.json, as train reads them")
    p.add_argument("--split", default="test", help="split whose images are read (default test)")
    p.add_argument("--pairs", default="siblings", metavar="siblings|confused|all|A:B,...",
                   help="species pairs: siblings (traits.json genera), confused (the validation confusion "
                        "matrix), all, or explicit A:B pairs (folder or display names)")
    p.add_argument("--top-confused", dest="top_confused", type=int, default=None, metavar="N",
                   help="with --pairs confused: the N most confused pairs (default: as many as species)")
    p.add_argument("--parts-from", dest="parts_from", choices=["auto", "masks", "support"], default="auto",
                   help="part maps: the collection's masks, or propagated from --support specimens "
                        "(auto: masks when the collection has them)")
    p.add_argument("--support", action="append", default=[], metavar="IMG",
                   help="a labelled specimen (repeat; its species is its folder's name when that is a species)")
    p.add_argument("--support-mask", dest="support_mask", action="append", default=[], metavar="MASK",
                   help="the part-label map of each --support, in the same order")
    p.add_argument("--part-names", dest="part_names", type=Path, default=None, metavar="FILE",
                   help="part id → name (JSON or lines '<id> <name>'; default: traits.json's parts)")
    p.add_argument("--removal", choices=["inpaint", "blur"], default="inpaint",
                   help="how a part is removed: in-painted with the specimen's colours around it, or blurred")
    p.add_argument("--margin", choices=["pair", "all"], default="pair",
                   help="p(A) − p(B) over the two species (pair, default) or over every class (all)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamplings for the intervals")
    add_common(p)
    p.set_defaults(func=run)


def _split_items(root: Path, split: str, skipped):
    """The images of split ``split`` of ``--data root`` as ``<species>/<image>`` items, whatever the layout: split
    folders, a CUB root, an unsplit tree or a ``split.json`` (as ``train`` reads them); a listed image that is
    missing is skipped and listed."""
    from traitlens.data.folders import resolve_split
    from traitlens.runs import discover
    from traitlens.runs.inputs import unique_items

    definition = resolve_split(root)
    if definition is None:
        if not (root / split).is_dir():
            raise UserError(f"no split folder {root / split}; give --data a collection folder and --split one of "
                            "its splits")
        return discover([root / split], skipped)
    rows = definition["splits"].get(split)
    if not rows:
        raise UserError(f"--split {split}: {root} has no such split (it has {', '.join(definition['splits'])})")
    named = []
    for rel, label in rows:
        path, species = root / rel, str(definition["classes"][label])
        if not path.is_file():
            skipped.add(path, f"listed in split {split!r} but missing")
            continue
        parts = Path(rel).parts
        below = parts[parts.index(species) + 1:] if species in parts[:-1] else parts[-1:]
        named.append(("/".join((species, *below)), path))
    if not named:
        raise UserError(f"--split {split}: none of the {len(rows)} images listed for {root} is there")
    return unique_items(named)


def _supports(args, names, traits, part_names):
    from traitlens.atlas import LabelledSupport, PartPropagator, check_support_ids
    from traitlens.atlas.pairs import name_lookup
    from traitlens.segment import load_support

    if not args.support:
        raise UserError("--parts-from support needs at least one --support IMG with its --support-mask MASK")
    if len(args.support) != len(args.support_mask):
        raise UserError(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files; "
                        "give one mask per support, in the same order")
    lookup = name_lookup(names, traits)
    supports = []
    for img, mask in zip(args.support, args.support_mask):
        frame, labels = load_support(Path(img), Path(mask))
        check_support_ids(labels, part_names, mask)
        folder = Path(img).parent.name.replace("_", " ").lower()
        supports.append(LabelledSupport(frame, labels, lookup.get(" ".join(folder.split())), str(img)))
    genus = {}
    if traits is not None:
        for i, n in enumerate(names):
            try:
                genus[i] = traits.genus_of(n)
            except UserError:
                pass
    return PartPropagator(supports, genus)


def run(args) -> int:
    from traitlens.atlas import EvidenceOptions, part_names_from, select_pairs
    from traitlens.data.imageio import SkippedFiles
    from traitlens.data.traits import load_traits
    from traitlens.engine import distributed
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform
    from traitlens.methods import evaluate_checkpoint, load_model
    from traitlens.runs.atlas_job import atlas_collection

    if args.bootstrap < 10:
        raise UserError("--bootstrap must be at least 10")
    traits = load_traits(args.data) if (args.data / "traits.json").is_file() else None
    skipped = SkippedFiles()
    items = _split_items(args.data, args.split, skipped)
    with distributed.leaving():
        ctx = distributed.setup(args.device)
        torch.manual_seed(args.seed)
        model, meta = load_model(args.checkpoint, device=ctx.device)
        names = list(meta.get("class_names") or [])
        if not names:
            raise UserError(f"{args.checkpoint} has no class names in its model.json; the atlas needs named species")
        confusion = None
        if args.pairs == "confused":
            confusion = evaluate_checkpoint(args.checkpoint, args.data, split="val", device=str(ctx.device))["confusion"]
        pairs, skipped_pairs = select_pairs(args.pairs, names, traits, confusion, args.top_confused)
        for s in skipped_pairs:
            print(f"traitlens atlas: left out pair {s['pair']}: {s['reason']}")
        part_names = part_names_from(traits, args.part_names)
        mask_root = args.data / "masks" / args.split
        use_masks = args.parts_from == "masks" or (args.parts_from == "auto" and mask_root.is_dir())
        if use_masks and not mask_root.is_dir():
            raise UserError(f"--parts-from masks: no mask folder {mask_root}; use --parts-from support with --support")
        options = EvidenceOptions(removal=args.removal, margin=args.margin)
        extra = dict(mask_root=mask_root) if use_masks else dict(propagator=_supports(args, names, traits, part_names))
        summary = atlas_collection(model, items, eval_transform(model, config_from_meta(meta)), args.out, names, pairs,
                                   part_names, skipped=skipped, options=options, traits=traits,
                                   skipped_pairs=skipped_pairs, batch_size=args.batch_size, bootstrap=args.bootstrap,
                                   seed=args.seed, **extra)
    if not ctx.main:
        return 0
    summary.pop("seconds", None)
    write_json(args.json, summary)
    print(f"{summary['done']} images ({summary['resumed']} already done, {summary['skipped']} left out) → "
          f"{summary['pairs']} pairs, {summary['localised']} with a localised trait: {summary['atlas']}, "
          f"{summary['csv']}, {summary['index']}")
    if summary.get("precision"):
        print("against traits.json: " + ", ".join(f"{k} P@1 {v['precision_at_1']:.2f} MRR {v['mrr']:.2f}"
                                                  for k, v in summary["precision"].items()))
    return 0
