"""``traitlens segment`` (+ ``segment finetune``) and ``traitlens retrieve``: segmentation by tracking."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from traitlens.cli.common import add_common, add_restart, part_id, read_part_names, write_json
from traitlens.errors import UserError

#: The job options a Segment-tab project stores (``traitlens.app.project.DEFAULT_OPTIONS``): with ``--project``
#: a flag given on the command line overrides the project's value.
PROJECT_OPTIONS = ("backend", "features", "work_size", "local", "order", "batch_size", "seed")
CHOICES = {"backend": ("labelprop", "sam2"), "features": ("colour", "backbone", "backbone+colour"),
           "order": ("pairwise", "chain", "similarity")}


def work_size(text: str):
    """``--work-size``: a side in pixels, or ``"auto"`` (the side the supports' thinnest trait asks for)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a side in pixels (at least 16) or 'auto'") from None


def _backend_options(p) -> None:
    p.add_argument("--support", type=Path, action="append", default=[], metavar="IMG",
                   help="a labelled support image (repeat with --support-mask for several)")
    p.add_argument("--support-mask", type=Path, action="append", default=[], metavar="MASK",
                   help="its label map PNG (0 = background, k = trait k)")
    p.add_argument("--images", type=Path, nargs="+", default=None, help="image files and/or folders")
    p.add_argument("--backend", default="labelprop", choices=CHOICES["backend"])
    p.add_argument("--features", default="colour", choices=CHOICES["features"],
                   help="label propagation features (default colour: no weights needed)")
    p.add_argument("--backbone", type=Path, default=None, help="traitlens checkpoint folder for --features backbone")
    p.add_argument("--work-size", type=work_size, default=128, metavar="PX|auto",
                   help="label propagation working resolution in pixels, or auto: the smallest side at which the "
                        "supports' thinnest trait spans 3 grid cells, within 128-256 (default 128)")
    p.add_argument("--local", type=int, default=3, help="local window radius after registration, in work-grid cells (default 3)")
    p.add_argument("--projection", type=Path, default=None, help="projection from `segment finetune` (labelprop)")
    p.add_argument("--checkpoint", default=None,
                   help="SAM 2 weights: a local folder, or a hub id fetched only with --download")
    p.add_argument("--download", action="store_true", help="allow fetching the SAM 2 checkpoint from the hub")
    p.add_argument("--offload-video", action="store_true", help="SAM 2: keep frames on the CPU")
    p.add_argument("--offload-state", action="store_true", help="SAM 2: keep the memory on the CPU")
    p.add_argument("--traits", type=Path, default=None, metavar="FILE",
                   help="traits.json naming the part ids (default: one beside the support image, if any)")
    p.add_argument("--part-names", type=Path, default=None, metavar="FILE",
                   help="part names of the support mask's ids: JSON {\"6\": \"wing_spot\"} or lines 'ID NAME'")


def register(sub) -> None:
    s = sub.add_parser(
        "segment", help="propagate one labelled specimen's trait masks to a collection (SST)",
        description="Segment every image from labelled support image(s): label-map PNGs mirroring the input "
                    "tree, overlays, results.jsonl, measurements.csv, summary.json and index.html; per-trait "
                    "IoU with --gt. Streaming, resumable (done images are skipped), shardable with torchrun.")
    add_common(s, out_required=False)
    s.add_argument("--project", type=Path, default=None, metavar="DIR",
                   help="run the job of a project saved by the app's Segment tab: its supports, part names, image "
                        "folder and options (--backend, --features, --work-size, --local, --order, --batch-size, "
                        "--seed; each flag given here overrides the project's; --images too); --out defaults "
                        "to DIR/runs/bulk")
    _backend_options(s)
    s.add_argument("--order", default="pairwise", choices=CHOICES["order"])
    s.add_argument("--reinsert-every", type=int, default=None, help="put the support back every N frames (chain)")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--gt", type=Path, default=None, help="ground-truth label maps mirroring --images")
    s.add_argument("--dataset", default=None, choices=["heliconius", "neon-beetles"],
                   help="segment a local copy of a published trait-mask release (--dataset-root): its images are "
                        "the queries, its masks the ground truth")
    s.add_argument("--dataset-root", type=Path, default=None, metavar="DIR", help="the release's folder (--dataset)")
    s.add_argument("--split", default="test",
                   help="Heliconius: the list to segment: test (default), train, or minor_species")
    s.add_argument("--group", default=None,
                   help="Heliconius: one train_test_separate/<group> only (minor_species: one species)")
    s.add_argument("--support-id", default=None, metavar="ID",
                   help="--dataset without --support: the record whose mask is the support (default: the first "
                        "masked record of the train list for Heliconius, of the release for NEON)")
    s.add_argument("--no-overlays", action="store_true")
    s.add_argument("--gallery", type=int, default=60)
    add_restart(s)
    # None: not given on the command line, so --project's value (or the default) applies (_job_options).
    s.set_defaults(func=_segment, **{key: None for key in PROJECT_OPTIONS})
    inner = s.add_subparsers(dest="segment_command", metavar="COMMAND")
    f = inner.add_parser(
        "finetune", help="cycle-consistent fine-tuning from the support alone",
        description="Support → query → support with a memory reset, BCE + Dice against the support's mask. "
                    "labelprop: trains a feature projection (projection.safetensors, use with --projection). "
                    "sam2: trains LoRA adapters (--lora) or memory/decoder weights (saved with save_pretrained).")
    add_common(f)
    _backend_options(f)
    f.add_argument("--steps", type=int, default=50)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--lora", type=int, default=0, help="SAM 2: LoRA rank (0: train the non-encoder weights)")
    f.add_argument("--checkpoint-every", type=int, default=5, metavar="N",
                   help="save the training state to OUT/finetune-state.pt every N steps; a rerun with the same "
                        "options resumes from it (default 5)")
    f.add_argument("--restart", action="store_true", help="ignore a saved training state and start again")
    f.set_defaults(func=_finetune)

    r = sub.add_parser(
        "retrieve", help="rank images by whether they carry a trait (cycle consistency)",
        description="Score each image by the IoU of the support's trait K after support → image → support "
                    "(a real reverse pass), rank descending: ranking.csv, ranking.jsonl, index.html.")
    add_common(r)
    _backend_options(r)
    r.add_argument("--trait", required=True, metavar="ID|NAME",
                   help="the trait: its id in the support mask, or its name (wing_spot) from --traits / --part-names")
    r.add_argument("--top", type=int, default=30, help="images shown in index.html")
    add_restart(r)
    r.set_defaults(func=_retrieve)


# ------------------------------------------------------------------------------------------ helpers
def _supports(args):
    from traitlens.segment.support import load_support

    if not args.support:
        raise UserError("--support IMG --support-mask MASK is required (at least one labelled image)")
    if len(args.support) != len(args.support_mask):
        raise UserError(f"{len(args.support)} --support but {len(args.support_mask)} --support-mask: give one mask per image")
    return [load_support(i, m) for i, m in zip(args.support, args.support_mask)]


def _items(args, skipped=None):
    from traitlens.runs import discover

    if not args.images:
        raise UserError("--images DIR|FILES is required")
    return discover(args.images, skipped)


def _support_info(args):
    """The --support/--support-mask pairs as summary.json describes them."""
    return [{"image": str(i), "mask": str(m)} for i, m in zip(args.support, args.support_mask)]


def _release(args):
    """--dataset: the release's supports, queries and ground truth (segment.datasets.release_queries)."""
    from traitlens.segment.datasets import NoSupportRecord, release_queries

    if args.dataset_root is None:
        raise UserError(f"--dataset {args.dataset} needs --dataset-root DIR (the release's local copy)")
    if args.images or args.gt:
        raise UserError("--dataset takes its images and ground truth from --dataset-root: drop --images / --gt")
    given = (_supports(args), _support_info(args)) if args.support else (None, None)
    try:
        return release_queries(args.dataset, args.dataset_root, split=args.split, group=args.group,
                               support_id=args.support_id, supports=given[0], support_info=given[1])
    except NoSupportRecord as exc:
        raise UserError(f"{exc}; give --support-id ID or --support IMG --support-mask MASK") from None


def _propagator(args, device, differentiable=False):
    from traitlens.segment.backends import build_propagator
    from traitlens.segment.propagator import BackendOptionError

    if args.work_size != "auto" and args.work_size < 16:
        raise UserError(f"--work-size {args.work_size}: use at least 16")
    try:
        return build_propagator(args.backend, device=device, work_size=args.work_size, features=args.features,
                                backbone=args.backbone, local=args.local, projection=args.projection,
                                checkpoint=args.checkpoint, download=args.download,
                                offload_video=args.offload_video, offload_state=args.offload_state,
                                differentiable=differentiable)
    except BackendOptionError as exc:  # the library names its arguments; the user knows the flags
        flag = f"--{exc.option}" + (f" {exc.value}" if exc.value is not None else "")
        raise UserError(f"{flag}: {exc.problem}") from None


def _trait_names(args) -> dict:
    """``{part id: name}`` from --part-names, --traits, or a traits.json in a folder above the support image."""
    if args.part_names is not None or args.traits is not None:
        return read_part_names(args.traits, args.part_names)
    for support in args.support[:1]:
        for folder in list(Path(support).resolve().parents)[:5]:
            if (folder / "traits.json").is_file():
                try:
                    return read_part_names(folder / "traits.json")
                except UserError:
                    return {}
    return {}


def _job_options(args, project=None) -> None:
    """Fill segment's :data:`PROJECT_OPTIONS` left unset on the command line (None) from ``project``'s options,
    else from the defaults a project starts with (those of ``retrieve`` and ``segment finetune`` too)."""
    from traitlens.app.project import DEFAULT_OPTIONS

    stored = project.options if project is not None else {}
    for key in PROJECT_OPTIONS:
        if getattr(args, key) is not None:
            continue
        value = stored.get(key, DEFAULT_OPTIONS[key])
        try:
            value = work_size(value) if key == "work_size" else type(DEFAULT_OPTIONS[key])(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UserError(f"--project {args.project}: project.json's option {key} is {value!r}, not a "
                            f"{type(DEFAULT_OPTIONS[key]).__name__}; fix it there or give --{key.replace('_', '-')}") from None
        if value not in CHOICES.get(key, (value,)):
            raise UserError(f"--project {args.project}: project.json's option {key} is {value!r}, not one of "
                            f"{', '.join(CHOICES[key])}; fix it there or give --{key}")
        setattr(args, key, value)


def _project(args):
    """``--project DIR``: the app's saved project (``traitlens.app.project.SegmentProject``), its supports and
    image folder put on ``args`` (--images and --out given on the command line win); one line when it is bad."""
    from traitlens.app.project import SegmentProject

    if args.dataset:
        raise UserError("--project and --dataset are two different jobs: give one of them")
    if args.support or args.support_mask:
        raise UserError(f"--project {args.project} takes its supports from the project: drop --support / "
                        "--support-mask, or add the support in the app's Segment tab")
    project = SegmentProject.load(args.project)
    if not project.supports:
        raise UserError(f"--project {args.project}: the project has no support yet; add one in the app's Segment tab")
    pairs = []
    for n, entry in enumerate(project.supports, start=1):
        pair = []
        for kind in ("image", "mask"):
            rel = entry.get(kind) if isinstance(entry, dict) else None
            if not rel or not (project.folder / rel).is_file():
                raise UserError(f"--project {args.project}: support {n}'s {kind} {rel or '(none)'} is missing from "
                                "the project folder; add the support again in the app's Segment tab")
            pair.append((project.folder / rel).resolve())
        pairs.append(pair)
    args.support, args.support_mask = [i for i, _ in pairs], [m for _, m in pairs]
    if args.images is None:
        if project.images is None:
            raise UserError(f"--project {args.project}: the project names no image folder; give --images DIR")
        args.images = [project.images]
    if args.out is None:
        args.out = project.folder / "runs" / "bulk"  # where the project's segment.sh writes
    return project


def _work_side(args, supports):
    """Under ``--work-size auto`` with label propagation, the side it works at: the largest the supports ask
    for (``traitlens.segment.support.work_side`` of each mask, as the propagator picks it); else None."""
    from traitlens.segment.support import WORK_BOUNDS, work_side

    if args.work_size != "auto" or args.backend != "labelprop":
        return None
    return max(work_side(labels, bounds=WORK_BOUNDS) for _, labels in supports)


def _run_options(args, side=None) -> dict:
    """What segment / retrieve records depend on beyond the job's settings: the supports' files (by digest) and
    the backend's options (``side``: the side ``--work-size auto`` chose, :func:`_work_side`, for the reader)."""
    from traitlens.runs.store import file_digest

    options = {"supports": [[file_digest(i), file_digest(m)] for i, m in zip(args.support, args.support_mask)],
               "backend": args.backend, "features": args.features, "work_size": args.work_size, "local": args.local,
               "projection": file_digest(args.projection), "sam2": args.checkpoint}
    if side is not None:
        options["work_side"] = side
    if getattr(args, "dataset", None):
        options.update(dataset=args.dataset, split=args.split, group=args.group, support_id=args.support_id)
    if args.backbone is not None:
        options["backbone"] = (file_digest(Path(args.backbone) / "model.json") if Path(args.backbone).is_dir()
                               else file_digest(args.backbone))
    return options


# ----------------------------------------------------------------------------------------- commands
def _segment(args) -> int:
    import torch

    from traitlens.data.imageio import SkippedFiles
    from traitlens.engine import distributed
    from traitlens.runs.segment_job import segment_collection

    project = _project(args) if args.project is not None else None
    _job_options(args, project)
    if args.out is None:
        raise UserError("--out DIR is required")
    skipped = SkippedFiles()
    if args.dataset:
        release = _release(args)
        supports, info, items, gt, missing = (release.supports, release.support_info, release.queries,
                                              release.gt, release.missing)
    else:
        supports, items, gt, missing = _supports(args), _items(args, skipped), args.gt, []
        info = _support_info(args)
        if gt is not None and not gt.is_dir():
            raise UserError(f"--gt {gt}: not a folder")
    extra = {"not_on_disk": {"count": len(missing), "ids": missing[:100]}} if missing else {}
    side = _work_side(args, supports)
    if side is not None:
        extra["work_side"] = side
    names = project.parts if project is not None and args.part_names is None and args.traits is None \
        else _trait_names(args)
    with distributed.leaving():
        ctx = distributed.setup(args.device)
        torch.manual_seed(args.seed)
        prop = _propagator(args, ctx.device)
        summary = segment_collection(prop, supports, items, args.out, gt=gt, skipped=skipped, order=args.order,
                                     batch_size=args.batch_size, reinsert_every=args.reinsert_every,
                                     overlays=not args.no_overlays, gallery=args.gallery, support_info=info,
                                     extra=extra or None, trait_names=names,
                                     run_options=_run_options(args, side), restart=args.restart)
    if not ctx.main:
        return 0
    summary.pop("seconds")
    miou = f", mIoU {summary['miou']:.3f}" if "miou" in summary else ""
    gone = f", {len(missing)} listed but not on disk" if missing else ""
    chosen = f", work size auto: {side} px" if side is not None else ""
    print(f"segmented {summary['done']} images ({summary['resumed']} already done, {summary['skipped']} unreadable"
          f"{gone}){miou}{chosen} → {args.out}")
    if summary.get("gt_errors"):
        bad = summary["gt_errors"]
        print(f"ground truth not scored for {bad['count']} images (first: {bad['first']})")
    write_json(args.json, summary)
    return 0


def _finetune(args) -> int:
    import torch

    from traitlens.data.imageio import SkippedFiles
    from traitlens.engine.distributed import resolve_device
    from traitlens.progress import bar, log
    from traitlens.segment.finetune import (cycle_finetune, load_training_state, save_finetuned,
                                            save_training_state, trainable_parameters)
    from traitlens.segment.support import load_frames

    supports = _supports(args)
    if len(supports) != 1:
        raise UserError("segment finetune takes one --support/--support-mask pair")
    skipped = SkippedFiles()
    frames = load_frames([(it.id, it.path) for it in _items(args, skipped)], skipped)
    if not frames:
        raise UserError("--images: no readable images to fine-tune on")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    prop = _propagator(args, device, differentiable=True)
    params = trainable_parameters(prop, args.backend, lora=args.lora)
    if args.steps < 1 or args.checkpoint_every < 1:
        raise UserError("--steps and --checkpoint-every must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "finetune-state.pt"
    options = {"backend": args.backend, "steps": args.steps, "lr": args.lr, "lora": args.lora, "seed": args.seed,
               "support": [str(p) for p in (args.support or [])], "images": [f for f, _ in frames],
               "work_size": args.work_size}
    side = _work_side(args, supports)
    if side is not None:
        options["work_side"] = side
    if args.restart:
        state_path.unlink(missing_ok=True)
    resume = load_training_state(state_path, options)
    done = len(resume["losses"]) if resume else 0
    if done:
        log(f"resuming cycle fine-tuning at step {done + 1} of {args.steps} from {state_path}")
    progress = bar(args.steps, desc="cycle fine-tuning", unit="step", initial=done)
    losses = cycle_finetune(prop, params, supports[0], [f for _, f in frames], steps=args.steps, lr=args.lr,
                            seed=args.seed, resume=resume, checkpoint_every=args.checkpoint_every,
                            on_checkpoint=lambda state: save_training_state(state, state_path, options),
                            on_step=lambda i, loss: (progress.update(1), progress.set_postfix(loss=f"{loss:.3f}")))
    progress.close()
    saved = save_finetuned(prop, args.backend, args.out, lora=args.lora)
    result = {"backend": args.backend, "steps": args.steps, "lr": args.lr, "first_loss": losses[0],
              "last_loss": losses[-1], "losses": losses, "images": len(frames), "skipped": skipped.count,
              "saved": saved, "work_size": args.work_size, **({"work_side": side} if side is not None else {})}
    (args.out / "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
    if skipped:
        skipped.write(args.out / "skipped.jsonl")
        log(skipped.summary(args.out / "skipped.jsonl"))
    print(f"cycle loss {losses[0]:.3f} → {losses[-1]:.3f} over {args.steps} steps → {args.out}")
    write_json(args.json, result)
    return 0


def _retrieve(args) -> int:
    import torch

    from traitlens.data.imageio import SkippedFiles
    from traitlens.engine.distributed import resolve_device
    from traitlens.runs.retrieve_job import retrieve_collection

    supports = _supports(args)
    if len(supports) != 1:
        raise UserError("retrieve takes one --support/--support-mask pair")
    support = supports[0]
    names = _trait_names(args)
    trait = part_id(args.trait, names, "--trait")
    if not bool((support[1] == trait).any()):
        present = sorted(int(i) for i in support[1].unique() if i > 0)
        raise UserError(f"--trait {args.trait}: the support mask has no pixel with id {trait} (ids present: "
                        + ", ".join(f"{names[i]} ({i})" if i in names else str(i) for i in present) + ")")
    skipped = SkippedFiles()
    items = _items(args, skipped)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    prop = _propagator(args, device)
    options = _run_options(args, _work_side(args, supports))
    result = retrieve_collection(prop, support, trait, items, args.out, top=args.top, skipped=skipped,
                                 trait_name=names.get(trait), run_options=options,
                                 restart=args.restart)
    shown = f"{names[trait]} ({trait})" if trait in names else str(trait)
    print(f"ranked {len(result['ranking'])} images by trait {shown} ({result['skipped']} unreadable) → {args.out}")
    write_json(args.json, {"trait": trait, "trait_name": names.get(trait), "ranking": result["ranking"],
                           "skipped": result["skipped"]})
    return 0
