import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.data.transforms import (Geometry, SpecimenTransform, denormalize, from_data_config,
                                       sample_generator)

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _label_image(h=90, w=120, seed=0):
    """Blocky label map whose image colour encodes the label (PALETTE[label])."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(PALETTE), (h // 15, w // 15))
    mask = np.kron(coarse, np.ones((15, 15), np.int64)).astype(np.uint8)
    return Image.fromarray(PALETTE[mask]), mask


def _assert_aligned(img_t, mask_t):
    """Every mask pixel away from label borders has its label's colour in the image."""
    rgb = denormalize(img_t, MEAN, STD, as_uint8=True).astype(int)
    m = mask_t.numpy()
    interior = np.ones_like(m, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= np.roll(np.roll(m, dy, 0), dx, 1) == m
    interior[:1], interior[-1:], interior[:, :1], interior[:, -1:] = False, False, False, False
    assert interior.sum() > 0.3 * m.size
    err = np.abs(rgb[interior] - PALETTE[m[interior]].astype(int)).max()
    assert err <= 3, err


def test_eval_square_crop_pct_1_is_plain_resize():
    img, mask = _label_image(60, 60)
    t = SpecimenTransform(30, MEAN, STD)
    x, m = t(img, mask)
    assert x.shape == (3, 30, 30) and x.dtype == torch.float32
    assert m.shape == (30, 30) and m.dtype == torch.long
    np.testing.assert_array_equal(m.numpy(), mask[1::2, 1::2])  # nearest (half-pixel centres): exact ids
    _assert_aligned(x, m)


def test_eval_resize_shorter_side_then_center_crop():
    t = SpecimenTransform(32, MEAN, STD, crop_pct=0.8)
    geo = t.sample_geometry(200, 100)  # width 200, height 100
    # Shorter side 100 → 32 / 0.8 = 40, so a 32 crop keeps 80 input pixels, centred.
    assert (geo.width, geo.height) == (80, 80)
    assert (geo.left, geo.top) == (60, 10)
    img, mask = _label_image(100, 200)
    x, m = t(img, mask)
    assert x.shape == (3, 32, 32) and m.shape == (32, 32)
    # Points: the image centre stays the output centre.
    pts, inside = geo.map_points([[100, 50], [0, 0]])
    assert torch.allclose(pts[0], torch.tensor([16.0, 16.0]))
    assert inside.tolist() == [True, False]


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_keeps_mask_aligned(seed):
    img, mask = _label_image(90, 120, seed)
    t = SpecimenTransform((48, 64), MEAN, STD, train=True, scale=(0.3, 1.0))
    flips = 0
    for index in range(6):
        g = sample_generator(seed, 0, index)
        x, m, geo = t.with_geometry(img, mask, g)
        assert x.shape == (3, 48, 64) and m.shape == (48, 64)
        _assert_aligned(x, m)
        flips += geo.flip
    assert 0 <= flips <= 6


def test_train_flip_mirrors_image_mask_and_points():
    img, mask = _label_image(60, 60)
    t = SpecimenTransform(60, MEAN, STD)
    geo = Geometry(0, 0, 60, 60, 60, 60, flip=True)
    x, m = t.apply(img, mask, geo)
    np.testing.assert_array_equal(m.numpy(), mask[:, ::-1])
    pts, _ = geo.map_points([[10.5, 3.5]])
    assert pts.tolist() == [[49.5, 3.5]]
    box = geo.map_boxes([[10, 5, 20, 10]])
    assert box.tolist() == [[30.0, 5.0, 20.0, 10.0]]


def test_same_generator_same_augmentation_and_no_global_rng():
    img, mask = _label_image()
    t = SpecimenTransform(32, MEAN, STD, train=True)
    torch.manual_seed(0)
    a, ma = t(img, mask, sample_generator(3, 1, 7))
    torch.manual_seed(123)  # global RNG must not matter
    b, mb = t(img, mask, sample_generator(3, 1, 7))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    state = torch.get_rng_state()
    t(img, mask, sample_generator(3, 1, 7))
    assert torch.equal(state, torch.get_rng_state())  # and is not consumed either
    geos = {t.sample_geometry(120, 90, sample_generator(3, e, 7)) for e in range(6)}
    assert len(geos) > 1  # other epochs draw other crops


def test_crop_maps_points_and_boxes():
    geo = Geometry(left=10, top=20, width=50, height=25, out_h=50, out_w=100, flip=False)
    pts, inside = geo.map_points([[10, 20], [60, 45], [5, 30]])
    assert pts.tolist() == [[0.0, 0.0], [100.0, 50.0], [-10.0, 20.0]]
    assert inside.tolist() == [True, True, False]
    box = geo.map_boxes([[0, 20, 30, 10]])  # partly left of the crop: clipped
    assert box.tolist() == [[0.0, 0.0, 40.0, 20.0]]


def test_from_data_config_and_denormalize():
    cfg = {"input_size": (3, 24, 32), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5), "crop_pct": 0.875,
           "interpolation": "bicubic"}
    t = from_data_config(cfg)
    assert t.size == (24, 32) and t.crop_pct == 0.875 and t.interpolation == "bicubic" and not t.train
    tt = from_data_config(cfg, train=True, scale=(0.5, 1.0))
    assert tt.train and tt.scale == (0.5, 1.0)
    arr = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    x, m = SpecimenTransform((24, 32), cfg["mean"], cfg["std"])(Image.fromarray(arr))
    assert m is None
    np.testing.assert_array_equal(denormalize(x, cfg["mean"], cfg["std"], as_uint8=True), arr)
    batch = denormalize(x[None], cfg["mean"], cfg["std"])
    assert batch.shape == (1, 3, 24, 32) and 0 <= batch.min() and batch.max() <= 1


