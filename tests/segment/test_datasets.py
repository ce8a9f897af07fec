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
    # Another aspect ratio: resized to the image all the same, as the release's demo.py (cv2.resize) does.
    other = np.zeros((10, 30), np.uint8)
    other[:, 15:] = 4
    Image.fromarray(other, mode="L").save(records[0].mask)
    mask = TraitMaskDataset(records)[0]["mask"]
    assert mask.shape == (20, 24) and int((mask == 4).sum()) == 20 * 12


# --------------------------------------------------------------------------------------------------------------
# The real SST release files (../shared/data/real-releases/sst): its lists, masks and metadata, with placeholder
# photos made here from the masks at the aspect ratios real photos have (no photo is published with them).

from pathlib import Path  # noqa: E402

RELEASES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real-releases" / "sst" / "data"
if not RELEASES.is_dir():
    RELEASES = Path("/work/shared/data/real-releases/sst/data")
BUTTERFLY, NEON = RELEASES / "cambridge_butterfly", RELEASES / "neon_beetles"
needs_release = pytest.mark.skipif(not BUTTERFLY.is_dir() or not NEON.is_dir(),
                                   reason="the SST release files (../shared/data/real-releases) are absent")

# One colour a trait id (0 = background): placeholder photos paint each trait of the mask in its colour.
PAINT = np.array([(70, 62, 55), (230, 40, 30), (250, 200, 40), (30, 60, 200), (40, 170, 70), (190, 60, 190),
                  (20, 200, 210), (240, 130, 20), (120, 80, 30), (200, 200, 200), (90, 20, 120)], np.uint8)


def _photo(mask: np.ndarray, stored_wh, path: Path, orientation: int = 1, seed: int = 0) -> None:
    """A photo whose *stored* pixels are ``mask`` resized (nearest, aspect not kept: what the release's reader
    undoes) to ``stored_wh`` and painted, saved as a JPEG carrying EXIF ``orientation``."""
    w, h = stored_wh
    labels = np.array(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    rng = np.random.default_rng(seed)
    pixels = PAINT[np.minimum(labels, len(PAINT) - 1)].astype(np.int16) + rng.integers(-6, 7, (h, w, 3))
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=95, exif=exif)


