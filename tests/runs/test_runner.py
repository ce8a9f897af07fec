"""The runner with a minimal job: records after artifacts, bad files listed, progress through failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitlens.runs import Job, discover, run
from traitlens.runs import runner as runner_module


class MeanJob(Job):
    """Each image's mean colour as its record, its first row as an artifact."""

    name = "mean"

    def prepare(self, image, item):
        arr = np.asarray(image)
        if arr[0, 0, 0] == 7:  # a file this job cannot handle
            raise ValueError("pixel 7")
        return arr

    def process(self, samples):
        for item, arr in samples:
            yield item, {"mean": float(arr.mean())}, {f"rows/{item.id}.npy": arr[0].tobytes()}

    def finish(self, out, records):
        return {"total": len(records)}


def test_a_record_is_written_only_after_its_artifacts(tmp_path, make_images, monkeypatch):
    make_images(tmp_path / "c", 6)
    items = discover([tmp_path / "c"])
    out = tmp_path / "out"
    real = runner_module.write_durably
    calls = []

    def failing(path, data):
        if path.parent.name == "rows":
            calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(runner_module, "write_durably", failing)
    with pytest.raises(OSError, match="disk full"):
        run(MeanJob(), items, out)
    ids = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert ids == [it.id for it in items[:3]]  # the 4th has no artifact, so no record
    monkeypatch.setattr(runner_module, "write_durably", real)
    counts = run(MeanJob(), items, out)
    assert counts["done"] == 3 and counts["resumed"] == 3 and counts["total"] == 6
    for it in items:
        assert (out / "rows" / f"{it.id}.npy").stat().st_size == 32 * 3


def test_a_file_the_job_cannot_prepare_is_listed_and_the_run_goes_on(tmp_path, make_images):
    from PIL import Image

    paths = make_images(tmp_path / "c", 3)
    arr = np.asarray(Image.open(paths[1])).copy()
    arr[0, 0, 0] = 7
    Image.fromarray(arr).save(paths[1])
    counts = run(MeanJob(), discover([tmp_path / "c"]), tmp_path / "out")
    assert counts["done"] == 2 and counts["skipped"] == 1
    listed = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [s["path"] for s in listed] == [str(paths[1])] and "pixel 7" in listed[0]["reason"]
