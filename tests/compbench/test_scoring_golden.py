"""Golden files: the review-era raw outputs of GPT-4V, Gemini, LLaVA and VILA, scored two ways.

The expected numbers are computed here as simply as possible (first word of the reply; lower-cased
option text without punctuation), independently of traitlens.compbench.scoring, and pinned in a table.
"""

import json
import re
import string
from pathlib import Path

import pytest

from traitlens.compbench.records import load_records
from traitlens.compbench.scoring import score_stored
from traitlens.compbench.tasks import TASKS

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "compbench-review" / "results"
pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden CompBench files not available")

# (folder, file, task, reply key): correct, unparseable-or-invalid, n  (hand-checkable, see _by_hand)
PINNED = {
    ("celebA", "0_141_gpt.json"): ("celeba", "gpt_answer", 1353, 2, 1471),
    ("celebA", "0_141_gemini.json"): ("celeba", "gemini_answer", 912, 0, 1471),
    ("celebA", "0_141_llava.jsonl"): ("celeba", "llava_answer", 1411, 0, 1471),
    ("celebA", "0_141_vila.jsonl"): ("celeba", "vila_answer", 847, 0, 1471),
    ("cub", "0_1000_gpt.json"): ("cub", "gpt_answer", 620, 3, 870),
    ("cub", "0_1000_gemini.json"): ("cub", "gemini_answer", 516, 0, 870),
    ("depth", "0_529_rebalanced_gemini.json"): ("nyu_depth", "gemini_answer", 1031, 15, 1858),
    ("depth", "0_529_rebalanced_gpt.json"): ("nyu_depth", "gpt_answer", 1039, 15, 1858),
    ("fer2013", "0_720_gpt.json"): ("fer2013", "gpt_answer", 3163, 29, 3783),
    ("mb", "mb_all_gpt.json"): ("magicbrush", "gpt_answer", 531, 5, 927),
    ("mb", "mb_all_llava.json"): ("magicbrush", "llava_answer", 226, 2, 927),
    ("qbench2", "gpt.json"): ("qbench2", "gpt_answer", 731, 2, 1000),
    ("qbench2", "llava.jsonl"): ("qbench2", "llava_answer", 656, 1, 1000),
}


def _raw(path):
    if path.suffix == ".jsonl":
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return json.loads(path.read_text())


def _norm(s):
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


def _by_hand(path, key):
    """(correct, not understood, n) from the file alone."""
    correct = bad = n = 0
    for r in _raw(path):
        if not r:
            continue
        n += 1
        reply = r[key]
        if not isinstance(reply, str):  # an API error object stored as the reply
            bad += 1
            continue
        if "Answeer" in r or "option" in r:  # multiple choice
            opts = r["option"] if "option" in r else r["Modified_option"].split(",")
            if "Answeer" in r:
                opts = opts + ["None"]
            truth = r["Answeer"] if "Answeer" in r else r["answer"]
            valid = [_norm(o) for o in opts]
            if _norm(reply) not in valid:
                bad += 1
            elif _norm(reply) == _norm(truth):
                correct += 1
        else:
            words = reply.strip().lower()
            said = "Left" if words.startswith(("left", "first")) else \
                   "Right" if words.startswith(("right", "second")) else None
            if said is None:
                bad += 1
            elif said == r["answer"]:
                correct += 1
    return correct, bad, n


def _files():
    return sorted(p for p in GOLDEN.glob("*/*") if p.suffix in (".json", ".jsonl"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scorer_matches_hand_count(path):
    records, report = load_records(path)
    key = next(k for k in _raw(path)[0] if k.endswith("_answer"))
    summary, scored = score_stored(records, key, lambda r: TASKS[r.task])
    assert len(summary.tasks) == 1
    t = next(iter(summary.tasks.values()))
    correct, bad, n = _by_hand(path, key)
    assert (t.n, t.correct, t.unparseable + t.invalid) == (n, correct, bad)
    assert t.accuracy == pytest.approx(correct / n)
    assert report.empty == 0 and report.bad_answer == 0


@pytest.mark.parametrize("where,expected", sorted(PINNED.items()), ids=lambda x: "/".join(x) if isinstance(x, tuple) and len(x) == 2 else None)
def test_pinned_accuracies(where, expected):
    task, key, correct, bad, n = expected
    records, _ = load_records(GOLDEN / where[0] / where[1])
    summary, _ = score_stored(records, key, lambda r: TASKS[r.task])
    t = summary.tasks[task]
    assert (t.correct, t.unparseable + t.invalid, t.n) == (correct, bad, n)
    assert t.accuracy == pytest.approx(correct / n)


def test_split_is_reproducible_and_80_20():
    records, _ = load_records(GOLDEN / "cub" / "0_1000_gpt.json")
    a_val, a_test = score_stored(records, "gpt_answer", lambda r: TASKS[r.task], split="val")[1], \
        score_stored(records, "gpt_answer", lambda r: TASKS[r.task], split="test")[1]
    b_val = score_stored(records, "gpt_answer", lambda r: TASKS[r.task], split="val")[1]
    assert [s.id for s in a_val] == [s.id for s in b_val]
    assert len(a_test) == int(870 * 0.8) and len(a_val) == 870 - int(870 * 0.8)
    assert not {s.id for s in a_val} & {s.id for s in a_test}


def test_windows_paths_are_normalised():
    records, _ = load_records(GOLDEN / "cub" / "0_1000_gpt.json")
    assert records[0].raw["image_1"].count("\\") == 2
    assert "\\" not in records[0].image_1 and records[0].image_1.endswith("11_195/Carolina_Wren_0141_186347.jpg")


def test_score_cli(tmp_path):
    from traitlens.cli import main

    out = tmp_path / "score.json"
    assert main(["compbench", "score", "--results", str(GOLDEN / "fer2013" / "0_720_gpt.json"), "--task", "fer2013",
                 "--answer-key", "gpt_answer", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    correct, bad, n = _by_hand(GOLDEN / "fer2013" / "0_720_gpt.json", "gpt_answer")
    assert got["tasks"]["fer2013"]["accuracy"] == pytest.approx(correct / n)
    assert got["tasks"]["fer2013"]["unparseable"] == bad == 29
    assert got["dimensions"]["emotion"]["n"] == n
    assert main(["compbench", "score", "--results", str(GOLDEN / "fer2013" / "0_720_gpt.json"), "--task", "fer2013",
                 "--answer-key", "claude_answer"]) == 2                    # a field no record has
