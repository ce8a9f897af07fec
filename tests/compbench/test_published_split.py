"""The published val/test split files (issue 12): records matched by image pair and question.

The CUB replies of the review repository are stored in another order than the label file, some from an
older version of it, with Windows separators. Accuracy on the published test split must equal a hand
count over the published test records (each matched once, by its images and question).
"""

import collections
import json
from pathlib import Path

import pytest

from traitlens.cli import main
from traitlens.compbench.records import load_benchmark, load_records
from traitlens.compbench.splits import find_split_file, select_published

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LABELS = SHARED / "real-releases" / "compbench" / "Labeled_data" / "cub_label"
REPLIES = SHARED / "compbench-review" / "results" / "cub"
LABEL = LABELS / "CUB_0_1000_rebalanced_fixed_path.json"
TEST = LABELS / "CUB_0_1000_rebalanced_fixed_path_test.json"
needs_data = pytest.mark.skipif(not (LABELS.is_dir() and REPLIES.is_dir()), reason="CompBench release files absent")


def _rows(path):
    if path.suffix == ".jsonl":
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return json.loads(path.read_text())


def _key(r):
    return r["image_1"].replace("\\", "/"), r["image_2"].replace("\\", "/"), " ".join(r["question"].split())


def _hand_count(replies, key):
    """(correct, matched) over the published test records: each takes the first unused reply of its pair."""
    pool = collections.defaultdict(list)
    for r in _rows(replies):
        if r:
            pool[_key(r)].append(r)
    correct = matched = 0
    for t in json.loads(TEST.read_text()):
        if pool[_key(t)]:
            r = pool[_key(t)].pop(0)
            matched += 1
            said = r[key].strip().lower() if isinstance(r[key], str) else ""
            side = "Left" if said.startswith(("left", "first")) else "Right" if said.startswith(("right", "second")) else None
            correct += side == t["answer"]
    return correct, matched


@needs_data
@pytest.mark.parametrize("name,key", [("0_1000_gpt.json", "gpt_answer"), ("0_1000_llava.jsonl", "llava_answer")])
def test_published_test_split_equals_hand_count(tmp_path, name, key, capsys):
    correct, matched = _hand_count(REPLIES / name, key)
    out = tmp_path / "s.json"
    # found by itself beside the label file ...
    assert main(["compbench", "score", "--results", str(REPLIES / name), "--task", "cub", "--answer-key", key,
                 "--split", "test", "--data", str(LABEL), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["tasks"]["cub"]["n"] == matched and got["tasks"]["cub"]["correct"] == correct
    assert got["tasks"]["cub"]["accuracy"] == pytest.approx(correct / matched)
    sel = got["split_definition"]
    assert sel["definition"] == "published" and sel["file"] == str(TEST)
    assert sel["split_records"] == 696 and sel["matched"] == matched
    assert f"{matched} of its 696 records matched" in printed
    # ... or in the label folder, or named
    for extra in (["--data", str(LABELS)], ["--split-file", str(TEST)]):
        assert main(["compbench", "score", "--results", str(REPLIES / name), "--task", "cub", "--answer-key", key,
                     "--split", "test", "--json", str(out)] + extra) == 0
        assert json.loads(out.read_text())["tasks"]["cub"]["correct"] == correct


@needs_data
def test_the_published_numbers():
    """Pinned: GPT-4V's file predates the rebalanced labels (600 of 696 test records have a reply)."""
    assert _hand_count(REPLIES / "0_1000_gpt.json", "gpt_answer") == (416, 600)      # 0.693
    assert _hand_count(REPLIES / "0_1000_llava.jsonl", "llava_answer") == (505, 696)  # 0.726
    records, _ = load_records(REPLIES / "0_1000_gpt.json")
    chosen, sel = select_published(records, TEST, "test")
    assert sel.matched == 600 and len({r.id for r in chosen}) == 600


@needs_data
def test_seeded_split_says_it_is_not_the_published_one(tmp_path, capsys):
    assert main(["compbench", "score", "--results", str(REPLIES / "0_1000_gpt.json"), "--task", "cub",
                 "--answer-key", "gpt_answer", "--split", "test", "--json", str(tmp_path / "s.json")]) == 0
    assert "not the published split" in capsys.readouterr().out
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["split_definition"]["definition"] == "seeded" and got["tasks"]["cub"]["n"] == 696


@needs_data
def test_label_folder_loads_once_and_split_files_are_definitions():
    records, report = load_benchmark(LABELS)
    assert len(report.files) == 1 and len(records) == 870     # the _val/_test files are not more records
    assert find_split_file(LABEL, "val").name == "CUB_0_1000_rebalanced_fixed_path_val.json"
    assert find_split_file(LABELS, "test", task="cub") == TEST


def test_matching_by_pair_and_question_with_windows_paths(tmp_path):
    """Without the release files: a tiny label file, its test split, and replies in another order."""
    labels = [{"image_1": f"d/x/{i}a.jpg", "image_2": f"d/x/{i}b.jpg", "question": f"Q{i % 2}?", "answer": "Left"}
              for i in range(6)]
    (tmp_path / "cub.json").write_text(json.dumps(labels))
    (tmp_path / "cub_test.json").write_text(json.dumps(labels[:4]))
    replies = [dict(r, image_1=r["image_1"].replace("/", "\\"), m_answer="Left" if i != 1 else "Right")
               for i, r in enumerate(labels)][::-1]
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    out = tmp_path / "s.json"
    assert main(["compbench", "score", "--results", str(tmp_path / "replies.json"), "--task", "cub",
                 "--answer-key", "m_answer", "--split", "test", "--data", str(tmp_path / "cub.json"),
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["tasks"]["cub"]["n"] == 4 and got["tasks"]["cub"]["correct"] == 3
    records, _ = load_benchmark(tmp_path / "cub.json")
    assert len(records) == 6


def test_run_on_the_published_split(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "bench"
    (data / "img").mkdir(parents=True)
    labels = []
    for i in range(5):
        for s in "ab":
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(data / "img" / f"{i}{s}.png")
        labels.append({"image_1": f"img/{i}a.png", "image_2": f"img/{i}b.png", "question": "Q?", "answer": "Right"})
    (data / "cub.json").write_text(json.dumps(labels))
    (data / "cub_test.json").write_text(json.dumps([dict(r, image_2=r["image_2"].replace("/", "\\"))
                                                    for r in labels[1:4]]))
    out = tmp_path / "run"
    assert main(["compbench", "run", "--data", str(data), "--model", "scripted:oracle", "--out", str(out),
                 "--split", "test", "--json", str(tmp_path / "s.json")]) == 0
    assert "3 of its 3 records matched" in capsys.readouterr().out
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["images"][0] for r in rows) == ["img/1a.png", "img/2a.png", "img/3a.png"]
    assert json.loads((tmp_path / "s.json").read_text())["splits"][0]["matched"] == 3
    # without a split file the folder's label file is run once (the test file is not more records)
    assert main(["compbench", "run", "--data", str(data), "--model", "scripted:oracle", "--out", str(tmp_path / "all")]) == 0
    assert len((tmp_path / "all" / "results.jsonl").read_text().splitlines()) == 5
