"""The one memo cache: keyed by recipe and by the computing code, written whole or not at all."""

import json
from dataclasses import dataclass

import pytest

from traitlens.studies import memo


@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-3
    layers: tuple = (1, 2)


def test_key_follows_recipe_and_source(monkeypatch):
    a = memo.memo_key(Recipe())
    assert memo.memo_key(Recipe()) == a and len(a) == 12
    assert memo.memo_key(Recipe(lr=2e-3)) != a
    assert memo.memo_key(Recipe(layers=(1, 3))) != a
    assert memo.memo_key({"recipe": Recipe()}) != a  # nesting is part of the content
    monkeypatch.setattr(memo, "source_digest", lambda code=None: "0" * 16)
    assert memo.memo_key(Recipe()) != a


def test_source_digest_covers_the_computing_packages():
    from pathlib import Path

    root = Path(memo.__file__).resolve().parents[1]
    assert (root / "engine" / "train.py").is_file() and "engine" in memo.COMPUTING
    assert "report" not in memo.COMPUTING and "cli" not in memo.COMPUTING  # drawing never retrains
    assert memo.source_digest() == memo.source_digest() and len(memo.source_digest()) == 16


def test_memo_json_computes_once_and_reads_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"top1": 0.5, "pair": (1, 2)}

    first = memo.memo_json(tmp_path, "study", Recipe(), compute)
    again = memo.memo_json(tmp_path, "study", Recipe(), compute)
    assert first == again == {"top1": 0.5, "pair": [1, 2]} and len(calls) == 1
    (path,) = tmp_path.glob("study-*.json")
    stored = json.loads(path.read_text())
    assert stored["recipe"] == {"lr": 1e-3, "layers": [1, 2]} and stored["source"] == memo.source_digest()
    memo.memo_json(tmp_path, "study", Recipe(lr=0.1), compute)
    assert len(calls) == 2 and len(list(tmp_path.glob("study-*.json"))) == 2


def test_interrupted_or_torn_entry_is_recomputed(tmp_path):
    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        memo.memo_json(tmp_path, "study", Recipe(), boom)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written
    path = memo.memo_path(tmp_path, "study", Recipe(), ".json")
    path.write_text('{"recipe": {"lr": 0.0')  # a torn file from elsewhere
    assert memo.memo_json(tmp_path, "study", Recipe(), lambda: {"ok": True}) == {"ok": True}
    assert json.loads(path.read_text())["result"] == {"ok": True}


def _slow_entry(args):
    folder, log = args
    import time

    def compute():
        with open(log, "a") as fh:
            fh.write("computed\n")
        time.sleep(0.5)
        return {"value": 1}

    return memo.memo_json(folder, "shared", Recipe(), compute)


def test_two_processes_asking_for_one_entry_compute_it_once(tmp_path):
    import multiprocessing

    log = tmp_path / "log.txt"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_slow_entry, [(tmp_path / "memo", log)] * 2)
    assert results == [{"value": 1}, {"value": 1}]
    assert log.read_text().splitlines() == ["computed"]  # the second waited for the first and read its entry
