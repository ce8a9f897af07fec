"""The demo section renders from a context, and a second run is served from its cache."""

from __future__ import annotations

import time

from traitlens.data.traits import load_traits
from traitlens.studies.demo import DemoContext
from traitlens.report import write_page


def test_demo_section_renders_and_caches(collection, checkpoint, tmp_path):
    from traitlens.studies.demo.explain import demo_section

    ctx = DemoContext(out=tmp_path / "out", cache=tmp_path / "cache", data=collection,
                      traits=load_traits(collection), checkpoints={"cnn": checkpoint})
    ctx.cache.mkdir()
    section = demo_section(ctx)
    page = write_page("demo", [section], tmp_path / "out" / "index.html")
    html = page.read_text()
    assert "What distinguishes sibling species" in html and "finer-gradcam" in html
    assert html.count("data:image/png;base64") >= 2 * 4 + 1  # 2 genera × 4 panels + the bar plot
    cached = sorted(p.name for p in ctx.cache.iterdir())
    assert any(n.startswith("table-cnn") for n in cached) and any(n.startswith("pairs-cnn") for n in cached)
    t0 = time.perf_counter()
    demo_section(ctx)
    assert time.perf_counter() - t0 < 5
