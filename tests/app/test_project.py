"""The Segment tab: painted layers to label maps, and the project that `traitlens segment` runs in bulk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from traitlens.app.project import (SegmentProject, labels_from_layers, layer_from_labels, parse_parts, part_colours,
                                   parts_text)
from traitlens.errors import UserError


def test_painted_layers_become_labels():
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[2:8, 3:12], labels[10:18, 15:28] = 2, 5
    layer = layer_from_labels(labels, num_parts=6)
    assert layer.shape == (20, 30, 4) and (layer[..., 3] > 0).sum() == (labels > 0).sum()
    assert np.array_equal(labels_from_layers([layer], 6), labels)
    # A brush stroke's anti-aliased rim (half-transparent, blended colours) goes to the nearest part colour;
    # an erased pixel is transparent and becomes background; a later layer paints over an earlier one.
    stroke = np.zeros_like(layer)
    colour = part_colours(6)[3]
    stroke[0:2, 0:5, :3], stroke[0:2, 0:5, 3] = colour, 255
    stroke[2, 0:5, :3], stroke[2, 0:5, 3] = (colour * 0.9).astype(np.uint8), 140
    stroke[3, 0:5, :3], stroke[3, 0:5, 3] = colour, 60  # mostly transparent: not painted
    layer[4:6, 4:6, 3] = 0  # erased
    out = labels_from_layers([layer, stroke], 6)
    assert (out[0:3, 0:5] == 3).all() and (out[3, 0:3] == 0).all()
    assert (out[4:6, 4:6] == 0).all() and out[7, 5] == 2 and out[12, 20] == 5
    with pytest.raises(UserError, match="paint at least one part"):
        labels_from_layers([], 6)


def test_every_colour_goes_to_its_nearest_part_colour():
    """Any RGB (a brush's blended rims, a pasted picture) → the nearest part colour, computed once per colour."""
    rng = np.random.default_rng(0)
    layer = rng.integers(0, 256, size=(40, 50, 4)).astype(np.uint8)
    palette = part_colours(7)[1:].astype(np.int64)
    rgb = layer[..., :3].astype(np.int64)
    nearest = ((rgb[..., None, :] - palette) ** 2).sum(-1).argmin(-1) + 1
    assert np.array_equal(labels_from_layers([layer], 7), np.where(layer[..., 3] >= 128, nearest, 0))


def test_part_names():
    assert parse_parts("wing\nhead, tail") == {1: "wing", 2: "head", 3: "tail"}
    assert parse_parts("3: spot\nband") == {3: "spot", 4: "band"}
    assert parse_parts(parts_text({2: "a", 7: "b"})) == {2: "a", 7: "b"}
    with pytest.raises(UserError, match="ids run from 1 to 255"):
        parse_parts("0: background")


def _read(path):
    return np.asarray(Image.open(path))


def test_project_round_trip_through_traitlens_segment(session, collection, tmp_path):
    """The app's propagation, saved as a project, is the job `traitlens segment` runs from the project's
    arguments: the same label maps, image for image; a fixed result becomes a second support."""
    from traitlens.cli import main

    first = session.collection_ids()[0]
    value, source, _ = session.support_canvas(first)
    truth = _read(collection / "masks" / "test" / first)
    value, text = session.upload_labels(str(collection / "masks" / "test" / first), source, session.parts_text())
    assert np.array_equal(session.labels_from_editor(value, source, text), truth)
    session.add_support(value, source, text)
    session.project.options["work_size"] = 32  # fast; stored in the project and passed to the CLI
    seen = []
    gallery, status = session.propagate(str(collection / "test"), on_progress=lambda d, t: seen.append((d, t)))
    n = len(session.collection)
    assert len(gallery) == n and seen[-1] == (n, n) and f"{n} new" in status
    records = session.project.results()
    assert {r["id"] for r in records} == set(session.collection_ids())

    project = SegmentProject.load(session.project.folder)  # what was saved, read back
    data = json.loads((project.folder / "project.json").read_text())
    assert data["parts"]["1"] == "body" and data["options"]["work_size"] == 32 and len(data["supports"]) == 1
    assert "segment_args" in data and (project.folder / "segment.sh").exists()
    bulk = tmp_path / "bulk"
    assert main(project.segment_args(bulk)) == 0
    for r in records:
        assert np.array_equal(_read(r["labels"]), _read(bulk / "labels" / r["id"])), r["id"]
    # The support's prediction is close to its own mask (a sanity check of the wiring, not of the method).
    own = next(r for r in records if r["id"] == first)
    assert (_read(own["labels"]) == truth).mean() > 0.8

    # Fix a result (here: take the ground truth as the fixed mask) and propagate again with two supports.
    second = session.collection_ids()[3]
    index = [r["id"] for r in records].index(second)
    value, source, _ = session.fix_result(index)
    fixed = _read(collection / "masks" / "test" / second)
    value = dict(value, layers=[layer_from_labels(fixed, 10)])
    session.add_support(value, source, text)
    gallery, status = session.propagate(str(collection / "test"))
    assert session.project.last_run != f"runs/{records[0]['labels'].split('/runs/')[1].split('/')[0]}"
    again = SegmentProject.load(session.project.folder)
    assert len(again.supports) == 2
    bulk2 = tmp_path / "bulk2"
    assert main(again.segment_args(bulk2)) == 0
    for r in again.results():
        assert np.array_equal(_read(r["labels"]), _read(bulk2 / "labels" / r["id"])), r["id"]
    # With the fixed image among the supports its own prediction agrees with the fix better than before.
    before = (_read(records[index]["labels"]) == fixed).mean()
    after = (_read(next(r for r in again.results() if r["id"] == second)["labels"]) == fixed).mean()
    assert after > max(before, 0.9), (before, after)


def test_segment_errors(session, tmp_path):
    with pytest.raises(UserError, match="choose the support specimen first"):
        session.upload_labels(str(tmp_path / "x.png"), None, "1: a")
    value, source, _ = session.support_canvas(session.collection_ids()[0])
    with pytest.raises(UserError, match="mask is empty"):
        session.add_support(value, source, "1: a")
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.ones((5, 5), np.uint8)).save(wrong)
    with pytest.raises(UserError, match="differs from the support image"):
        session.upload_labels(str(wrong), source, "1: a")
    with pytest.raises(UserError, match="no support yet"):
        session.propagate(str(session.collection.root))
    with pytest.raises(UserError, match="not found"):
        session.propagate(str(tmp_path / "nowhere"))
