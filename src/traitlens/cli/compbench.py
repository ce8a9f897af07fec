"""``traitlens compbench``: run, score, build and export comparative-reasoning benchmarks."""

from __future__ import annotations

from pathlib import Path

from traitlens.cli.common import add_common, add_group, write_json
from traitlens.errors import UserError


def register(sub) -> None:
    g = add_group(sub, "compbench", "CompBench: ask multimodal models to compare two images, score them, "
                                    "build such benchmarks from your own collection")

    p = g.add_parser("run", help="ask a model every question of a benchmark and score it",
                     description="Answers go to OUT/results.jsonl as they come; at the end OUT/summary.json, "
                                 "summary.txt, accuracy.png and failures.html.")
    p.add_argument("--data", type=Path, required=True, help="benchmark folder (or one file) of .json/.jsonl records")
    p.add_argument("--images", type=Path, default=None,
                   help="folder the stored image paths are relative to (default: --data)")
    p.add_argument("--tasks", default="all", help="'all' or a comma-separated list of tasks (e.g. cub,vqav2)")
    p.add_argument("--model", required=True,
                   help="openai:NAME | hf:PATH | scripted:left | scripted:random | scripted:oracle")
    p.add_argument("--resume", action="store_true", help="keep OUT/results.jsonl and skip answered records")
    p.add_argument("--base-url", default=None,
                   help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL "
                        "or the OpenAI API); the key is read from $OPENAI_API_KEY only")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (openai:)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one request may take in all (connect, send, wait, read) before it is retried "
                        "(openai:)")
    p.add_argument("--retries", type=int, default=5, help="retries on 429/5xx/timeouts/malformed replies")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry; doubled on each further retry (openai:)")
    p.add_argument("--merged", action="store_true", help="send each pair as one merged image")
    p.add_argument("--wording", default=None, choices=["left_right", "first_second", "frame"],
                   help="how binary prompts name the two images (default: per task)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (a quick look)")
    p.add_argument("--split", default="all", choices=["all", "val", "test"],
                   help="only the records of a published split (the <label>_test.json file beside each label "
                        "file in --data, or --split-file)")
    p.add_argument("--split-file", type=Path, default=None, help="the published split file to use (one task)")
    add_common(p)
    p.set_defaults(func=_run)

    p = g.add_parser("score", help="score replies already stored in a results file, without running a model",
                     description="Score a results file's stored replies. With --split test the published split "
                                 "is used when --split-file is given, or found beside the label file given as "
                                 "--data (<label>_test.json); otherwise the seeded 80/20 split of the results "
                                 "file's own order, and the output says which.")
    p.add_argument("--results", type=Path, required=True, help="a .json or .jsonl file of records with replies")
    p.add_argument("--task", required=True, help="the task the file holds (e.g. cub, mb, qbench2)")
    p.add_argument("--answer-key", required=True, help="the field holding the reply (e.g. gpt_answer)")
    p.add_argument("--split", default="all", choices=["all", "val", "test"],
                   help="score one split (default: all records)")
    p.add_argument("--split-file", type=Path, default=None,
                   help="the published split file (e.g. CUB_0_1000_rebalanced_fixed_path_test.json)")
    p.add_argument("--data", type=Path, default=None,
                   help="the task's label file, or its folder: the split file beside it is used")
    p.add_argument("--split-seed", type=int, default=30,
                   help="seed of the seeded val/test split, used when there is no split file (default 30)")
    add_common(p, device=False, seed=False, out_required=False)
    p.set_defaults(func=_score)

    p = g.add_parser("build", help="mine look-alike pairs that differ in an attribute and write a benchmark")
    p.add_argument("--data", type=Path, required=True, help="image collection (a synthetic collection folder)")
    p.add_argument("--attributes", type=Path, required=True,
                   help="attribute annotations: traits.json of a synthetic collection, or a JSON of per-image "
                        "attributes ({'images': [{'path','class','group','attributes'}]})")
    p.add_argument("--pairs-per-attribute", type=int, default=4, help="pairs kept per attribute question")
    p.add_argument("--split", default="test", help="which split of the collection to draw from (default test)")
    p.add_argument("--group", default="auto", choices=["auto", "class", "genus"],
                   help="pair images of the same class or the same genus (auto: genus when classes are uniform)")
    p.add_argument("--feature", default="pixels",
                   help="similarity features: 'pixels' (colour histogram + thumbnail) or 'backbone:NAME'")
    p.add_argument("--task", default="specimen_attributes", help="name of the task written")
    p.add_argument("--noun", default="specimen", help="what the question calls an image's subject")
    add_common(p)
    p.set_defaults(func=_build)

    p = g.add_parser("export-lmms-eval", help="write the benchmark as an lmms-eval task (YAML + utils.py)")
    p.add_argument("--data", type=Path, required=True, help="benchmark folder of .json/.jsonl records")
    p.add_argument("--images", type=Path, default=None, help="folder the image paths are relative to (default --data)")
    p.add_argument("--tasks", default="all", help="'all' or a comma-separated list of tasks")
    add_common(p, device=False, seed=False)
    p.set_defaults(func=_export)


