"""Part names a user can type and read: `retrieve --trait wing_spot`, names in measurements.csv, summary.json and
the segment page (from --part-names, --traits, or the collection's own traits.json)."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from traitlens.cli import main


def _support_with(collection, part: int):
    for mask in sorted((collection / "masks" / "train").rglob("*.png")):
        if (np.asarray(Image.open(mask)) == part).any():
            return collection / "train" / mask.relative_to(collection / "masks" / "train"), mask
    raise AssertionError(f"no training mask with part {part}")


def test_segment_names_the_traits_and_retrieve_takes_a_part_name(tiny_collection, tmp_path, capsys):
    from traitlens.data.traits import load_traits

    parts = {p.name: p.id for p in load_traits(tiny_collection).parts}
    image, mask = _support_with(tiny_collection, parts["wing_spot"])
    queries = sorted((tiny_collection / "test").rglob("*.png"))[:2]
    common = ["--support", str(image), "--support-mask", str(mask), "--images", *map(str, queries),
              "--work-size", "32", "--device", "cpu"]
    out = tmp_path / "seg"
    assert main(["segment", *common, "--out", str(out)]) == 0  # names from the collection's traits.json
    with (out / "measurements.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["trait_name"] == {v: k for k, v in parts.items()}[int(r["trait"])] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trait_names"][str(parts["body"])] == "body"
    assert "body (1)" in (out / "index.html").read_text()

    names = tmp_path / "parts.txt"
    names.write_text(f"{parts['wing_spot']} spot\n")
    ret = tmp_path / "ret"
    assert main(["retrieve", *common, "--trait", "spot", "--part-names", str(names), "--out", str(ret),
                 "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["trait"] == parts["wing_spot"] and result["trait_name"] == "spot" and len(result["ranking"]) == 2
    capsys.readouterr()
    assert main(["retrieve", *common, "--trait", "wing_spot", "--out", str(tmp_path / "r2")]) == 0
    assert f"wing_spot ({parts['wing_spot']})" in capsys.readouterr().out
    # another trait into the same folder: refused in one line naming --restart
    assert main(["retrieve", *common, "--trait", "body", "--out", str(tmp_path / "r2")]) == 2
    assert "--restart" in capsys.readouterr().err
