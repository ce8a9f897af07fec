"""``traitlens demo``: the main job on the embedded default."""

from __future__ import annotations

from pathlib import Path

from traitlens.cli.common import add_common, write_json


def register(sub) -> None:
    p = sub.add_parser("demo", help="run every method on the embedded synthetic collection and write an HTML report",
                       description="Make (or reuse) the synthetic collection and the tiny pretrained backbones, "
                                   "train the demo classifiers, run each method's section and write OUT/index.html.")
    add_common(p)
    p.add_argument("--sections", default="all",
                   help="comma-separated sections to run (explain,models,segment,atlas,calibrate,compbench) or 'all'")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache folder for the demo's runs (default: $TRAITLENS_CACHE/demo or ~/.cache/traitlens/demo)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from traitlens.engine.distributed import resolve_device
    from traitlens.errors import UserError
    from traitlens.studies.demo import SECTIONS, run_demo

    sections = None if args.sections == "all" else [s.strip() for s in args.sections.split(",") if s.strip()]
    known = [name for name, _ in SECTIONS]
    unknown = [s for s in sections or [] if s not in known]
    if unknown or sections == []:
        raise UserError(f"--sections {args.sections}: {', '.join(unknown) or 'no section named'}; "
                        f"give some of {','.join(known)} or 'all'")
    result = run_demo(args.out, device=str(resolve_device(args.device)), seed=args.seed, sections=sections,
                      cache=args.cache)
    print(f"demo finished in {result['seconds']:.0f}s")
    if result["failed"]:
        print(f"sections that failed: {', '.join(result['failed'])} (see the report)")
    print(Path(result["index"]).resolve())
    write_json(args.json, result)
    print(_app_hint(args))
    return 1 if result["failed"] else 0


def _app_hint(args) -> str:
    """The last line: ``traitlens app`` over the demo's own checkpoints (its Prompt-CAM one shows the Heads tab).

    Only looks the finished runs up (the newest classifier and Prompt-CAM run folders of the demo cache, the
    collection's memo path); it never trains or renders anything.
    """
    import shlex

    from traitlens.cache import cache_dir
    from traitlens.studies.demo import collection_path
    from traitlens.studies.recipes import DEMO_COLLECTION

    def newest(pattern):
        found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
        return found[-1].parent if found else None

    root = Path(args.cache) if args.cache else cache_dir("demo")
    run, prompt = newest("runs/classifier-vit-*/model.json"), newest("models/prompt-cam-*/model.json")
    images = collection_path(DEMO_COLLECTION) / "test"
    if run is None or not images.is_dir():
        return "explore a checkpoint in the browser: traitlens app --checkpoint RUN --images DIR"
    line = f"explore it in the browser: traitlens app --checkpoint {shlex.quote(str(run))} --images {shlex.quote(str(images))}"
    if prompt is not None:
        line += f"  (Heads tab: --checkpoint {shlex.quote(str(prompt))})"
    return line
