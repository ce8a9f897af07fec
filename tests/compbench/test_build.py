"""`compbench build` on a synthetic collection: answers right by construction, oracle scores 100%."""

import json
import re

import pytest

from traitlens.cli import main
from traitlens.compbench.records import load_benchmark
from traitlens.data.traits import load_traits
from traitlens.errors import UserError


def _side_has(traits: dict, question: str) -> bool:
    """Does a species with raw ``traits`` (traits.json) fit the question's description?"""
    m = re.fullmatch(r"Which specimen has more (\w+) on its (.+)\?", question)
    if m:
        g = traits[m.group(2).replace(" ", "_")]
        return g.get("present", True) and g["colour"] == m.group(1)
    m = re.fullmatch(r"Which specimen has (?:an? )?(.+)\?", question)
    words = m.group(1)
    for group, g in traits.items():
        part = group.replace("_", " ")
        if words == part:
            return g.get("present", True) is True
        if words.endswith(" " + part):
            return g.get("present", True) and g.get("shape") == words[: -len(part) - 1]
    raise AssertionError(f"question names no part: {question}")


def test_build_answers_are_right_by_construction(cb_collection, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLENS_QUIET", "1")
    out = tmp_path / "bench"
    info_json = tmp_path / "build.json"
    assert main(["compbench", "build", "--data", str(cb_collection), "--attributes",
                 str(cb_collection / "traits.json"), "--out", str(out), "--split", "all",
                 "--pairs-per-attribute", "3", "--json", str(info_json)]) == 0
    tt = load_traits(cb_collection)
    records = json.loads((out / "specimen_attributes.json").read_text())
    assert len(records) >= 6
    assert len({r["attribute"] for r in records}) >= 3
    for r in records:
        i, j = tt.index(r["class_1"]), tt.index(r["class_2"])
        assert i != j and tt.genus_of(i) == tt.genus_of(j)          # siblings: same genus, other species
        assert (out / r["image_1"]).is_file() and (out / r["image_2"]).is_file()
        assert r["class_1"] in r["image_1"] and r["class_2"] in r["image_2"]
        t1, t2 = tt.traits_of(i), tt.traits_of(j)
        fits1, fits2 = _side_has(t1, r["question"]), _side_has(t2, r["question"])
        assert fits1 != fits2, r                                       # exactly one image fits
        assert r["answer"] == ("Left" if fits1 else "Right"), r
    n_left = sum(r["answer"] == "Left" for r in records)
    assert n_left == (len(records) + 1) // 2                          # balanced sides

    # the benchmark loads as-is and the oracle gets everything right
    recs, report = load_benchmark(out)
    assert len(recs) == len(records) and report.empty == 0
    assert {r.dimension for r in recs} == {"attribute"}
    s = tmp_path / "oracle.json"
    assert main(["compbench", "run", "--data", str(out), "--model", "scripted:oracle", "--out",
                 str(tmp_path / "oracle"), "--json", str(s)]) == 0
    summary = json.loads(s.read_text())
    assert summary["tasks"]["specimen_attributes"]["accuracy"] == 1.0
    assert summary["dimensions"]["attribute"]["n"] == len(records)

    s = tmp_path / "left.json"
    assert main(["compbench", "run", "--data", str(out), "--model", "scripted:left", "--out",
                 str(tmp_path / "left"), "--json", str(s)]) == 0
    left = json.loads(s.read_text())["tasks"]["specimen_attributes"]["accuracy"]
    assert left == pytest.approx(sum(r["answer"] == "Left" for r in records) / len(records))

    # rebuilding gives the same benchmark
    out2 = tmp_path / "bench2"
    assert main(["compbench", "build", "--data", str(cb_collection), "--attributes", str(cb_collection),
                 "--out", str(out2), "--split", "all", "--pairs-per-attribute", "3"]) == 0
    assert (out2 / "specimen_attributes.json").read_text() == (out / "specimen_attributes.json").read_text()


def test_build_user_errors(cb_collection, tmp_path):
    from traitlens.compbench.build import build_benchmark

    with pytest.raises(UserError, match="no images of the species"):
        build_benchmark(tmp_path, cb_collection / "traits.json", tmp_path / "o")
    with pytest.raises(UserError, match="feature"):
        build_benchmark(cb_collection, cb_collection / "traits.json", tmp_path / "o", feature="magic")


def test_build_from_json_attributes(tmp_path):
    import numpy as np
    from PIL import Image

    from traitlens.compbench.build import build_benchmark

    rows = []
    for k in range(6):
        p = tmp_path / "imgs" / f"{k}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(p)
        rows.append({"path": f"imgs/{k}.png", "class": "gull", "attributes": {"spots": k, "crest": k % 2 == 0}})
    (tmp_path / "attrs.json").write_text(json.dumps({"images": rows}))
    info = build_benchmark(tmp_path, tmp_path / "attrs.json", tmp_path / "bench", pairs_per_attribute=2)
    records = json.loads(open(info["file"]).read())
    assert info["source"] == "json" and len(records) == 4
    for r in records:
        v1, v2 = r["value_1"], r["value_2"]
        if r["attribute"] == "spots":
            assert r["question"] == "Which specimen has more spots?"
            assert r["answer"] == ("Left" if v1 > v2 else "Right")
        else:
            assert r["question"] == "Which specimen has crest?"
            assert r["answer"] == ("Left" if v1 else "Right")
