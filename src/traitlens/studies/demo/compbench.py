"""The demo's CompBench section: a comparative benchmark built from the synthetic collection, and the
scripted baselines (always-left, random, oracle) run on it. Takes seconds; the benchmark is cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from traitlens.report import Section
from traitlens.report.compbench import native_size_figures
from traitlens.studies.memo import memo_path
from traitlens.studies.recipes import COMPBENCH_BUILD

BASELINES = [("always-left", "scripted:left"), ("random", "scripted:random"), ("oracle", "scripted:oracle")]


def _benchmark(ctx) -> Path:
    """Build (or reuse) the benchmark under ``ctx.cache``; rebuilt when the collection changes."""
    from traitlens.compbench.build import build_benchmark

    study = dict(build=COMPBENCH_BUILD, data=str(Path(ctx.data).resolve()), seed=ctx.seed)
    bench = memo_path(ctx.cache, "benchmark", study)
    if (bench / "benchmark_info.json").is_file():  # written last by build_benchmark
        return bench
    build_benchmark(ctx.data, Path(ctx.data) / "traits.json", bench,
                    pairs_per_attribute=COMPBENCH_BUILD.pairs_per_attribute, split=COMPBENCH_BUILD.split,
                    feature="pixels", task="specimen_attributes", noun="specimen", seed=ctx.seed)
    return bench


def demo_section(ctx) -> Section:
    from traitlens.compbench.answerers import make_answerer
    from traitlens.compbench.merge import merge_pair
    from traitlens.compbench.records import load_benchmark, resolve_image
    from traitlens.compbench.runner import run
    from traitlens.data.imageio import load_image

    bench = _benchmark(ctx)
    records, _ = load_benchmark(bench)
    info = json.loads((bench / "benchmark_info.json").read_text())
    rows = []
    for label, model in BASELINES:
        res = run(records, make_answerer(model, seed=ctx.seed), Path(ctx.cache) / "runs" / label, resume=False,
                  image_root=bench)
        t = res.summary.tasks["specimen_attributes"]
        rows.append({"answerer": label, "pairs": t.n, "correct": t.correct, "accuracy": t.accuracy,
                     "unparseable": t.unparseable})

    s = Section("Comparative questions about look-alike specimens (CompBench-style)",
                intro="traitlens mined pairs of specimens from sibling species of one genus that look alike "
                      "(cosine similarity of colour-histogram and thumbnail features) but differ in one "
                      "attribute of traits.json, and asked which of the two has it. Answers come from the "
                      "trait table, so they are right by construction; a multimodal model is scored on them "
                      "with `traitlens compbench run --model openai:NAME` or `hf:PATH`.")
    s.text(f"{info['pairs']} pairs over {info['attributes']} attribute questions; answers "
           f"{info['answers']['Left']} Left / {info['answers']['Right']} Right.")
    s.table(rows, columns=["answerer", "pairs", "correct", "accuracy", "unparseable"],
            caption="Scripted baselines: chance level is about 0.5; the oracle checks the pipeline end to end")
    examples = []
    seen = set()
    for r in records:
        attr = r.raw.get("attribute")
        if attr in seen:
            continue
        seen.add(attr)
        a, b = (load_image(resolve_image(bench, p)) for p in (r.image_1, r.image_2))
        pair = merge_pair(a, b)
        pair = pair.resize((pair.width * 2, pair.height * 2), Image.NEAREST)  # 2x, drawn at that size
        examples.append((np.asarray(pair), f"{r.question} Answer: {r.answer}"))
        if len(examples) == 6:
            break
    s.html(native_size_figures(examples))
    return s
