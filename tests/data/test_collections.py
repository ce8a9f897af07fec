"""The layouts every ``--data`` accepts: split folders (unchanged), CUB-200-2011 roots, unsplit <class>/<image>
trees, and the split.json that ``traitlens data split`` writes; the seeded rule and its record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from traitlens.cli import main
from traitlens.data import folders
from traitlens.data.folders import (ImageFolderDataset, collection_layout, describe_collection, make_split,
                                    open_collection_split, read_split, resolve_split, seeded_split)
from traitlens.errors import UserError

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


@pytest.fixture(autouse=True)
def _fresh_resolution():
    folders._RESOLVED.clear()  # each test builds its own trees; the per-process cache must not leak between them
    yield
    folders._RESOLVED.clear()


def _photo(path, colour, size=(40, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), colour, np.uint8)
    arr[5:15, 5:20] = 255 - np.array(colour, np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def write_cub(base, per_class=8):
    """The official CUB_200_2011 layout with only the four files training needs (no boxes, parts, attributes):
    images.txt, image_class_labels.txt, train_test_split.txt, classes.txt; JPEG photos of 3:2 and 4:3."""
    root = base / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(CUB_CLASSES):
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{image_id:04d}_{k}.jpg"
            _photo(root / "images" / rel, (40 + 80 * c, 200 - 60 * c, 90), size=(48, 32) if k % 2 else (40, 30))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(k < per_class * 5 // 8)}")  # 5 of 8 train, as CUB's ~50/50 split
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(CUB_CLASSES, 1)) + "\n")
    return base


def write_unsplit(root, per_class=10):
    """DIR/<class>/<image> of mixed formats (JPEG, PNG, WebP, upper-case extensions)."""
    exts = [".jpg", ".png", ".JPG", ".webp", ".jpeg"]
    for c, name in enumerate(["Heliconius_erato", "Heliconius_melpomene"]):
        for k in range(per_class):
            ext = exts[k % len(exts)]
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[ext.lower()]
            _photo(root / name / f"img{k:02d}{ext}", (60 + 120 * c, 90, 200 - 100 * c), fmt=fmt)
    return root


def test_seeded_rule_is_per_class_stable_and_seeded():
    items = [(f"c{c}/i{k}.jpg", c) for c in range(3) for k in range(20)]
    a = seeded_split(items, 0.15, 0.15, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"train": 42, "val": 9, "test": 9}  # 3 per class each
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(items)
    assert all(sum(1 for _, c in a[s] if c == cls) == 3 for s in ("val", "test") for cls in range(3))
    assert seeded_split(list(reversed(items)), 0.15, 0.15, seed=0) == a  # listing order does not matter
    assert seeded_split(items, 0.15, 0.15, seed=1) != a
    # An image's split depends on its own path and the seed: adding images moves few of the old ones.
    more = seeded_split(items + [(f"c0/new{k}.jpg", 0) for k in range(2)], 0.15, 0.15, seed=0)
    where = {rel: s for s, rows in more.items() for rel, _ in rows}
    moved = sum(where[rel] != s for s, rows in a.items() for rel, _ in rows)
    assert moved <= 2
    tiny = seeded_split([("c/a", 0), ("c/b", 0)], 0.15, 0.15, seed=0)
    assert len(tiny["train"]) == 2  # two images: both train (a class always keeps training images)
    with pytest.raises(UserError, match="fractions"):
        seeded_split(items, 0.6, 0.5, seed=0)


def test_split_folders_are_read_exactly_as_before(tmp_path):
    """A split tree (the synthetic collection's layout) goes through ImageFolderDataset unchanged."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            for k in range(3):
                _photo(tmp_path / split / c / f"{k}.png", (50 * k, 100, 30))
    assert collection_layout(tmp_path) == "splits" and resolve_split(tmp_path) is None
    new = open_collection_split(tmp_path, "train", classes=["a", "b"], seed=3)
    old = ImageFolderDataset(tmp_path, split="train", classes=["a", "b"], masks=None, seed=3)
    assert new.samples == old.samples and not hasattr(new, "split_definition")
    assert describe_collection(tmp_path)["images"] == {"train": 6, "val": 6}


def test_unsplit_tree_split_counted_written_and_read_back(tmp_path, capsys):
    root = write_unsplit(tmp_path / "photos")
    assert collection_layout(root) == "classes"
    info = describe_collection(root)
    assert info["images"] == {"train": 12, "val": 4, "test": 4} and info["species"] == 2  # 10 × 0.15 → 2 a class
    assert info["formats"] == {".jpeg": 4, ".jpg": 8, ".png": 4, ".webp": 4}  # every format, .JPG counted
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "unsplit class folders" in out and "train 12, val 4, test 4" in out and "sha256" in out

    computed = make_split(root, seed=0)
    assert main(["data", "split", str(root), "--json", str(tmp_path / "split.json")]) == 0
    written = read_split(root / "split.json")
    assert written["splits"] == computed["splits"] and written["seed"] == 0
    assert collection_layout(root) == "split-file"
    assert main(["data", "split", str(root)]) == 2  # refuses to replace it silently
    assert "--force" in capsys.readouterr().err
    assert main(["data", "split", str(root), "--force", "--val", "0.9", "--test", "0.5"]) == 2  # bad fractions:
    assert read_split(root / "split.json") == written  # the split in use is still there, untouched
    assert not (root / "split.json.previous").exists()
    capsys.readouterr()
    assert main(["data", "split", str(root), "--force", "--seed", "5", "--val", "0.3", "--test", "0.1"]) == 0
    assert read_split(root / "split.json.previous") == written  # the replaced split is kept beside it
    assert "the split it replaces" in capsys.readouterr().out
    again = read_split(root / "split.json")
    assert again["seed"] == 5 and {k: len(v) for k, v in again["splits"].items()} == {"train": 12, "val": 6,
                                                                                     "test": 2}
    test = open_collection_split(root, "test")
    assert len(test) == 2 and test.class_names == ["Heliconius_erato", "Heliconius_melpomene"]
    item = test[0]
    assert item["image"].shape == (3, 30, 40) and item["label"] in (0, 1)
    assert test.split_definition["seed"] == 5

    gone = root / again["splits"]["test"][0][0]
    gone.unlink()
    with pytest.raises(UserError, match="missing.*traitlens data split"):
        open_collection_split(root, "test")
    (root / "split.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a traitlens split file"):
        resolve_split(root)


def test_cub_root_official_split_with_a_carved_recorded_val(tmp_path, capsys):
    base = write_cub(tmp_path)
    for root in (base, base / "CUB_200_2011"):  # the folder holding images.txt or its parent
        folders._RESOLVED.clear()
        assert collection_layout(root) == "cub"
        d = resolve_split(root)
        assert {k: len(v) for k, v in d["splits"].items()} == {"train": 12, "val": 3, "test": 9}
        assert d["classes"] == CUB_CLASSES and "official" in d["rule"]
        test = open_collection_split(root, "test", classes=list(reversed(CUB_CLASSES)))
        assert sorted(test.targets) == [0] * 3 + [1] * 3 + [2] * 3  # labels follow the order given
    # val comes out of the official train images only, one a class
    official_train = {line.split()[0] for line in (base / "CUB_200_2011" / "train_test_split.txt").read_text()
                      .splitlines() if line.split()[1] == "1"}
    ids = {line.split()[1]: line.split()[0] for line in (base / "CUB_200_2011" / "images.txt").read_text()
           .splitlines()}
    assert all(ids[rel.split("images/", 1)[1]] in official_train for rel, _ in d["splits"]["val"])
    assert sorted(c for _, c in d["splits"]["val"]) == [0, 1, 2]
    assert main(["data", "info", str(base)]) == 0
    assert "CUB-200-2011" in capsys.readouterr().out


def test_train_and_evaluate_on_a_cub_root(tmp_path, capsys):
    """`traitlens train --data <CUB root>` (was: "split 'train' not found"), then evaluate its test split."""
    base = write_cub(tmp_path)
    run = tmp_path / "run"
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("method: linear-probe\nbackbone: tiny-cnn\nepochs: 1\nbatch_size: 6\nlr: 0.01\n")
    assert main(["train", "--config", str(cfg), "--data", str(base), "--out", str(run), "--image-size", "32",
                 "--device", "cpu", "--no-progress", "--set", "warmup_epochs=0",
                 "--json", str(tmp_path / "train.json")]) == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["class_names"] == CUB_CLASSES
    meta = json.loads((run / "model.json").read_text())
    assert meta["selected_on"] == "val"  # the carved val split was used for model selection
    recorded = read_split(run / "split.json")  # the split the run used, written into its folder
    assert recorded["layout"] == "cub" and len(recorded["splits"]["val"]) == 3
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(base), "--split", "test", "--device", "cpu",
                 "--json", str(tmp_path / "eval.json")]) == 0
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["n"] == 9 and 0 <= scored["top1"] <= 1  # the 9 official test images
    assert "test: top-1" in capsys.readouterr().out


def test_not_a_collection_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a collection.*CUB-200-2011.*<class>/<image>"):
        collection_layout(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        collection_layout(tmp_path / "nowhere")
