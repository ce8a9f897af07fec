"""Readers of the published trait-mask formats, on tiny fixture trees written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from traitlens.errors import UserError
from traitlens.segment.datasets import TraitMaskDataset, heliconius, neon_beetles, part_names


def _pair(folder_img, folder_mask, stem, ext=".jpg", size=(12, 10)):
    folder_img.mkdir(parents=True, exist_ok=True)
    folder_mask.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(folder_img / f"{stem}{ext}")
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[2:5, 3:7] = 2
    Image.fromarray(mask, mode="L").save(folder_mask / f"{stem}.png")


def test_heliconius_lists_in_both_layouts(tmp_path):
    _pair(tmp_path / "images", tmp_path / "masks", "CAM001")
    _pair(tmp_path / "images", tmp_path / "masks", "CAM002", ext=".png")
    (tmp_path / "train.json").write_text(json.dumps([{"id": "CAM001", "url": "https://x.org/a/CAM001.jpg"}]))
    (tmp_path / "test.json").write_text(json.dumps([["CAM002", "https://x.org/CAM002.png"]]))
    train = heliconius(tmp_path, "train")
    test = heliconius(tmp_path, "test")
    assert [r.id for r in train] == ["CAM001"] and train[0].url.endswith("CAM001.jpg")
    assert test[0].image.name == "CAM002.png"
    sample = TraitMaskDataset(train)[0]
    assert sample["image"].shape == (3, 10, 12) and float(sample["image"].max()) <= 1
    assert sample["mask"].dtype.is_floating_point is False and int(sample["mask"].max()) == 2


def test_heliconius_names_missing_images_and_lists(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.json").write_text(json.dumps([{"image_id": "X9", "image_url": "https://x.org/X9.jpg"}]))
    with pytest.raises(UserError, match="X9"):
        heliconius(tmp_path, "train")
    gone = []
    assert heliconius(tmp_path, "train", skipped=gone) == [] and gone == ["X9"]  # partly downloaded: collected
    with pytest.raises(UserError, match="test.json"):
        heliconius(tmp_path, "test")


def test_neon_beetles_tree_with_part_names(tmp_path):
    _pair(tmp_path / "images" / "plot1", tmp_path / "masks" / "plot1", "A0001")
    _pair(tmp_path / "images" / "plot1", tmp_path / "masks" / "plot1", "A0002")
    (tmp_path / "masks" / "plot1" / "A0002.png").unlink()  # an image still to segment
    (tmp_path / "parts.json").write_text(json.dumps({"1": "pronotum", "2": "elytra"}))
    records = neon_beetles(tmp_path)
    assert [r.id for r in records] == ["plot1/A0001", "plot1/A0002"]
    assert records[0].mask is not None and records[1].mask is None
    assert part_names(tmp_path) == {1: "pronotum", 2: "elytra"}
    assert "mask" not in TraitMaskDataset(records)[1]
    with pytest.raises(UserError, match="images/"):
        neon_beetles(tmp_path / "images")
    (tmp_path / "bare" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="masks/"):
        neon_beetles(tmp_path / "bare")


def test_heliconius_release_tree_with_triples(tmp_path):
    """The SST release's layout: train_test_separate/<group>/<split>_data.json of [id, url, mask path]."""
    _pair(tmp_path / "images", tmp_path / "Major_species_data" / "cyrbia" / "masks", "19N0001")
    _pair(tmp_path / "images", tmp_path / "Major_species_data" / "malleti" / "masks", "19N0002", ext=".png")
    for group, ident in (("cyrbia", "19N0001"), ("malleti", "19N0002")):
        folder = tmp_path / "train_test_separate" / group
        folder.mkdir(parents=True)
        (folder / "train_data.json").write_text(json.dumps(
            [[ident, f"https://zenodo.org/record/1/files/{ident}.JPG", f"Major_species_data/{group}/masks/{ident}.png"]]))
    every = heliconius(tmp_path, "train")
    assert [r.id for r in every] == ["19N0001", "19N0002"]
    assert every[1].mask == tmp_path / "Major_species_data" / "malleti" / "masks" / "19N0002.png"
    one = heliconius(tmp_path, "train", group="malleti")
    assert [r.id for r in one] == ["19N0002"] and int(TraitMaskDataset(one)[0]["mask"].max()) == 2
    with pytest.raises(UserError, match="test_data.json"):
        heliconius(tmp_path, "test")


def test_neon_release_metadata_and_smaller_masks(tmp_path):
    """metadata.json columns (url, mask_path, species); masks stored at another resolution are resized."""
    _pair(tmp_path / "images" / "advena", tmp_path / "masks" / "advena", "beetle_100_475", size=(24, 20))
    small = np.zeros((10, 12), np.uint8)
    small[2:5, 3:7] = 3
    Image.fromarray(small, mode="L").save(tmp_path / "masks" / "advena" / "beetle_100_475.png")
    (tmp_path / "metadata.json").write_text(json.dumps({
        "url": ["https://huggingface.co/x/beetle_100_475.png"], "mask_path": ["masks/advena/beetle_100_475.png"],
        "species": ["advena"]}))
    records = neon_beetles(tmp_path)
    assert [r.id for r in records] == ["advena/beetle_100_475"]
    sample = TraitMaskDataset(records)[0]
    assert sample["mask"].shape == (20, 24) and int((sample["mask"] == 3).sum()) == 4 * 3 * 4
    Image.fromarray(np.zeros((10, 30), np.uint8), mode="L").save(records[0].mask)
    with pytest.raises(UserError, match="another shape"):
        TraitMaskDataset(records)[0]
