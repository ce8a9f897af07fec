import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from traitlens.data.cub import CUBDataset, load_cub_attributes
from traitlens.data.folders import collate
from traitlens.data.transforms import SpecimenTransform, denormalize
from traitlens.errors import UserError

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
PARTS = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
         "right eye", "right leg", "right wing", "tail", "throat"]
W, H = 40, 30
BOX = (10.0, 5.0, 20.0, 16.0)
BEAK = (25, 9)  # a red 3×3 dot is drawn here; the other parts are invisible except "back"
BACK = (12, 18)
LEFT_EYE = (8.0, 6.0)


def write_fake_cub(base):
    """A 3-class, 6-image CUB tree (images 1, 3, 5 train; 2, 4, 6 test) with parts and attributes."""
    root = base / "CUB_200_2011"
    (root / "parts").mkdir(parents=True)
    (root / "attributes").mkdir()
    images, labels, split, boxes, locs = [], [], [], [], []
    for image_id in range(1, 7):
        cls = (image_id - 1) // 2
        rel = f"{CLASSES[cls]}/{CLASSES[cls].split('.')[1]}_{image_id:04d}.jpg"
        arr = np.full((H, W, 3), 90, np.uint8)
        arr[BEAK[1] - 1:BEAK[1] + 2, BEAK[0] - 1:BEAK[0] + 2] = (255, 0, 0)
        (root / "images" / CLASSES[cls]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "images" / rel, quality=100)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cls + 1}")
        split.append(f"{image_id} {image_id % 2}")
        boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in BOX))
        for part_id, name in enumerate(PARTS, 1):
            if name == "beak":
                locs.append(f"{image_id} {part_id} {BEAK[0] + 0.5:.1f} {BEAK[1] + 0.5:.1f} 1")
            elif name == "left eye":
                locs.append(f"{image_id} {part_id} {LEFT_EYE[0]:.1f} {LEFT_EYE[1]:.1f} 1")
            elif name == "back":
                locs.append(f"{image_id} {part_id} {BACK[0]:.1f} {BACK[1]:.1f} 1")
            else:
                locs.append(f"{image_id} {part_id} 0.0 0.0 0")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(CLASSES, 1)) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "parts" / "parts.txt").write_text("\n".join(f"{i} {n}" for i, n in enumerate(PARTS, 1)) + "\n")
    (root / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    # Official layout: attributes.txt beside CUB_200_2011/.
    (base / "attributes.txt").write_text("1 has_bill_shape::curved_(up_or_down)\n2 has_wing_color::blue\n"
                                         "3 has_size::small_(5_-_9_in)\n")
    rows = []
    for image_id in range(1, 7):
        for attr in (1, 2, 3):
            rows.append(f"{image_id} {attr} {int((image_id + attr) % 2 == 0)} {1 + attr} 2.5")
    rows[4] = "2 2 1 4 0 3.1"   # malformed: an extra field, as in the official file
    rows.append("garbage line")
    (root / "attributes" / "image_attribute_labels.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def cub(tmp_path):
    return write_fake_cub(tmp_path)


def test_parse_split_labels_and_names(cub):
    train = CUBDataset(cub.parent, "train")  # the parent folder works too
    test = CUBDataset(cub, "test")
    assert train.image_ids == [1, 3, 5] and test.image_ids == [2, 4, 6]
    assert train.targets == [0, 1, 2] and train.class_names == CLASSES and train.num_classes == 3
    assert train.part_names == PARTS
    item = train[1]
    assert item["image"].shape == (3, H, W) and item["label"] == 1 and item["image_id"] == 3
    assert item["path"].endswith("Laysan_Albatross_0003.jpg")
    assert item["bbox"].tolist() == list(BOX)
    assert item["parts"].shape == (15, 3)
    assert item["parts"][1].tolist() == [BEAK[0] + 0.5, BEAK[1] + 0.5, 1.0]
    assert item["parts"][0].tolist() == [float(BACK[0]), float(BACK[1]), 1.0]
    assert item["parts"][6].tolist() == [LEFT_EYE[0], LEFT_EYE[1], 1.0]
    assert item["parts"][2:, 2].sum() == 1


def test_eval_transform_maps_box_and_parts(cub):
    t = SpecimenTransform(20)  # 40×30 → shorter side 20 (scale 2/3), centre 20×20 crop: 5 input pixels off left
    item = CUBDataset(cub, "train", transform=t)[0]
    assert item["image"].shape == (3, 20, 20)
    s = 20 / 30
    expect = [(BOX[0] - 5) * s, BOX[1] * s, BOX[2] * s, BOX[3] * s]
    assert torch.allclose(item["bbox"], torch.tensor(expect), atol=1e-5)
    assert torch.allclose(item["parts"][1], torch.tensor([(BEAK[0] + 0.5 - 5) * s, (BEAK[1] + 0.5) * s, 1.0]))


def test_bbox_crop(cub):
    item = CUBDataset(cub, "train", crop="bbox")[0]
    assert item["image"].shape == (3, 16, 20)  # the box, 20 wide and 16 high
    assert item["bbox"].tolist() == [0.0, 0.0, 20.0, 16.0]
    assert item["parts"][1].tolist() == [BEAK[0] + 0.5 - 10, BEAK[1] + 0.5 - 5, 1.0]


def test_parts_follow_the_pixels_through_train_augmentation(cub):
    t = SpecimenTransform(60, train=True, scale=(0.5, 1.0))
    ds = CUBDataset(cub, "train", transform=t)
    seen = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        x, y, vis = item["parts"][1].tolist()
        if not vis:
            continue
        rgb = denormalize(item["image"], as_uint8=True).astype(int)
        px = rgb[min(int(y), 59), min(int(x), 59)]
        assert px[0] > 160 and px[1] < 80, (epoch, x, y, px)  # the red beak dot is where the part says
        seen.append((round(x, 2), round(y, 2)))
    batch = collate([ds[0], ds[0]])
    assert batch["bbox"].shape == (2, 4) and batch["parts"].shape == (2, 15, 3)
    assert len(seen) >= 5 and len(set(seen)) == len(seen)  # really augmented, and mostly kept in view


def test_dataloader_and_bad_image(cub):
    (cub / "images" / CLASSES[1] / "Laysan_Albatross_0003.jpg").write_bytes(b"\xff\xd8broken")
    ds = CUBDataset(cub, "train", transform=SpecimenTransform(16))
    batches = list(DataLoader(ds, batch_size=3, collate_fn=collate))
    assert batches[0]["image"].shape == (2, 3, 16, 16)
    assert [p for p, _ in batches[0]["skipped"]] == [str(cub / "images" / CLASSES[1] / "Laysan_Albatross_0003.jpg")]


def test_missing_files_are_user_errors(cub, tmp_path):
    with pytest.raises(UserError, match="not a CUB-200-2011 folder"):
        CUBDataset(tmp_path / "nowhere")
    with pytest.raises(UserError, match="split must be"):
        CUBDataset(cub, "val")
    (cub / "bounding_boxes.txt").unlink()  # optional: items lose "bbox"; cropping to it is an error
    assert "bbox" not in CUBDataset(cub, transform=SpecimenTransform(16))[0]
    with pytest.raises(UserError, match="bounding_boxes.txt"):
        CUBDataset(cub, crop="bbox")
    (cub / "train_test_split.txt").unlink()
    with pytest.raises(UserError, match="train_test_split.txt"):
        CUBDataset(cub)


def test_attributes_tolerate_malformed_lines(cub):
    names, present = load_cub_attributes(cub)
    assert names[0] == "has_bill_shape::curved_(up_or_down)" and len(names) == 3
    assert present.shape == (6, 3) and present.dtype == np.uint8
    expect = np.array([[int((i + a) % 2 == 0) for a in (1, 2, 3)] for i in range(1, 7)], np.uint8)
    expect[1, 1] = 1  # from the malformed line "2 2 1 4 0 3.1"
    np.testing.assert_array_equal(present, expect)
    _, _, certainty = load_cub_attributes(cub, with_certainty=True)
    assert certainty[0].tolist() == [2, 3, 4] and certainty[1, 1] == 4
    # attributes.txt inside attributes/ works as well.
    (cub.parent / "attributes.txt").rename(cub / "attributes" / "attributes.txt")
    assert load_cub_attributes(cub)[0] == names


def test_flip_swaps_left_and_right_parts(cub):
    # Full-image crops only, so the one random choice left is the flip.
    t = SpecimenTransform((H, W), train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ds = CUBDataset(cub, "train", transform=t)
    left, right = PARTS.index("left eye"), PARTS.index("right eye")
    outcomes = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        parts = ds[0]["parts"]
        beak_x = parts[1, 0].item()
        flipped = abs(beak_x - (W - BEAK[0] - 0.5)) < 1e-4
        assert flipped or abs(beak_x - (BEAK[0] + 0.5)) < 1e-4
        if flipped:
            assert parts[left, 2] == 0 and parts[right].tolist() == [W - LEFT_EYE[0], LEFT_EYE[1], 1.0]
        else:
            assert parts[left].tolist() == [LEFT_EYE[0], LEFT_EYE[1], 1.0] and parts[right, 2] == 0
        outcomes.add(flipped)
    assert outcomes == {True, False}
