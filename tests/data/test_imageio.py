import json

import numpy as np
import pytest
from PIL import Image

from traitlens.data import imageio
from traitlens.data.imageio import SkippedFiles, load_image, load_mask
from traitlens.errors import BadImageError, UserError


def _save_exif_rotated(path, orientation):
    # Stored landscape 40×20, left half red, right half blue.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif)


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    path = tmp_path / "rot.jpg"
    _save_exif_rotated(path, 6)  # 6: rotate 90° clockwise to display
    im = load_image(path)
    assert im.mode == "RGB"
    assert im.size == (20, 40)  # portrait once upright
    arr = np.asarray(im).astype(int)
    # Rotating clockwise puts the stored left (red) half on top.
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


def test_no_orientation_tag_is_untouched(tmp_path):
    path = tmp_path / "plain.png"
    arr = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), arr)


def test_grayscale_and_palette_become_rgb(tmp_path):
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = np.asarray(load_image(tmp_path / "g.png"))
    assert out.shape == (6, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)

    pal = Image.new("P", (4, 2))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    pal.save(tmp_path / "p.png")
    out = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 100, 50)


def test_palette_with_transparency_composited_on_grey(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putdata([0, 1])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "pt.png"))
    assert tuple(out[0, 0]) == imageio.BACKGROUND
    assert tuple(out[0, 1]) == (0, 255, 0)


def test_rgba_alpha_composited(tmp_path):
    arr = np.zeros((1, 3, 4), np.uint8)
    arr[0, 0] = (255, 255, 255, 255)   # opaque white
    arr[0, 1] = (255, 255, 255, 0)     # fully transparent
    arr[0, 2] = (0, 0, 0, 128)         # half black over grey
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == imageio.BACKGROUND
    assert all(abs(v - 64) <= 1 for v in out[0, 2])


