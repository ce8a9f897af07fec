"""SIGKILL at random points, then a rerun: every input has exactly one record, and all of its artifacts load."""

from __future__ import annotations

import csv
import json
import random
import signal
import time

import numpy as np
import pytest
from PIL import Image

from traitlens.runs.store import RESULTS


def _kill_midway(proc, out, at_records: int, extra_s: float, limit_s: float = 120) -> bool:
    """SIGKILL ``proc`` ``extra_s`` after ``out`` holds ``at_records`` records; False when it ended first."""
    deadline = time.time() + limit_s
    results = out / RESULTS
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= at_records:
            break
        time.sleep(0.005)
    time.sleep(extra_s)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return killed


def _records(out):
    rows = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a record was written twice"
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_explain_keeps_every_record_and_map_through_sigkill(seed, tmp_path, checkpoint, images, run_cli):
    rng = random.Random(seed)
    out = tmp_path / "out"
    args = ["explain", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--save-maps",
            "--batch-size", "3", "--device", "cpu"]
    kills = [_kill_midway(run_cli(*args), out, rng.randrange(0, 36), rng.uniform(0, 0.3)) for _ in range(2)]
    assert any(kills), "no kill landed before the run ended"
    if (out / RESULTS).exists() and seed == 0:  # a torn tail, as a kill inside a write would leave it
        with open(out / RESULTS, "ab") as fh:
            fh.write(b'{"id": "a/img000.png", "pa')
    proc = run_cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    rows = _records(out)
    assert sorted(r["id"] for r in rows) == sorted(f"{c}/img{i:03d}.png" for c in "ab" for i in range(20))
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]  # what killed writers left is gone
    maps = np.load(out / "maps.npz")
    assert set(maps.files) == {r["id"] for r in rows}
    for r in rows:
        assert Image.open(out / r["overlay"]).size[0] > 0
        assert np.array_equal(np.load(out / r["maps"]), maps[r["id"]]) and maps[r["id"]].shape == (2, 4, 4)


def test_segment_keeps_every_record_and_measurement_through_sigkill(tmp_path, images, run_cli):
    mask = np.zeros((32, 32), np.uint8)
    mask[4:16, 4:16], mask[16:28, 16:28] = 1, 2
    Image.open(images / "a" / "img000.png").save(tmp_path / "s.png")
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    out = tmp_path / "out"
    args = ["segment", "--support", str(tmp_path / "s.png"), "--support-mask", str(tmp_path / "m.png"),
            "--images", str(images), "--out", str(out), "--work-size", "32", "--batch-size", "2", "--device", "cpu"]
    rng = random.Random(7)
    kills = [_kill_midway(run_cli(*args), out, rng.randrange(1, 36), rng.uniform(0, 0.2)) for _ in range(2)]
    assert any(kills) and 0 < len(_records(out)) < 40  # killed midway, with work to redo
    proc = run_cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    rows = _records(out)
    assert len(rows) == 40
    with open(out / "measurements.csv") as fh:
        table = list(csv.DictReader(fh))
    for r in rows:
        labels = np.asarray(Image.open(out / r["labels"]))
        assert labels.shape == (32, 32) and Image.open(out / r["overlay"]).size == (32, 32)
        mine = {int(m["trait"]): int(m["area_px"]) for m in table if m["path"] == r["path"]}
        assert mine == {int(k): v for k, v in r["areas"].items()}
        assert mine == {int(k): int((labels == k).sum()) for k in np.unique(labels) if k > 0}
