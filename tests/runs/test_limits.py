"""A small file must not end a run: huge headers are skipped before decoding, bad support masks refused."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from traitlens.cli import main
from traitlens.data.imageio import load_image


def _bomb(path):
    """A 16384×16000 1-bit PNG of a few tens of KB (262 M pixels once decoded)."""
    Image.new("1", (16384, 16000)).save(path, optimize=True)
    return path


def test_a_huge_image_is_skipped_from_its_header(tmp_path, checkpoint, make_images, monkeypatch):
    root = tmp_path / "c"
    make_images(root, 2)
    bomb = _bomb(root / "bomb.png")
    assert bomb.stat().st_size < 100_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a, _load=Image.Image.load: (
        decoded.append(self.size), _load(self, *a))[1])
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert (16384, 16000) not in decoded  # refused from the header, never decoded
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["path"].endswith("bomb.png") and "too large" in s["reason"] for s in skipped] == [True]
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    Image.fromarray(np.ones((32, 32), np.uint8), mode="L").save(tmp_path / "m.png")
    seg = tmp_path / "seg"
    assert main(["segment", "--support", str(root / "img000.png"), "--support-mask", str(tmp_path / "m.png"),
                 "--images", str(root), "--out", str(seg), "--work-size", "32", "--device", "cpu"]) == 0
    assert (16384, 16000) not in decoded
    assert [json.loads(line)["path"].endswith("bomb.png") for line in (seg / "skipped.jsonl").open()] == [True]
    # the limit is a parameter: a larger one lets a big (but sane) file through
    assert load_image(make_images(tmp_path / "big", 1, size=300)[0], max_pixels=300 * 300).size == (300, 300)


def _support(tmp_path, top_id):
    img = np.full((32, 32, 3), 90, np.uint8)
    mask = np.zeros((32, 32), np.uint16)
    mask[4:12, 4:12] = 1
    mask[20:28, 20:28] = top_id
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / f"m{top_id}.png")
    return ["--support", str(tmp_path / "s.png"), "--support-mask", str(tmp_path / f"m{top_id}.png")]


def test_a_support_mask_with_a_huge_label_id_is_refused_in_one_line(tmp_path, make_images, capsys):
    make_images(tmp_path / "q", 2)
    common = ["--images", str(tmp_path / "q"), "--out", str(tmp_path / "out"), "--work-size", "32", "--device", "cpu"]
    assert main(["segment", *_support(tmp_path, 60000), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "60000" in err and "\n" not in err and not (tmp_path / "out" / "results.jsonl").exists()
    assert main(["segment", *_support(tmp_path, 300), *common]) == 0  # a sane id above 255: 16-bit labels
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2


def test_a_ground_truth_mask_with_a_huge_label_id_is_reported_not_allocated(tmp_path, make_images):
    make_images(tmp_path / "q", 2)
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.full((32, 32), 60000, np.uint16)).save(tmp_path / "gt" / "img000.png")
    Image.fromarray(np.ones((32, 32), np.uint8), mode="L").save(tmp_path / "gt" / "img001.png")
    out = tmp_path / "out"
    assert main(["segment", *_support(tmp_path, 2), "--images", str(tmp_path / "q"), "--gt", str(tmp_path / "gt"),
                 "--out", str(out), "--work-size", "32", "--device", "cpu"]) == 0
    rows = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["img000.png"]["gt"] is None and "60000" in rows["img000.png"]["gt_error"]
    assert 0 <= rows["img001.png"]["miou"] <= 1
