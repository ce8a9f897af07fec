"""The demo's atlas section renders from a context, and a second run only reads its files back."""

from __future__ import annotations

import time

from traitlens.data.traits import load_traits
from traitlens.report import write_page
from traitlens.studies.demo import DemoContext


def test_demo_atlas_section_renders_and_caches(collection, checkpoint, tmp_path):
    from traitlens.studies.demo.atlas import atlas_run, demo_section

    ctx = DemoContext(out=tmp_path / "out", cache=tmp_path / "cache", data=collection,
                      traits=load_traits(collection), checkpoints={"cnn": checkpoint})
    ctx.cache.mkdir()
    html = write_page("demo", [demo_section(ctx)], tmp_path / "out" / "index.html").read_text()
    assert "Trait atlas" in html and "precision@1" in html and "tiny CNN" in html
    run = atlas_run(ctx, "cnn")
    assert (run / "atlas.json").is_file() and (run / "cards.npz").is_file()
    stamp = (run / "atlas.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    demo_section(ctx)
    assert time.perf_counter() - t0 < 5 and (run / "atlas.json").stat().st_mtime_ns == stamp