def test_la_and_cmyk(tmp_path):
    la = Image.merge("LA", [Image.new("L", (2, 2), 200), Image.new("L", (2, 2), 255)])
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (200, 200, 200)
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    px = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)[1, 1]
    assert px[0] > 220 and px[1] < 40 and px[2] < 40  # pure red


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "16.png")
    out = np.asarray(load_image(tmp_path / "16.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    # A 32-bit "I" image holding 16-bit data is scaled the same way.
    Image.fromarray(arr.astype(np.int32), "I").save(tmp_path / "i.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "i.tif"))[0, :, 1], [0, 1, 128, 255])


def test_max_size_reduces_jpeg_during_decode(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    im = load_image(tmp_path / "big.jpg", max_size=100)
    assert max(im.size) == 100 and im.size == (100, 75)
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_size=64).size == (64, 38)
    assert load_image(tmp_path / "big.png", max_size=1000).size == (500, 300)


def test_max_size_uses_draft_for_jpeg(tmp_path, monkeypatch):
    Image.new("RGB", (800, 800), (10, 20, 30)).save(tmp_path / "d.jpg")
    from PIL import JpegImagePlugin
    calls = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        calls.append(self.size)  # size right after drafting, before decoding
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    load_image(tmp_path / "d.jpg", max_size=100)
    assert calls and calls[0] == (100, 100)  # decoded at 1/8 scale, not at 800×800


def test_truncated_and_non_image_raise_bad_image_naming_path(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.png").write_text("this is not an image")
    for name in ("cut.jpg", "notes.png", "missing.jpg"):
        with pytest.raises(BadImageError) as info:
            load_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert isinstance(info.value, UserError)
        assert "\n" not in str(info.value)


def test_pixel_cap(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    with pytest.raises(BadImageError, match="too large"):
        load_image(tmp_path / "x.png")
    # PIL's own limit was raised deliberately, but kept finite.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= 16384 * 16384


def test_load_mask_keeps_ids(tmp_path):
    ids = np.array([[0, 1, 2], [7, 255, 3]], np.uint8)
    Image.fromarray(ids, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), ids)

    p = Image.fromarray(ids, "P")
    p.putpalette(list(np.random.default_rng(0).integers(0, 255, 768)))
    p.save(tmp_path / "p.png")
    out = load_mask(tmp_path / "p.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ids)  # palette indices, not colours

    big = np.array([[0, 300], [1000, 65535]], np.uint16)
    Image.fromarray(big).save(tmp_path / "16.png")
    out = load_mask(tmp_path / "16.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, big.astype(np.int32))

    # An RGB file is a picture of a mask: refused (grey or not) unless a palette says how to read it.
    grey = np.repeat(ids[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with pytest.raises(BadImageError, match="grey RGB image .*palette"):
        load_mask(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "grey.png", palette="grey"), ids)

    colour = grey.copy()
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(BadImageError, match="colour RGB image"):
        load_mask(tmp_path / "colour.png")
    with pytest.raises(BadImageError, match="R = G = B"):
        load_mask(tmp_path / "colour.png", palette="grey")


def test_rgb_mask_with_an_explicit_palette(tmp_path):
    """The issue's case: a mask drawn in grey 100 / 200 is not read as traits 100 and 200; a palette maps it."""
    from traitlens.data.imageio import read_palette

    picture = np.zeros((6, 8, 3), np.uint8)
    picture[1:3, 1:4] = 100
    picture[3:5, 4:7] = (200, 200, 200)
    picture[0, 7] = (255, 0, 0)
    Image.fromarray(picture).save(tmp_path / "drawn.png")
    with pytest.raises(BadImageError, match="not a label map"):
        load_mask(tmp_path / "drawn.png")
    (tmp_path / "palette.json").write_text('{"#000000": 0, "100,100,100": 1, "#c8c8c8": 2}')
    palette = read_palette(tmp_path / "palette.json")
    assert palette == {(0, 0, 0): 0, (100, 100, 100): 1, (200, 200, 200): 2}
    with pytest.raises(BadImageError, match="1 colour.*not in the palette.*#ff0000"):
        load_mask(tmp_path / "drawn.png", palette=palette)
    palette[(255, 0, 0)] = 3
    labels = load_mask(tmp_path / "drawn.png", palette=palette)
    assert labels.dtype == np.uint8 and labels.shape == (6, 8)
    assert [int((labels == k).sum()) for k in range(4)] == [48 - 6 - 6 - 1, 6, 6, 1]
    assert labels[1, 1] == 1 and labels[4, 6] == 2 and labels[0, 7] == 3
    for bad in ('{"#12": 1}', '{"1,2": 1}', '{"#000000": "x"}', '[1, 2]', '{}'):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(UserError, match="palette"):
            read_palette(tmp_path / "bad.json")


def test_data_masks_command_writes_label_maps(tmp_path, capsys):
    from traitlens.cli import main

    (tmp_path / "rgb" / "sp").mkdir(parents=True)
    picture = np.zeros((5, 5, 3), np.uint8)
    picture[1:4, 1:4] = (0, 255, 0)
    Image.fromarray(picture).save(tmp_path / "rgb" / "sp" / "a.png")
    (tmp_path / "p.json").write_text('{"#000000": 0, "#00ff00": 4}')
    assert main(["data", "masks", "--masks", str(tmp_path / "rgb"), "--palette", str(tmp_path / "p.json"),
                 "--out", str(tmp_path / "ids")]) == 0
    assert "ids: 0, 4" in capsys.readouterr().out
    out = load_mask(tmp_path / "ids" / "sp" / "a.png")  # single-channel now: read without a palette
    assert int((out == 4).sum()) == 9 and int(out.max()) == 4


def write_linear_dng(path, rgb, orientation=1):
    """A minimal DNG (TIFF, LinearRaw, 16-bit RGB, identity colour matrix): a camera raw file LibRaw develops."""
    import struct

    h, w, _ = rgb.shape
    data = rgb.astype("<u2").tobytes()
    model = b"traitlens\x00"
    tags = {254: (4, [0]), 256: (4, [w]), 257: (4, [h]), 258: (3, [16, 16, 16]), 259: (3, [1]), 262: (3, [34892]),
            272: (2, model), 273: (4, [0]), 274: (3, [orientation]), 277: (3, [3]), 278: (4, [h]),
            279: (4, [len(data)]), 284: (3, [1]), 50706: (1, [1, 4, 0, 0]), 50708: (2, model),
            50721: (10, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]), 50778: (3, [21])}
    packed = []
    for tag in sorted(tags):
        typ, vals = tags[tag]
        if typ == 2:
            raw = vals
        elif typ == 10:
            raw = b"".join(struct.pack("<ii", *v) for v in vals)
        else:
            raw = struct.pack("<" + {1: "B", 3: "H", 4: "I"}[typ] * len(vals), *vals)
        packed.append((tag, typ, len(vals), raw))
    extra_at = 8 + 2 + 12 * len(packed) + 4
    extra, where = b"", {}
    for tag, _, _, raw in packed:
        if len(raw) > 4:
            where[tag] = extra_at + len(extra)
            extra += raw + b"\x00" * (len(raw) % 2)
    out = b"II*\x00" + struct.pack("<IH", 8, len(packed))
    for tag, typ, count, raw in packed:
        if tag == 273:
            raw = struct.pack("<I", extra_at + len(extra))
        value = struct.pack("<I", where[tag]) if tag in where else raw.ljust(4, b"\x00")
        out += struct.pack("<HHI", tag, typ, count) + value
    path.write_bytes(out + struct.pack("<I", 0) + extra + data)


def test_camera_raw_files_are_developed_with_rawpy(tmp_path):
    from traitlens.data.imageio import image_orientation

    rgb = np.full((40, 60, 3), 8000, np.uint16)
    rgb[10:20, 10:40] = (60000, 3000, 3000)  # a red patch in the stored frame's upper left
    write_linear_dng(tmp_path / "flat.dng", rgb)
    im = load_image(tmp_path / "flat.dng")
    arr = np.asarray(im).astype(int)
    assert im.mode == "RGB" and im.size == (60, 40) and image_orientation(tmp_path / "flat.dng") == 1
    assert arr[15, 20, 0] > 200 and arr[15, 20, 1] < 40 and abs(arr[30, 50, 0] - arr[30, 50, 1]) < 10
    write_linear_dng(tmp_path / "turned.dng", rgb, orientation=6)  # camera held upright: shown 40 wide, 60 high
    turned = load_image(tmp_path / "turned.dng")
    assert turned.size == (40, 60) and image_orientation(tmp_path / "turned.dng") == 6
    from traitlens.data.imageio import orient_labels
    labels = np.zeros((40, 60), np.uint8)
    labels[10:20, 10:40] = 1
    red = np.asarray(turned)[..., 0] > 200
    np.testing.assert_array_equal(orient_labels(labels, 6) == 1, red)  # the mask turns as LibRaw turns the photo
    assert load_image(tmp_path / "flat.dng", max_size=30).size == (30, 20)


def test_camera_raw_files_are_read_with_rawpy_or_refused_by_name(tmp_path, monkeypatch):
    from traitlens.data.folders import IMAGE_EXTENSIONS, find_images

    raw = tmp_path / "CAM016703_d.CR2"
    raw.write_bytes(b"II*\x00" + bytes(200))  # a TIFF header with nothing LibRaw can develop
    assert ".cr2" in IMAGE_EXTENSIONS and find_images(tmp_path) == [raw]
    with pytest.raises(BadImageError, match="unreadable camera raw file"):
        load_image(raw)
    monkeypatch.setattr(imageio, "_rawpy", lambda: None)  # rawpy not installed
    with pytest.raises(BadImageError, match=r"camera raw file \(\.CR2\); install the raw extra"):
        load_image(raw)
    with pytest.raises(BadImageError, match="no such file"):
        load_image(tmp_path / "gone.CR2")


def test_orient_labels_turns_a_mask_as_load_image_turns_its_photo(tmp_path):
    from traitlens.data.imageio import image_orientation, orient_labels

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[2:6, 3:9] = 255  # a white block near the stored top-left
    labels = (arr[..., 0] > 0).astype(np.uint8) * 5
    for orientation in range(1, 9):
        im = Image.fromarray(arr)
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(tmp_path / f"o{orientation}.png", exif=exif)
        assert image_orientation(tmp_path / f"o{orientation}.png") == orientation
        upright = np.asarray(load_image(tmp_path / f"o{orientation}.png"))[..., 0] > 0
        np.testing.assert_array_equal(orient_labels(labels, orientation) == 5, upright)


def test_skipped_files_records_and_writes(tmp_path):
    skipped = SkippedFiles()
    assert skipped.count == 0 and not skipped
    skipped.add(tmp_path / "a.jpg", "truncated")
    skipped.extend([("b.png", "not an image")])
    skipped.add_error(BadImageError("c.tif", "no such file"))
    assert skipped.count == 3 and len(skipped) == 3
    line = skipped.summary(log_path="run/skipped.jsonl")
    assert line.startswith("skipped 3 unreadable files") and "a.jpg" in line and "\n" not in line
    out = skipped.write(tmp_path / "run" / "skipped.jsonl")
    rows = [json.loads(s) for s in out.read_text().splitlines()]
    assert rows[1] == {"path": "b.png", "reason": "not an image"}
    assert list(SkippedFiles.read(out)) == list(skipped)


def test_rgb_and_grey_with_transparent_colour(tmp_path):
    arr = np.zeros((1, 2, 3), np.uint8)
    arr[0, 1] = (10, 200, 30)
    Image.fromarray(arr).save(tmp_path / "t.png", transparency=(0, 0, 0))
    out = np.asarray(load_image(tmp_path / "t.png"))
    assert tuple(out[0, 0]) == imageio.BACKGROUND and tuple(out[0, 1]) == (10, 200, 30)
