"""Input discovery: unique, stable ids; link loops walked once; special files skipped, never opened."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from traitlens.cli import main
from traitlens.data.imageio import SkippedFiles
from traitlens.runs import artifact_stem, discover


def test_ids_keep_the_extension_and_tell_roots_apart(tmp_path, make_images):
    write_images = make_images
    (tmp_path / "one").mkdir()
    for name in ("a.png", "a.jpg", "a.PNG"):
        Image.new("RGB", (8, 8)).save(tmp_path / "one" / name, format="PNG")
    write_images(tmp_path / "x" / "photos", 2)
    write_images(tmp_path / "y" / "photos", 2)  # the same relative paths under a root of the same name
    items = discover([tmp_path / "one"])
    assert [it.id for it in items] == ["a.PNG", "a.jpg", "a.png~2"]  # a.PNG and a.png: one artifact name
    assert len({artifact_stem(it.id) for it in items}) == 3
    both = discover([tmp_path / "x" / "photos", tmp_path / "y" / "photos", tmp_path / "one" / "a.jpg"])
    assert [it.id for it in both] == ["photos/img000.png", "photos/img001.png", "photos~2/img000.png",
                                      "photos~2/img001.png", "a.jpg"]
    # stable: the same inputs give the same ids
    assert [it.id for it in discover([tmp_path / "x" / "photos", tmp_path / "y" / "photos",
                                      tmp_path / "one" / "a.jpg"])] == [it.id for it in both]


def test_ids_that_flatten_alike_get_distinct_flat_names(tmp_path):
    """Flat artifact folders (the atlas' parts, explain's overlays) join folders with ``__``: ``a__b/c.png`` and
    ``a/b__c.png`` would share one file."""
    from traitlens.runs.inputs import flat_name

    for rel in ("a__b/c.png", "a/b__c.png"):
        (tmp_path / "r" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "r" / rel)
    items = discover([tmp_path / "r"])
    assert len(items) == 2 and len({flat_name(it.id) for it in items}) == 2
    assert len({artifact_stem(it.id) for it in items}) == 2


def test_two_roots_with_the_same_tree_overwrite_nothing(tmp_path, checkpoint, make_images):
    """Explain and segment over two roots holding the same relative paths: one record and one set of
    artifacts per input file, each holding its own image."""
    write_images = make_images
    first = write_images(tmp_path / "r1" / "images" / "sp", 3, seed=1)
    write_images(tmp_path / "r2" / "images" / "sp", 3, seed=2)
    Image.open(first[0]).save(tmp_path / "r1" / "images" / "sp" / "img000.jpg", quality=95)  # a.png + a.jpg
    roots = [str(tmp_path / "r1" / "images"), str(tmp_path / "r2" / "images")]
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", *roots, "--out", str(out),
                 "--save-maps", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 7 == len({r["id"] for r in rows}) == len({r["overlay"] for r in rows})
    assert len({r["path"] for r in rows}) == 7 and len(list((out / "overlays").iterdir())) == 7
    assert len(np.load(out / "maps.npz").files) == 7

    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    Image.open(first[0]).save(tmp_path / "s.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    seg = tmp_path / "seg"
    assert main(["segment", "--support", str(tmp_path / "s.png"), "--support-mask", str(tmp_path / "m.png"),
                 "--images", *roots, "--out", str(seg), "--work-size", "32", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (seg / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 7 == len({r["labels"] for r in rows}) == len({r["overlay"] for r in rows})
    for r in rows:  # each overlay shows its own image: the background pixels are that image's
        over = np.asarray(Image.open(seg / r["overlay"]))
        labels = np.asarray(Image.open(seg / r["labels"]))
        own = np.asarray(Image.open(r["file"]).convert("RGB"))
        assert np.array_equal(over[labels == 0], own[labels == 0])
    # a rerun finds every record (nothing was lost to a collision)
    assert main(["segment", "--support", str(tmp_path / "s.png"), "--support-mask", str(tmp_path / "m.png"),
                 "--images", *roots, "--out", str(seg), "--work-size", "32", "--device", "cpu",
                 "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["done"] == 0 and again["resumed"] == 7


def test_a_link_loop_and_linked_files_are_walked_once(tmp_path, make_images):
    root = tmp_path / "c"
    make_images(root / "sub", 3)
    os.symlink(".", root / "loop")  # loop -> .
    os.symlink("..", root / "sub" / "up")
    os.symlink("sub/img000.png", root / "again.png")  # a second name for one file
    items = discover([root, root / "sub"])
    assert len(items) == 3  # not 3 × the depth the loop allows
    assert sorted(it.path.resolve().name for it in items) == ["img000.png", "img001.png", "img002.png"]


@pytest.fixture
def alarm():
    """Fail instead of hanging forever."""
    def fail(*_):
        raise TimeoutError("the run blocked")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_special_files_are_listed_and_never_opened(tmp_path, checkpoint, alarm, make_images):
    root = tmp_path / "c"
    make_images(root, 2)
    os.mkfifo(root / "pipe.png")
    os.symlink("nowhere.png", root / "broken.png")
    skipped = SkippedFiles()
    assert [it.id for it in discover([root], skipped)] == ["img000.png", "img001.png"]
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["broken.png", "pipe.png"]
    assert any("FIFO" in reason for _, reason in skipped)
    out = tmp_path / "out"
    for inputs in ([str(root)], [str(root / "pipe.png"), str(root / "img000.png")]):
        assert main(["explain", "--checkpoint", str(checkpoint), "--images", *inputs, "--out", str(out),
                     "--device", "cpu"]) == 0
        listed = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
        assert any(s["path"].endswith("pipe.png") and "FIFO" in s["reason"] for s in listed)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
