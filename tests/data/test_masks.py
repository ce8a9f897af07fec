import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from traitlens.data.folders import collate
from traitlens.data.masks import MaskPairDataset, pair_images_with_masks
from traitlens.data.transforms import SpecimenTransform
from traitlens.errors import UserError


def _pair(img_path, mask_path, ids, size=(12, 16)):
    h, w = size
    mask = np.zeros((h, w), np.uint16 if max(ids) > 255 else np.uint8)
    for k, v in enumerate(ids):
        mask[:, k * w // len(ids):(k + 1) * w // len(ids)] = v
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(img_path)
    Image.fromarray(mask).save(mask_path)
    return mask


def test_pairs_by_relative_path_then_stem(tmp_path):
    _pair(tmp_path / "img/a/one.jpg", tmp_path / "msk/a/one.png", [0, 1])
    _pair(tmp_path / "img/b/one.jpg", tmp_path / "msk/b/one.png", [0, 2])   # same stem, told apart by path
    _pair(tmp_path / "img/two.png", tmp_path / "msk/flat/two.png", [0, 3])   # only the stem matches
    pairs, unpaired = pair_images_with_masks(tmp_path / "img", tmp_path / "msk")
    as_rel = [(i.relative_to(tmp_path).as_posix(), m.relative_to(tmp_path).as_posix()) for i, m in pairs]
    assert as_rel == [("img/a/one.jpg", "msk/a/one.png"), ("img/b/one.jpg", "msk/b/one.png"),
                      ("img/two.png", "msk/flat/two.png")]
    assert unpaired == []


def test_explicit_lists_and_suffix(tmp_path):
    _pair(tmp_path / "x/cat.jpg", tmp_path / "y/cat_mask.png", [0, 5])
    _pair(tmp_path / "x/dog.jpg", tmp_path / "y/dog_mask.png", [0, 6])
    ds = MaskPairDataset([tmp_path / "x/dog.jpg", tmp_path / "x/cat.jpg"],
                         [tmp_path / "y/cat_mask.png", tmp_path / "y/dog_mask.png"], mask_suffix="_mask")
    assert [p.split("/")[-1] for p, _ in ds.pairs] == ["dog.jpg", "cat.jpg"]
    assert set(ds[0]["mask"].unique().tolist()) == {0, 6}


def test_ids_kept_exactly_through_transforms(tmp_path):
    ids = [0, 7, 300, 65535]
    mask = _pair(tmp_path / "i/s.png", tmp_path / "m/s.png", ids, size=(32, 64))
    ds = MaskPairDataset(tmp_path / "i", tmp_path / "m")
    item = ds[0]
    assert item["label"] == -1 and item["mask_path"].endswith("s.png")
    np.testing.assert_array_equal(item["mask"].numpy(), mask.astype(np.int64))
    for train in (False, True):
        out = MaskPairDataset(tmp_path / "i", tmp_path / "m", transform=SpecimenTransform(16, train=train))[0]
        assert out["mask"].shape == (16, 16) and set(out["mask"].unique().tolist()) <= set(ids)


def test_missing_masks_error_or_skip(tmp_path):
    _pair(tmp_path / "i/a.png", tmp_path / "m/a.png", [0, 1])
    _pair(tmp_path / "i/b.png", tmp_path / "other/b.png", [0, 1])
    with pytest.raises(UserError, match=r"1 of 2 images have no mask .*b\.png"):
        MaskPairDataset(tmp_path / "i", tmp_path / "m")
    ds = MaskPairDataset(tmp_path / "i", tmp_path / "m", missing="skip")
    assert len(ds) == 1 and ds.num_unpaired == 1 and ds.unpaired[0].endswith("b.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image has a mask"):
        MaskPairDataset(tmp_path / "i", tmp_path / "empty", missing="skip")
    with pytest.raises(UserError, match="folder not found"):
        MaskPairDataset(tmp_path / "i", tmp_path / "absent")
    with pytest.raises(UserError, match="joint transform"):
        MaskPairDataset(tmp_path / "i", tmp_path / "m", transform=lambda im: im, missing="skip")


def test_ambiguous_stem_is_an_error(tmp_path):
    _pair(tmp_path / "i/a.png", tmp_path / "m/p/a.png", [0, 1])
    _pair(tmp_path / "j/a.png", tmp_path / "m/q/a.png", [0, 1])
    with pytest.raises(UserError, match="matches 2 masks"):
        MaskPairDataset(tmp_path / "i", tmp_path / "m")


def test_size_mismatch_and_bad_mask_are_skipped_in_a_batch(tmp_path):
    _pair(tmp_path / "i/a.png", tmp_path / "m/a.png", [0, 1])
    _pair(tmp_path / "i/b.png", tmp_path / "m/b.png", [0, 1])
    _pair(tmp_path / "i/c.png", tmp_path / "m/c.png", [0, 1])
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "m/b.png")
    Image.fromarray(np.dstack([np.zeros((12, 16), np.uint8), np.full((12, 16), 9, np.uint8),
                               np.zeros((12, 16), np.uint8)])).save(tmp_path / "m/c.png")
    ds = MaskPairDataset(tmp_path / "i", tmp_path / "m", transform=SpecimenTransform(8))
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (1, 3, 8, 8) and batch["mask"].shape == (1, 8, 8)
    reasons = dict(batch["skipped"])
    assert set(reasons) == {str(tmp_path / "i/b.png"), str(tmp_path / "i/c.png")}
    assert "5x5" in reasons[str(tmp_path / "i/b.png")] and "colour" in reasons[str(tmp_path / "i/c.png")]
    assert isinstance(batch["mask"], torch.Tensor) and batch["mask"].dtype == torch.long


def test_rgb_mask_pictures_need_a_palette(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(tmp_path / "img" / "a.jpg")
    picture = np.zeros((4, 6, 3), np.uint8)
    picture[1:3, 2:5] = (0, 0, 255)
    Image.fromarray(picture).save(tmp_path / "msk" / "a.png")
    refused = MaskPairDataset(tmp_path / "img", tmp_path / "msk")[0]
    assert "error" in refused and "palette" in refused["error"]  # an unreadable pair, named
    ds = MaskPairDataset(tmp_path / "img", tmp_path / "msk", palette={(0, 0, 0): 0, (0, 0, 255): 3})
    assert int((ds[0]["mask"] == 3).sum()) == 6
