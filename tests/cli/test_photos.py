"""`traitlens explain` on photos that are not the synthetic collection: timm's crop, maps on the photo at its
own resolution, one warning for tiny images, the true class from the folder, out-of-domain flags, and a rerun
with other options refused unless --restart."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from traitlens.cli import main


@pytest.fixture
def photos(collection, tmp_path):
    from traitlens.data.traits import load_traits

    names = load_traits(collection).class_names
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    (root / "loose").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (332, 500, 3), dtype=np.uint8)).save(root / "loose" / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (100, 1200, 3), dtype=np.uint8)).save(root / "loose" / "strip.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "loose" / "tiny.png")
    species = root / names[0].split("_", 1)[1].replace("_", " ")  # a folder named by the display name
    species.mkdir()
    for f in sorted((collection / "train" / names[0]).glob("*.png"))[:2]:
        shutil.copy(f, species / f.name)
    return root, names


def _rows(out):
    return {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_explain_draws_on_each_photo_flags_what_it_should_and_refuses_other_options(photos, checkpoint, tmp_path,
                                                                                    capsys):
    root, names = photos
    out = tmp_path / "out"
    display = names[1].split("_", 1)[1].replace("_", " ")  # "Pseudavis flava": what `data info` prints
    argv = ["explain", "--checkpoint", str(checkpoint), "--images", str(root), "--alpha", "0.5", "--compare",
            display, "--out", str(out), "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 5
    wide = rows["loose/wide.jpg"]
    assert wide["size"] == [332, 500] and [r["class"] for r in wide["references"]] == [names[1]]
    strip = np.asarray(Image.open(out / wide["overlay"]))
    assert strip.shape[0] >= 332 and strip.shape[1] >= 3 * 500  # photo, Grad-CAM, Finer-CAM at 500 px each
    assert rows["loose/tiny.png"]["small_input"] and not wide["small_input"]
    for r in rows.values():
        assert r["out_of_domain"] == (r["probability"] < 0.5) and np.isfinite(r["energy"])
    labelled = [r for r in rows.values() if r["label"] is not None]
    assert len(labelled) == 2 and all(r["label"] == names[0] for r in labelled)
    assert all(r["correct"] == (r["prediction"] == names[0]) for r in labelled)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["small_inputs"] == 1 and summary["labelled"] == 2
    assert summary["out_of_domain"] == sum(r["out_of_domain"] for r in rows.values())
    html = (out / "index.html").read_text()
    assert ("WRONG" in html) == any(not r["correct"] for r in labelled)
    capsys.readouterr()
    # other options into the same folder: one line naming --restart; with it, the run is redone
    assert main(argv[:-2] + ["--ood-threshold", "0"]) == 2
    err = capsys.readouterr().err
    assert "--restart" in err and "ood_threshold" in err and len(err.strip().splitlines()) == 1
    assert main(argv[:-2] + ["--ood-threshold", "0", "--restart"]) == 0
    assert "explained 5 images (0 already done" in capsys.readouterr().out
    assert not any(r["out_of_domain"] for r in _rows(out).values())


def test_border_crop_keeps_the_whole_strip_in_view(photos, checkpoint, tmp_path):
    root, _ = photos
    out = tmp_path / "border"
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(root / "loose" / "strip.png"),
                 "--alpha", "1", "--crop", "border", "--out", str(out)]) == 0
    row = next(iter(_rows(out).values()))
    strip = np.asarray(Image.open(out / row["overlay"])).astype(int)
    top = strip.shape[0] - 100 - 4  # the panels sit at the bottom of the strip, 100 px tall
    cam = strip[top:top + 100, 1200 + 8:2 * 1200 + 8]
    photo = np.asarray(Image.open(root / "loose" / "strip.png")).astype(int)
    dimmed = np.abs(cam - (0.45 * photo).astype(int)).max(axis=2) <= 1
    assert dimmed.mean() < 0.01  # every pixel was seen by the model: none is drawn dimmed
