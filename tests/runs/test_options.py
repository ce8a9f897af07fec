"""A run folder records the options its records answer: the same options resume, others are refused in one
line naming --restart, and --restart replaces the records and the job's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitlens.errors import UserError
from traitlens.runs import Job, discover, run
from traitlens.runs.store import check_options, file_digest


class ScaledMean(Job):
    name = "scaled-mean"
    outputs = ("rows", "index.html")

    def __init__(self, scale: float):
        self.scale = scale

    def settings(self):
        return {"scale": self.scale}

    def prepare(self, image, item):
        return np.asarray(image)

    def process(self, samples):
        for item, arr in samples:
            yield item, {"mean": float(arr.mean()) * self.scale}, {f"rows/{item.id}.bin": arr[0].tobytes()}

    def finish(self, out, records):
        (out / "index.html").write_text(str(len(records)))
        return {}


def test_same_options_resume_other_options_are_refused_and_restart_replaces(tmp_path, make_images):
    make_images(tmp_path / "c", 3)
    items = discover([tmp_path / "c"])
    out = tmp_path / "out"
    first = run(ScaledMean(1.0), items, out, options={"checkpoint": "abc"})
    assert first["done"] == 3
    assert json.loads((out / "run.json").read_text()) == {"job": "scaled-mean", "scale": 1.0, "checkpoint": "abc"}
    assert run(ScaledMean(1.0), items, out, options={"checkpoint": "abc"})["resumed"] == 3
    for job, options, key in ((ScaledMean(2.0), {"checkpoint": "abc"}, "scale"),
                              (ScaledMean(1.0), {"checkpoint": "other"}, "checkpoint")):
        with pytest.raises(UserError, match="--restart") as exc:
            run(job, items, out, options=options)
        assert key in str(exc.value) and "\n" not in str(exc.value)
    stale = out / "rows" / "gone.bin"
    stale.write_bytes(b"x")  # an output of the earlier run that the new one would not overwrite
    again = run(ScaledMean(2.0), items, out, options={"checkpoint": "abc"}, restart=True)
    assert again["done"] == 3 and again["resumed"] == 0 and not stale.exists()
    means = [json.loads(line)["mean"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(means) == 3 and all(m > 2 for m in means)
    assert json.loads((out / "run.json").read_text())["scale"] == 2.0


def test_records_without_recorded_options_are_refused_and_other_folders_are_not_cleared(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"id": "a.png", "mean": 1}) + "\n")
    with pytest.raises(UserError, match="--restart"):
        check_options(out, {"job": "x"})
    keep = tmp_path / "mine"
    (keep / "rows").mkdir(parents=True)
    check_options(keep, {"job": "x"}, restart=True, outputs=("rows",))
    assert (keep / "rows").is_dir()  # no records there: nothing in it is a run's
    assert file_digest(out / "results.jsonl") and file_digest(tmp_path / "nothing") is None
