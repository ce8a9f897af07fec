"""The demo section runs on a synthetic collection in seconds and shows the baselines."""

import time
from types import SimpleNamespace

from traitlens.studies.demo.compbench import demo_section
from traitlens.data.traits import load_traits
from traitlens.report import write_page


def test_demo_section(cb_collection, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLENS_QUIET", "1")
    ctx = SimpleNamespace(out=tmp_path / "report", cache=tmp_path / "cache", data=cb_collection,
                          traits=load_traits(cb_collection), device="cpu", seed=0, checkpoints={})
    t0 = time.time()
    section = demo_section(ctx)
    first = time.time() - t0
    page = write_page("demo", [section], tmp_path / "report" / "index.html").read_text()
    assert "always-left" in page and "oracle" in page and "random" in page
    assert "<td>1.000</td>" in page                       # the oracle's accuracy
    assert page.count("data:image/png;base64,") >= 3       # example pairs
    (bench,) = (tmp_path / "cache").glob("benchmark-*")    # one benchmark folder, named by its memo key
    stamp = (bench / "specimen_attributes.json").stat().st_mtime
    demo_section(ctx)                                      # second run reuses the benchmark
    assert (bench / "specimen_attributes.json").stat().st_mtime == stamp
    assert first < 60