def test_mask_shape_mismatch_is_an_error():
    img, mask = _label_image(60, 60)
    with pytest.raises(ValueError, match="must match"):
        SpecimenTransform(30)(img, mask[:30])


def test_large_label_ids_survive_resize():
    mask = np.arange(40 * 40, dtype=np.int32).reshape(40, 40) * 1000 + 70000
    img = Image.new("RGB", (40, 40))
    _, m = SpecimenTransform(20)(img, mask)
    assert set(m.unique().tolist()) <= set(mask.ravel().tolist())
    assert m[0, 0].item() == mask[1, 1]


# --- photos of other shapes: timm's crop modes, and maps drawn back on the photo ------------------------------
def _hash(t):
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def test_center_mode_is_bit_identical_to_the_transform_cached_claims_were_made_with():
    # Digests of the eval transform before crop modes existed (same torch build): the synthetic collection's
    # square images, at the model's size and resized, must give the very same tensors.
    rng = np.random.default_rng(17)
    expected = {(64, 64, 64, 1.0, "bilinear"): ("82ed2347e243d834", "50813386bebb8137"),
                (64, 64, 32, 1.0, "bilinear"): ("383d3165e3a716b7", "54e56994724ff40a"),
                (96, 96, 64, 0.875, "bicubic"): ("13d3e3b40882d992", "3bfb9755f1db7659"),
                (332, 500, 64, 1.0, "bilinear"): ("965876c3ed90d3b8", "97875353601b6f73")}
    for (h, w, size, crop, interp), digests in expected.items():
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = rng.integers(0, 5, (h, w))
        x, m = SpecimenTransform(size, crop_pct=crop, interpolation=interp)(img, mask)
        assert (_hash(x), _hash(m)) == digests, (h, w, size)


def test_border_mode_keeps_the_whole_strip_and_pads_with_the_mean():
    strip = np.full((100, 1200, 3), 250, np.uint8)
    t = SpecimenTransform(64, MEAN, STD, crop_mode="border")
    x, m = t(Image.fromarray(strip), np.ones((100, 1200), np.int64))
    assert x.shape == (3, 64, 64)
    rows = (m.sum(1) > 0).nonzero().flatten()
    assert 4 <= len(rows) <= 7  # 100/1200 of 64 rows hold the strip, the rest is padding
    assert torch.allclose(x[:, 0], torch.zeros(3, 64), atol=0.02)  # padding: the mean colour → 0 normalised
    assert m[0].sum() == 0 and m[rows].all()
    center = SpecimenTransform(64, MEAN, STD)(Image.fromarray(strip), np.ones((100, 1200), np.int64))[1]
    assert center.all()  # the default centre crop sees only the middle 100×100 of the strip


def test_squash_ignores_the_aspect_and_from_data_config_reads_crop_mode():
    t = from_data_config({"input_size": (3, 32, 32), "crop_mode": "squash"})
    assert t.crop_mode == "squash"
    geo = t.sample_geometry(300, 100)
    assert (geo.left, geo.top, geo.width, geo.height) == (0, 0, 300, 100)
    with pytest.raises(ValueError, match="crop_mode"):
        SpecimenTransform(32, crop_mode="stretch")


def test_map_to_input_puts_a_map_back_where_the_crop_came_from():
    from traitlens.data.transforms import map_to_input

    t = SpecimenTransform(64)
    geo = t.sample_geometry(500, 332)  # centre crop: 332×332 from x = 84
    heat = torch.zeros(64, 64)
    heat[:, :32] = 1.0  # the left half of what the model saw
    out, seen = map_to_input(heat, geo, (332, 500))
    assert out.shape == (332, 500) and seen.shape == (332, 500)
    assert not seen[:, :80].any() and not seen[:, 420:].any() and seen[:, 90:410].all()
    assert out[:, 90:240].min() > 0.99 and out[:, 260:410].max() < 0.01
    small, seen_small = map_to_input(heat[None].repeat(2, 1, 1), geo, (332, 500), out_size=(83, 125))
    assert small.shape == (2, 83, 125) and seen_small.float().mean().item() == pytest.approx(332 / 500, abs=0.02)
