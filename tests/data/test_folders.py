import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from traitlens.data.folders import ImageFolderDataset, collate, find_images
from traitlens.data.imageio import SkippedFiles
from traitlens.data.transforms import SpecimenTransform
from traitlens.errors import UserError

COLOURS = {1: (255, 0, 0), 2: (0, 0, 255)}


def _write_collection(root, split="train", classes=("beta", "alpha", "gamma"), per_class=3, size=24, masks=True):
    """Synthetic-collection layout: image colour encodes the mask's part id (left half 1, right half 2)."""
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(per_class):
            mask = np.zeros((size, size), np.uint8)
            top = int(rng.integers(0, size // 2))
            mask[top:top + size // 2, : size // 2] = 1
            mask[top:top + size // 2, size // 2:] = 2
            img = np.full((size, size, 3), 128, np.uint8)
            for k, col in COLOURS.items():
                img[mask == k] = col
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{c}_{i}.png")
            if masks:
                md = root / "masks" / split / c
                md.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(md / f"{c}_{i}.png")


def test_find_images_sorted_case_insensitive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.Jpeg", "notes.txt", ".hidden/x.png", "sub/.d.png"):
        (tmp_path / name).write_bytes(b"")
    rel = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert rel == ["a.png", "b.JPG", "sub/c.Jpeg"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["a.png", "b.JPG"]
    with pytest.raises(UserError, match="missing"):
        find_images(tmp_path / "missing")


def test_classes_labels_and_masks_auto(tmp_path):
    _write_collection(tmp_path)
    ds = ImageFolderDataset(tmp_path, split="train", transform=SpecimenTransform(16))
    assert ds.class_names == ["alpha", "beta", "gamma"]
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(ds) == 9
    assert ds.has_masks
    item = ds[4]
    assert set(item) == {"image", "label", "index", "path", "mask"}
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    assert item["label"] == 1 and item["index"] == 4 and item["path"].endswith("beta_1.png")
    assert set(item["mask"].unique().tolist()) == {0, 1, 2}

    no_masks = ImageFolderDataset(tmp_path, split="train", masks=None)
    assert "mask" not in no_masks[0] and not no_masks.has_masks
    # No transform: floats in [0, 1], full size.
    assert no_masks[0]["image"].shape == (3, 24, 24) and no_masks[0]["image"].max() <= 1


def test_given_class_order_and_subset(tmp_path):
    _write_collection(tmp_path)
    ds = ImageFolderDataset(tmp_path, split="train", classes=["gamma", "alpha", "absent"])
    assert ds.class_names == ["gamma", "alpha", "absent"]
    assert sorted(set(ds.targets)) == [0, 1] and len(ds) == 6
    assert all("gamma" in p for p, label, _ in ds.samples if label == 0)
    sub = ds.subset(["alpha"])
    assert sub.class_names == ["alpha"] and sub.targets == [0, 0, 0]
    assert len(ds) == 6  # the original is untouched
    with pytest.raises(UserError, match="unknown classes"):
        ds.subset(["delta"])


def test_no_split_layout_and_missing_masks(tmp_path):
    _write_collection(tmp_path / "c", split="")
    # <root>/<class> and <root>/masks/<class>: the mask tree is not taken for a class.
    ds = ImageFolderDataset(tmp_path / "c", transform=SpecimenTransform(16))
    assert ds.class_names == ["alpha", "beta", "gamma"] and ds.has_masks
    (tmp_path / "c" / "masks" / "beta" / "beta_2.png").unlink()
    with pytest.raises(UserError, match="1 of 9 images have no mask"):
        ImageFolderDataset(tmp_path / "c")
    with pytest.raises(UserError, match="split folder not found"):
        ImageFolderDataset(tmp_path / "c", split="val")
    with pytest.raises(UserError, match="not found"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_explicit_mask_root(tmp_path):
    _write_collection(tmp_path / "imgs", masks=False)
    _write_collection(tmp_path / "elsewhere", masks=True)
    ds = ImageFolderDataset(tmp_path / "imgs", split="train", masks=tmp_path / "elsewhere" / "masks")
    assert ds.has_masks and ds[0]["mask"].shape == (24, 24)
    with pytest.raises(UserError, match="joint transform"):
        ImageFolderDataset(tmp_path / "imgs", split="train", masks=tmp_path / "elsewhere" / "masks",
                           transform=lambda im: im)


def test_masks_stay_aligned_through_train_augmentation(tmp_path):
    _write_collection(tmp_path, size=48)
    ds = ImageFolderDataset(tmp_path, split="train", transform=SpecimenTransform(32, train=True, scale=(0.4, 1.0)),
                            seed=5)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    for i in range(len(ds)):
        item = ds[i]
        rgb = (item["image"] * std + mean) * 255
        m = item["mask"]
        inner = (m == torch.roll(m, 1, 0)) & (m == torch.roll(m, -1, 0)) & (m == torch.roll(m, 1, 1)) \
            & (m == torch.roll(m, -1, 1))
        for k, col in COLOURS.items():
            sel = inner & (m == k)
            if sel.any():
                assert (rgb[:, sel] - torch.tensor(col, dtype=torch.float32)[:, None]).abs().max() < 3


def test_augmentation_seeded_by_seed_epoch_index(tmp_path):
    _write_collection(tmp_path)
    make = lambda seed: ImageFolderDataset(tmp_path, split="train", seed=seed,
                                           transform=SpecimenTransform(16, train=True, scale=(0.3, 1.0)))
    a, b = make(0), make(0)
    a.set_epoch(2)
    b.set_epoch(2)
    torch.manual_seed(99)
    first = a[3]
    for i in (0, 1, 2):  # drawing other samples first (another rank's share, an earlier run) changes nothing
        b[i]
    second = b[3]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    b.set_epoch(3)
    assert not torch.equal(first["image"], b[3]["image"])
    c = make(1)
    c.set_epoch(2)
    assert not torch.equal(first["image"], c[3]["image"])
    # Through a multi-worker DataLoader, the same again.
    loader = DataLoader(a, batch_size=4, num_workers=2, collate_fn=collate)
    batch = next(iter(loader))
    assert torch.equal(batch["image"][3], first["image"])


def test_corrupt_image_skipped_by_collate(tmp_path):
    _write_collection(tmp_path, masks=False)
    bad = tmp_path / "train" / "beta" / "beta_1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = ImageFolderDataset(tmp_path, split="train", transform=SpecimenTransform(16))
    assert "error" in ds[4] and ds[4]["path"] == str(bad)
    skipped = SkippedFiles()
    seen = []
    for batch in DataLoader(ds, batch_size=4, collate_fn=collate):
        skipped.extend(batch["skipped"])
        seen += batch["index"].tolist()
        assert batch["image"].shape[0] == len(batch["path"]) == batch["label"].shape[0]
    assert skipped.count == 1
    (path, reason), = list(skipped)
    assert path == str(bad) and reason
    assert sorted(seen) == [i for i in range(9) if i != 4]


def test_collate_shapes_and_all_bad_batch():
    good = {"image": torch.zeros(3, 4, 4), "label": 2, "index": 0, "path": "a", "mask": torch.zeros(4, 4).long(),
            "bbox": torch.zeros(4)}
    out = collate([good, {"error": "x", "path": "b", "index": 1}, dict(good, index=2)])
    assert out["image"].shape == (2, 3, 4, 4) and out["mask"].shape == (2, 4, 4) and out["bbox"].shape == (2, 4)
    assert out["label"].tolist() == [2, 2] and out["index"].tolist() == [0, 2] and out["path"] == ["a", "a"]
    assert out["skipped"] == [("b", "x")]
    empty = collate([{"error": "x", "path": "b", "index": 1}])
    assert empty["path"] == [] and empty["skipped"] == [("b", "x")] and "image" not in empty


def test_max_size_reduces_images_and_their_masks(tmp_path):
    _write_collection(tmp_path, size=96, per_class=1)
    ds = ImageFolderDataset(tmp_path, split="train", max_size=32)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    full = ImageFolderDataset(tmp_path, split="train")[0]
    np.testing.assert_array_equal(item["mask"].numpy(), full["mask"].numpy()[1::3, 1::3])
    # A mask of another shape is still an error, reported like a bad image.
    Image.fromarray(np.zeros((50, 96), np.uint8)).save(tmp_path / "masks" / "train" / "alpha" / "alpha_0.png")
    bad = ds[0]
    assert "error" in bad and "96x50" in bad["error"]
