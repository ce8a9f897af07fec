"""Demo section "Trait atlas": for every sibling pair, the part that tells the two species apart, with its
evidence and intervals, scored against the pair table of ``traits.json``.

Runs ``traitlens atlas`` (:func:`traitlens.runs.atlas_job.atlas_collection`) on the test split with the demo's
ViT and CNN classifiers, parts from the collection's masks, into run folders under ``ctx.cache`` keyed by
:mod:`traitlens.studies.memo` (and the atlas code's digest): a second demo run reads ``atlas.json`` and
``cards.npz`` back and only draws. First run: about a minute of one CPU core for both models.
"""

from __future__ import annotations

from pathlib import Path

from traitlens.report import Section
from traitlens.studies.memo import memo_path, source_digest
from traitlens.studies.recipes import ATLAS


def atlas_run(ctx, kind: str) -> Path:
    """The atlas of the demo's ``kind`` classifier (made once; the runner resumes an interrupted one)."""
    from traitlens.atlas import EvidenceOptions, part_names_from, select_pairs
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform
    from traitlens.methods import load_model
    from traitlens.runs import discover
    from traitlens.runs.atlas_job import atlas_collection

    study = dict(atlas=ATLAS, checkpoint=str(ctx.checkpoints[kind]), seed=ctx.seed,
                 code=source_digest(("atlas", "runs", "report")))
    out = memo_path(ctx.cache, f"atlas-{kind}", study)
    if (out / "atlas.json").is_file() and (out / "cards.npz").is_file():
        return out
    model, meta = load_model(ctx.checkpoints[kind], device=ctx.device)
    names = meta["class_names"]
    pairs, skipped = select_pairs(ATLAS.pairs, names, ctx.traits)
    ctx.log(f"demo: the trait atlas of the {kind.upper()} ({len(pairs)} sibling pairs)")
    atlas_collection(model, discover([ctx.data / "test"]), eval_transform(model, config_from_meta(meta)), out, names,
                     pairs, part_names_from(ctx.traits), mask_root=ctx.data / "masks" / "test",
                     options=EvidenceOptions(removal=ATLAS.removal, margin=ATLAS.margin), traits=ctx.traits,
                     skipped_pairs=skipped, bootstrap=ATLAS.bootstrap, seed=ctx.seed)
    return out


def demo_section(ctx) -> Section:
    from traitlens.atlas import load_atlas, precision_table
    from traitlens.report.atlas import atlas_section, precision_rows
    from traitlens.runs.atlas_job import load_cards

    kinds = [k for k in ("vit", "cnn") if k in ctx.checkpoints]
    atlases = {k: load_atlas(atlas_run(ctx, k)) for k in kinds}
    first = kinds[0]
    tables = {k: precision_table(a, ctx.traits) for k, a in atlases.items()}
    rows = []
    for k in kinds:
        rows += precision_rows(tables[k], label=f"tiny {k.upper()}")
    v = tables[first]
    note = (f"Measured on the {first.upper()}: the combined ranking puts a diagnostic part first for "
            f"{v['combined']['precision_at_1']:.0%} of the pairs (Finer-CAM alone {v['finer']['precision_at_1']:.0%}, "
            f"Grad-CAM alone {v['gradcam']['precision_at_1']:.0%}, the intervention alone "
            f"{v['intervention']['precision_at_1']:.0%}). The cards below are the {first.upper()}'s first four "
            "pairs; the whole atlas (atlas.json, atlas.csv, index.html) is what `traitlens atlas --checkpoint RUN "
            "--data DIR --out DIR` writes. With parts propagated by segmentation by tracking from one labelled "
            "specimen a species instead of the true masks, the figures stay the same (make claims, README).")
    return atlas_section(atlases[first], load_cards(atlas_run(ctx, first) / "cards.npz"), rows,
                         title="Trait atlas: which part tells sibling species apart", max_cards=4, note=note)
