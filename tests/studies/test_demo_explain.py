"""The demo section renders from a context, and a second run is served from its cache."""

from __future__ import annotations

from traitlens.data.traits import load_traits
from traitlens.studies.demo import DemoContext
from traitlens.report import write_page


def test_demo_section_renders_and_caches(collection, checkpoint, tmp_path, monkeypatch):
    from traitlens.studies.demo.explain import demo_section

    ctx = DemoContext(out=tmp_path / "out", cache=tmp_path / "cache", data=collection,
                      traits=load_traits(collection), checkpoints={"cnn": checkpoint})
    ctx.cache.mkdir()
    section = demo_section(ctx)
    page = write_page("demo", [section], tmp_path / "out" / "index.html")
    html = page.read_text()
    assert "What distinguishes sibling species" in html and "finer-gradcam" in html
    assert html.count("data:image/png;base64") >= 2 * 4 + 1 + 6 + 1  # pairs, panels, α sweep gallery and plot
    assert "α = 0.5" in html and "diagnostic lift" in html
    cached = sorted(p.name for p in ctx.cache.iterdir())
    for name in ("table-cnn", "pairs-cnn", "alpha-sweep-cnn"):
        assert any(n.startswith(name) for n in cached), name

    def no_model_run(*args, **kwargs):
        raise AssertionError("a cached section ran the model again")

    import traitlens.explain as explain_api
    import traitlens.explain.evaluate as evaluate

    monkeypatch.setattr(explain_api, "explain", no_model_run)
    monkeypatch.setattr(evaluate, "evaluate_explanations", no_model_run)
    again = write_page("demo", [demo_section(ctx)], tmp_path / "out" / "again.html").read_text()
    assert again.count("data:image/png;base64") == html.count("data:image/png;base64")