def _painted_labels(frame, mask=None) -> np.ndarray:
    """The trait ids a placeholder photo was painted with (nearest paint colour), H×W, from a 3×H×W frame.

    With ``mask``, each id's colour is the median of the photo under it (a developed raw file's colours are
    not the paint's): a mask that is off its specimen mixes those colours and agrees far less."""
    rgb = (frame.permute(1, 2, 0).numpy() * 255).astype(np.int32)
    paint = PAINT.astype(np.int32)
    if mask is not None:
        ids = np.unique(mask)
        paint = np.full((int(ids.max()) + 1, 3), 10 ** 6, np.int32)
        for k in ids:
            paint[k] = np.median(rgb[mask == k], axis=0)
    d = ((rgb[:, :, None, :] - paint[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def _raw_writer():
    """tests/data/test_imageio.py's minimal DNG writer (LibRaw reads a raw file by its content, whatever its name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_imageio_tests", Path(__file__).parents[1] / "data" / "test_imageio.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_linear_dng


def _butterfly_tree(tmp_path: Path) -> Path:
    """The release's own tree (lists and masks linked in) with placeholder photos for every masked record:
    JPG sources as ``images/<URL file name>`` at 3:2 (every third one camera-rotated: stored landscape, EXIF
    orientation 6 or 8, so upright portrait), CR2 sources as camera raw files under their ``.CR2`` name (16-bit
    linear DNG data: no Canon raw is published with the release)."""
    import os

    write_raw = _raw_writer()

    root = tmp_path / "cambridge_butterfly"
    (root / "DataSet_Butterfly").mkdir(parents=True)
    os.symlink(BUTTERFLY / "train_test_separate", root / "train_test_separate")
    os.symlink(BUTTERFLY / "DataSet_Butterfly" / "Major_spefies_data", root / "DataSet_Butterfly" / "Major_spefies_data")
    n = 0
    for group in ("lativitta", "malleti"):
        for split in ("train", "test"):
            for ident, url, mask_rel in json.loads((root / "train_test_separate" / group / f"{split}_data.json").read_text()):
                if not (root / mask_rel).is_file():
                    continue
                name = url.rsplit("/", 1)[-1]
                mask = np.array(Image.open(root / mask_rel))
                if name.lower().endswith(".cr2"):
                    labels = np.array(Image.fromarray(mask).resize((240, 160), Image.NEAREST))
                    linear = (PAINT[np.minimum(labels, len(PAINT) - 1)].astype(np.float64) / 255) ** 2.2 * 65535
                    (root / "images").mkdir(exist_ok=True)
                    write_raw(root / "images" / name, linear.astype(np.uint16))  # LibRaw re-applies the gamma
                    continue
                orientation = (1, 6, 1, 8, 1, 1)[n % 6]
                _photo(mask, (240, 160), root / "images" / name, orientation, seed=n)
                n += 1
    return root


@pytest.fixture(scope="module")
def butterfly(tmp_path_factory):
    return _butterfly_tree(tmp_path_factory.mktemp("release"))


@needs_release
def test_heliconius_release_masks_fit_non_square_and_rotated_photos(butterfly):
    """Every 1024×1024 mask lands on its 3:2 photo as the release's check_mask_image.py puts it (resized without
    keeping the aspect ratio), and on camera-rotated photos too (turned with the EXIF orientation)."""
    root = butterfly
    gone = []
    records = [r for r in heliconius(root, "test", require_mask=False, skipped=gone) if r.mask is not None]
    listed = sum(len(json.loads((root / "train_test_separate" / g / "test_data.json").read_text()))
                 for g in ("lativitta", "malleti"))
    raws = [r for r in records if r.image.suffix == ".CR2"]
    assert len(records) == 30 and len(raws) >= 3 and len(gone) == listed - 30  # a partial download, counted
    shapes = set()
    for rec in records:
        sample = TraitMaskDataset([rec])[0]
        shapes.add(tuple(sample["mask"].shape))
        truth = sample["mask"].numpy()
        painted = _painted_labels(sample["image"], truth if rec.image.suffix == ".CR2" else None)
        agree = float((truth == painted).mean())
        assert agree > 0.97, (rec.id, agree)  # measured 0.980-0.991 (JPEG edges at 240×160), CR2 0.9995-1.0
    assert shapes == {(160, 240), (240, 160)}  # landscape and rotated (upright portrait) photos


@needs_release
def test_segment_heliconius_release_scores_every_readable_record(butterfly, tmp_path, capsys):
    from traitlens.cli import main

    root = butterfly
    out = tmp_path / "seg"
    common = ["--dataset", "heliconius", "--dataset-root", str(root), "--group", "malleti", "--work-size", "32",
              "--no-overlays", "--device", "cpu"]
    assert main(["segment", *common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    listed = out / "skipped.jsonl"
    skipped = [json.loads(line) for line in listed.read_text().splitlines()] if listed.exists() else []
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == 10 and all(r["gt"] and r.get("miou") is not None for r in rows)  # every record scored
    assert sum(r["path"].endswith(".CR2") for r in rows) >= 1 and not skipped  # the .CR2 sources developed
    assert summary["scored_images"] == 10 and "gt_errors" not in summary
    assert "0 unreadable" in printed and summary["miou"] > 0.4  # colour propagation: measured 0.481

    # An explicit --support (the last landscape malleti train photo, its mask fitted to it) is scored the same way.
    train = [r for r in heliconius(root, "train", group="malleti", require_mask=False, skipped=[])
             if r.mask is not None and r.image.suffix == ".JPG"]
    first = next(r for r in reversed(train) if TraitMaskDataset([r])[0]["mask"].shape == (160, 240))
    labels = TraitMaskDataset([first])[0]["mask"].numpy().astype(np.uint8)
    Image.fromarray(labels, mode="L").save(tmp_path / "support_mask.png")
    out2 = tmp_path / "seg-support"
    assert main(["segment", *common, "--support", str(first.image), "--support-mask", str(tmp_path / "support_mask.png"),
                 "--out", str(out2)]) == 0
    rows2 = [json.loads(line) for line in (out2 / "results.jsonl").read_text().splitlines()]
    # the support is a train photo, so the queries are the same masked test records
    assert sorted(r["path"] for r in rows2) == sorted(r["path"] for r in rows)
    assert all(r.get("miou") is not None for r in rows2)
    summary2 = json.loads((out2 / "summary.json").read_text())
    # measured mIoU 0.481 (the release's own support) and 0.369 (this one) at work size 32: scored, not skipped
    assert summary2["scored_images"] == len(rows2) and summary2["miou"] > 0.3


@needs_release
def test_without_rawpy_cr2_sources_are_skipped_by_name_and_counted(butterfly, tmp_path, capsys, monkeypatch):
    from traitlens.cli import main
    from traitlens.data import imageio

    monkeypatch.setattr(imageio, "_rawpy", lambda: None)
    monkeypatch.setenv("TRAITLENS_QUIET", "0")  # the count is logged on stderr
    out = tmp_path / "seg"
    assert main(["segment", "--dataset", "heliconius", "--dataset-root", str(butterfly), "--group", "malleti",
                 "--work-size", "32", "--no-overlays", "--device", "cpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert skipped and all(s["path"].endswith(".CR2") and "traitlens[raw]" in s["reason"] for s in skipped)
    assert len(rows) + len(skipped) == 10 and all(r.get("miou") is not None for r in rows)
    assert f"{len(skipped)} unreadable" in captured.out
    assert f"{len(skipped)} of 10 images of heliconius (test) are camera raw files (.CR2)" in captured.err


@needs_release
def test_heliconius_minor_species_split(tmp_path, capsys):
    """--split minor_species reads the release's minor_species.json ({species: [[id, url, mask, symmetry]]})."""
    import os

    from traitlens.cli import main

    root = tmp_path / "cambridge_butterfly"
    root.mkdir()
    os.symlink(BUTTERFLY / "minor_species.json", root / "minor_species.json")
    listing = json.loads((BUTTERFLY / "minor_species.json").read_text())
    source = np.array(Image.open(next((BUTTERFLY / "DataSet_Butterfly" / "Major_spefies_data" / "malleti" / "pkl")
                                      .glob("*.png"))))
    for k, species in enumerate(("notabilis", "amaryllis")):
        for j, (ident, url, mask_rel, _symmetry) in enumerate(listing[species]):
            (root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source, mode="L").save(root / mask_rel)
            name = url.rsplit("/", 1)[-1]
            if not name.lower().endswith(".cr2"):
                _photo(source, (300, 200), root / "images" / species / name, seed=10 * k + j)
    records = heliconius(root, "minor_species", skipped=[])
    assert records and all(r.mask is not None for r in records)
    one = heliconius(root, "minor_species", group="notabilis", skipped=[])
    assert {r.id for r in one} <= {str(e[0]) for e in listing["notabilis"]} and one
    with pytest.raises(UserError, match="no group 'nope'"):
        heliconius(root, "minor_species", group="nope")
    out = tmp_path / "minor"
    assert main(["segment", "--dataset", "heliconius", "--dataset-root", str(root), "--split", "minor_species",
                 "--group", "amaryllis", "--work-size", "32", "--no-overlays", "--device", "cpu",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    readable = [e for e in listing["amaryllis"] if not e[1].lower().endswith(".cr2")]
    assert len(rows) == len(readable) - 1 and all(r.get("miou") is not None for r in rows)  # minus the support


@needs_release
def test_neon_release_resolves_every_row_by_url_folder(tmp_path):
    """All 181 rows of the real metadata.json resolve with photos stored under their URL's folder, including
    the 30 whose species column disagrees with it (melanarius / melanarius melanarius)."""
    import os
    from urllib.parse import unquote

    root = tmp_path / "neon_beetles"
    root.mkdir()
    os.symlink(NEON / "metadata.json", root / "metadata.json")
    os.symlink(NEON / "masks", root / "masks")
    meta = json.loads((NEON / "metadata.json").read_text())
    disagree = 0
    for i, (url, mask_rel, species) in enumerate(zip(meta["url"], meta["mask_path"], meta["species"])):
        folder, name = (unquote(p) for p in url.split("/")[-2:])
        disagree += folder != species
        mask = np.array(Image.open(NEON / mask_rel)) if (NEON / mask_rel).is_file() else np.zeros((60, 40), np.uint8)
        h, w = mask.shape
        img = root / "images" / folder / name
        _photo(mask, (w // 2, h // 2), img.with_suffix(".jpg"), seed=i)  # photos at another resolution (half)
        img.with_suffix(".jpg").rename(img)  # the URL's own name (.png), JPEG data inside: PIL reads by content
    assert disagree == 30
    # one photo kept as a snapshot of the dataset repository stores it (the URL's path below resolve/main/)
    url = meta["url"][7]
    snapshot = root / "images" / unquote(url.split("/resolve/main/", 1)[1])
    snapshot.parent.mkdir(parents=True)
    (root / "images" / unquote(url.split("/")[-2]) / url.split("/")[-1]).rename(snapshot)
    records = neon_beetles(root)
    assert len(records) == 181 and len({r.image for r in records}) == 181 and records[7].image == snapshot
    masked = [r for r in records if r.mask is not None]
    assert len(masked) == sum((NEON / m).is_file() for m in meta["mask_path"]) == 90
    for rec in masked[::15] + [r for r in masked if r.id.startswith("melanarius")][:3]:
        sample = TraitMaskDataset([rec])[0]
        assert float((sample["mask"].numpy() == _painted_labels(sample["image"])).mean()) > 0.97