def _select(records, tasks: str):
    from traitlens.compbench.tasks import lookup

    if tasks.strip().lower() == "all":
        return records
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    present = {r.task for r in records}
    wanted = set()
    for n in names:
        name = lookup(n) or n
        if name not in present:
            raise UserError(f"task {n!r} has no records in the benchmark; it holds: {', '.join(sorted(present))}")
        wanted.add(name)
    return [r for r in records if r.task in wanted]


def _published_split(records, args):
    """``records`` cut to the published split ``args.split`` (per task), and what was chosen."""
    from traitlens.compbench.splits import find_split_file, select_published

    by_task = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    if args.split_file is not None and len(by_task) > 1:
        raise UserError(f"a split file fits one task, and the records hold {len(by_task)} "
                        f"({', '.join(sorted(by_task))}); choose one task", option="tasks")
    chosen, selections = [], []
    for task, recs in by_task.items():
        split_file = args.split_file or find_split_file(args.data, args.split, task=task)
        if split_file is None:
            raise UserError(f"no published {args.split} split file of task {task} in {args.data} (expected "
                            f"<label>_{args.split}.json beside the label file); give it as the split file",
                            option="split_file")
        recs, selection = select_published(recs, split_file, args.split, task=task)
        chosen += recs
        selections.append(selection)
    return chosen, selections


def _run(args) -> int:
    from traitlens.compbench.answerers import make_answerer
    from traitlens.compbench.records import load_benchmark
    from traitlens.compbench.runner import INVALID, RESULTS, run
    from traitlens.report.compbench import write_pages
    from traitlens.progress import log

    records, report = load_benchmark(args.data)
    log(f"compbench: {report.summary()}")
    records = _select(records, args.tasks)
    selections = []
    if args.split != "all":
        records, selections = _published_split(records, args)
        for sel in selections:
            print(sel.describe())
    elif args.split_file is not None:
        raise UserError("a split file is used with a split: add the split (val or test)", option="split")
    if args.limit is not None:
        records = records[: max(0, args.limit)]
    if not records:
        raise UserError(f"no records to run in {args.data}")
    results = Path(args.out) / RESULTS
    if not args.resume and results.is_file() and results.stat().st_size > 0:
        raise UserError(f"{results} already holds answers; pass --resume to continue it or choose another --out")
    kwargs = {}
    if args.model.startswith("openai:"):
        kwargs = {"api_key_env": args.api_key_env, "timeout": args.timeout, "max_retries": args.retries,
                  "backoff": args.backoff}
    answerer = make_answerer(args.model, base_url=args.base_url, concurrency=args.concurrency, device=args.device,
                             merged=args.merged, seed=args.seed, **kwargs)
    images = args.images if args.images is not None else (args.data if Path(args.data).is_dir() else Path(args.data).parent)
    result = run(records, answerer, args.out, resume=args.resume, image_root=images, wording=args.wording)
    write_pages(result, records, images, model=answerer.name)
    print(result.summary.format_table())
    print(f"answered now {result.answered_now}, before {result.already_answered}, "
          f"missing images {len(result.missing_images)}, invalid records {len(result.invalid)} "
          f"(see {INVALID}), failed {len(result.failed)}")
    if result.in_flight_before:
        print(f"{result.in_flight_before} requests were in flight when the last run stopped; they were sent again")
    print(Path(args.out).resolve() / "failures.html")
    payload = result.summary.to_json()
    payload.update(model=answerer.name, failed=len(result.failed), missing_images=len(result.missing_images),
                   invalid_records=len(result.invalid), in_flight_before=result.in_flight_before,
                   splits=[sel.to_json() for sel in selections])
    write_json(args.json, payload)
    return 1 if result.failed else 0


