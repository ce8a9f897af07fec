"""`traitlens atlas` through the runner: files read back, resume, bad inputs listed, parts from supports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from traitlens.atlas import load_atlas
from traitlens.cli import main
from traitlens.runs.atlas_job import load_cards


@pytest.fixture
def data(collection, tmp_path):
    """A copy of the session collection with one part mask removed."""
    root = tmp_path / "c"
    shutil.copytree(collection, root)
    gone = sorted((root / "masks" / "train").rglob("*.png"))[0]
    gone.unlink()
    return root, gone


def test_atlas_writes_reads_back_and_resumes(data, checkpoint, tmp_path, capsys):
    root, gone = data
    out = tmp_path / "atlas"
    args = ["atlas", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "train", "--pairs", "all",
            "--bootstrap", "50", "--out", str(out), "--device", "cpu", "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    n = len(list((root / "train").rglob("*.png")))
    assert summary["done"] == n - 1 and summary["skipped"] == 1  # the image without its mask
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert "no part mask" in skipped[0]["reason"] and gone.stem in skipped[0]["path"]
    atlas = load_atlas(out)
    assert atlas.to_dict() == json.loads((out / "atlas.json").read_text())
    # a random classifier: pairs without any correctly classified image are listed, the others ranked
    assert len(atlas.pairs) + len(atlas.skipped) == 15 and atlas.pairs
    assert summary["precision"]["combined"]["pairs"] == len(atlas.pairs)
    rows = (out / "atlas.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(len(p.parts) for p in atlas.pairs)
    cards = load_cards(out / "cards.npz")
    pair = atlas.pairs[0]
    picture, mask, heat = next(iter(cards[pair.key].values()))
    assert picture.shape == (32, 32, 3) and mask.shape == heat.shape == (32, 32) and mask.any()
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == len(atlas.pairs) and "precision@1" in page
    before = (out / "results.jsonl").read_text()
    assert main(args) == 0  # a finished folder: nothing recomputed, the atlas redrawn
    again = json.loads((tmp_path / "s.json").read_text())
    assert again["done"] == 0 and again["resumed"] == n - 1 and (out / "results.jsonl").read_text() == before
    assert main(args[:-6] + ["--removal", "blur"] + args[-6:]) == 2  # other settings: refused
    assert "holds results made with other options" in capsys.readouterr().err


def test_atlas_bad_pairs_are_listed_and_the_rest_is_written(collection, checkpoint, tmp_path, capsys):
    from traitlens.data.traits import load_traits

    names = load_traits(collection).class_names
    out = tmp_path / "atlas"
    args = ["atlas", "--checkpoint", str(checkpoint), "--data", str(collection), "--split", "train", "--pairs",
            f"Nope:{names[0]},{names[0]}:{names[1]}", "--bootstrap", "20", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "left out pair Nope:" in printed and "does not know the species 'Nope'" in printed
    atlas = load_atlas(out)
    assert atlas.skipped[0]["pair"] == f"Nope:{names[0]}"
    assert main(args[:8] + ["Nope:Never"] + args[9:]) == 2
    assert "no species pair to compare" in capsys.readouterr().err


def test_atlas_parts_from_a_labelled_support(collection, checkpoint, tmp_path, capsys):
    from traitlens.data.traits import load_traits

    names = load_traits(collection).class_names
    img = sorted((collection / "train" / names[0]).glob("*.png"))[0]
    mask = collection / "masks" / "train" / names[0] / img.name
    out = tmp_path / "atlas"
    args = ["atlas", "--checkpoint", str(checkpoint), "--data", str(collection), "--split", "val", "--pairs",
            f"{names[0]}:{names[1]},{names[0]}:{names[2]}", "--parts-from", "support", "--support", str(img),
            "--support-mask", str(mask), "--bootstrap", "20", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows and all((out / r["parts"]).is_file() for r in rows)
    from traitlens.data.imageio import load_mask

    assert load_mask(out / rows[0]["parts"]).max() > 0
    (tmp_path / "names.txt").write_text("1 body\n2 head\n")
    assert main(args[:-6] + ["--part-names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "x"),
                             "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "are not in the part names" in err and len(err.strip().splitlines()) == 1
    assert main(args[:13] + ["--out", str(tmp_path / "y"), "--device", "cpu"]) == 2  # support without its mask
    assert "--support-mask" in capsys.readouterr().err


def test_atlas_cards_from_support_parts_on_photos_larger_than_the_input(collection, checkpoint, tmp_path):
    """Propagated parts are saved in the model's input frame; the cards draw them on the same frame of a photo
    of any size (here 52×40 photos for a 32 px model)."""
    from PIL import Image

    from traitlens.data.traits import load_traits

    root = tmp_path / "c"
    shutil.copytree(collection, root)
    for f in (root / "train").rglob("*.png"):
        Image.open(f).convert("RGB").resize((52, 40)).save(f)
    names = load_traits(root).class_names
    img = sorted((collection / "train" / names[0]).glob("*.png"))[0]  # the support at its own size
    out = tmp_path / "atlas"
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "train", "--pairs", "all",
                 "--parts-from", "support", "--support", str(img), "--support-mask",
                 str(collection / "masks" / "train" / names[0] / img.name), "--bootstrap", "20", "--out", str(out),
                 "--device", "cpu"]) == 0
    atlas = load_atlas(out)
    cards = load_cards(out / "cards.npz")
    shown = [sides for key, sides in cards.items() if sides]
    assert shown and (out / "index.html").is_file()
    for sides in shown:
        for picture, mask, heat in sides.values():
            assert picture.shape == (32, 32, 3) and mask.shape == heat.shape == (32, 32)
    assert len(cards) == sum(p.top is not None for p in atlas.pairs)


def test_atlas_confused_pairs_come_from_the_validation_split(collection, checkpoint, tmp_path):
    out = tmp_path / "atlas"
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(collection), "--split", "train",
                 "--pairs", "confused", "--top-confused", "2", "--bootstrap", "20", "--out", str(out),
                 "--device", "cpu"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert 1 <= len(run["pairs"]) <= 2


def test_atlas_help(capsys):
    with pytest.raises(SystemExit):
        main(["atlas", "--help"])
    text = capsys.readouterr().out
    assert "--parts-from" in text and "--support-mask" in text and "siblings|confused|all" in text



def test_atlas_page_bounds_its_cards_and_draws_no_markup_from_atlas_json(collection, checkpoint, tmp_path):
    """An atlas.json is a file (shared, edited): its numbers stay numbers on the page; the page draws a bounded
    number of cards however many pairs there are, and says so."""
    from traitlens.report.atlas import card_html, write_atlas_page

    out = tmp_path / "atlas"
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(collection), "--split", "train", "--pairs",
                 "all", "--bootstrap", "20", "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "atlas.json").read_text())
    assert len(data["pairs"]) >= 2
    data["pairs"][0]["images"] = {"a": "<img src=x onerror=alert(1)>", "b": 2}
    (out / "atlas.json").write_text(json.dumps(data))
    atlas = load_atlas(out)
    card = card_html(atlas.pairs[0])
    assert "onerror" not in card and "? + 2 correctly classified images" in card
    page = write_atlas_page(atlas, tmp_path / "page.html", max_cards=1).read_text()
    assert page.count('class="card"') == 1 and f"Cards for the first 1 of {len(atlas.pairs)} pairs" in page
    assert "onerror" not in page


def test_atlas_reads_an_unsplit_tree_like_train_does(collection, checkpoint, tmp_path, capsys):
    """``--data`` an unsplit ``<class>/<image>`` tree: the seeded split's images (as train reads them); a listed
    image that has gone is skipped and listed, not the end of the run."""
    from traitlens.data.folders import write_split
    from traitlens.data.traits import load_traits

    root = tmp_path / "tree"
    for img in (collection / "train").rglob("*.png"):
        (root / img.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(img, root / img.parent.name / img.name)
    shutil.copy(collection / "traits.json", root / "traits.json")  # species, parts and the pair table
    definition = json.loads(write_split(root, val=0.0, test=0.5).read_text())
    gone = root / definition["splits"]["train"][0][0]
    gone.unlink()
    names = load_traits(collection).class_names
    img = sorted((collection / "train" / names[0]).glob("*.png"))[0]
    out = tmp_path / "atlas"
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "train", "--pairs", "all",
                 "--parts-from", "support", "--support", str(img), "--support-mask",
                 str(collection / "masks" / "train" / names[0] / img.name), "--bootstrap", "20", "--out", str(out),
                 "--device", "cpu", "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["done"] == len(definition["splits"]["train"]) - 1 and summary["skipped"] == 1
    assert "missing" in (out / "skipped.jsonl").read_text()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["id"].split("/")[0] for r in rows} <= set(names)
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "val", "--out",
                 str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "has no such split" in capsys.readouterr().err