# fields that hold the ground truth, never a model's reply
_TRUTH_KEYS = {"answer", "Answer", "Answeer", "gt_answer", "ground_truth"}


def _score(args) -> int:
    import json

    from traitlens.compbench.records import load_records, spec_for
    from traitlens.compbench.runner import write_summary
    from traitlens.compbench.scoring import score_stored
    from traitlens.compbench.splits import find_split_file, select_published, select_seeded
    from traitlens.progress import log

    records, report = load_records(args.results, task=args.task)
    if report.bad_lines or report.invalid:
        log(f"compbench score: {report.summary()}")
    if not records:
        raise UserError(f"{args.results} holds no records to score ({report.summary()})")
    if not any(args.answer_key in r.raw for r in records):
        keys = sorted({k for r in records for k in r.raw
                       if k.lower().endswith("answer") and k not in _TRUTH_KEYS})
        raise UserError(f"no record in {args.results} has the field {args.answer_key!r}; "
                        f"fields that look like replies: {', '.join(keys) or 'none'}", option="answer_key")
    selection = None
    if args.split != "all":
        split_file = args.split_file
        if split_file is None and args.data is not None:
            split_file = find_split_file(args.data, args.split, task=records[0].task)
            if split_file is None:
                raise UserError(f"no {args.split} split file beside {args.data} (expected "
                                f"<label>_{args.split}.json); give it as the split file", option="split_file")
        if split_file is not None:
            records, selection = select_published(records, split_file, args.split, task=records[0].task)
        else:
            records, selection = select_seeded(records, args.split, seed=args.split_seed)
    elif args.split_file is not None or args.data is not None:
        raise UserError("a split file (or the label file beside it) is used with a split: add the split "
                        "(val or test)", option="split")
    summary, scored = score_stored(records, args.answer_key, lambda r: spec_for(r.task, r.raw))
    print(summary.format_table())
    if selection is not None:
        print(selection.describe())
    payload = summary.to_json()
    payload.update(file=str(args.results), answer_key=args.answer_key, split=args.split,
                   split_definition=selection.to_json() if selection else None,
                   skipped_empty=report.empty, skipped_bad_answer=report.bad_answer,
                   skipped_bad_lines=len(report.bad_lines), bad_lines=report.bad_lines[:100],
                   skipped_invalid=len(report.invalid))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_summary(summary, out, model=args.answer_key)
        with open(out / "scored.jsonl", "w", encoding="utf-8") as fh:
            for sc in scored:
                fh.write(json.dumps({"id": sc.id, "task": sc.task, "truth": sc.truth, "reply": sc.reply,
                                     "parsed": sc.parsed, "status": sc.status}, ensure_ascii=False,
                                    default=str) + "\n")
        (out / "score_info.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(out.resolve() / "summary.json")
    write_json(args.json, payload)
    return 0


def _build(args) -> int:
    from traitlens.compbench.build import build_benchmark

    result = build_benchmark(args.data, args.attributes, args.out, pairs_per_attribute=args.pairs_per_attribute,
                             split=args.split, group=args.group, feature=args.feature, task=args.task,
                             noun=args.noun, seed=args.seed, device=args.device)
    print(f"{result['pairs']} pairs over {result['attributes']} attribute questions -> {result['file']}")
    if result["skipped_images"]:
        print(f"{len(result['skipped_images'])} images left out (listed in benchmark_info.json)")
    write_json(args.json, result)
    return 0


def _export(args) -> int:
    from traitlens.compbench.lmms_eval import export_lmms_eval
    from traitlens.compbench.records import load_benchmark

    records, _ = load_benchmark(args.data)
    records = _select(records, args.tasks)
    images = args.images if args.images is not None else args.data
    written = export_lmms_eval(records, args.out, image_root=images)
    for p in written:
        print(p)
    write_json(args.json, {"written": [str(p) for p in written]})
    return 0
