"""`compbench score` / `build` options and messages (issue 17), and the failure page's image sizes."""

import json
import re

from PIL import Image

from traitlens.cli import main


def _results(tmp_path):
    recs = [{"image_1": "img/a.png", "image_2": "img/b.png", "question": f"Q{i}", "answer": "Left",
             "m_answer": "Left" if i % 3 else "Right"} for i in range(6)]
    f = tmp_path / "cub.json"
    f.write_text(json.dumps(recs))
    return f


def test_score_refuses_unknown_tasks_naming_the_known_ones(tmp_path, capsys):
    f = _results(tmp_path)
    for bogus in ("bogus", "cub_bogus"):                        # a prefix of a real task is not that task
        assert main(["compbench", "score", "--results", str(f), "--task", bogus, "--answer-key", "m_answer"]) == 2
        err = capsys.readouterr().err
        assert f"unknown CompBench task '{bogus}'" in err and "cub" in err and "qbench2" in err
    assert main(["compbench", "score", "--results", str(f), "--task", "birds", "--answer-key", "m_answer"]) == 0


def test_missing_reply_key_never_suggests_the_ground_truth(tmp_path, capsys):
    f = _results(tmp_path)
    assert main(["compbench", "score", "--results", str(f), "--task", "cub", "--answer-key", "gpt_answer"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"look like replies: (.*?) \(", err).group(1).split(", ") == ["m_answer"]   # not `answer`


def test_score_out_round_trip(tmp_path):
    f = _results(tmp_path)
    out = tmp_path / "scored"
    assert main(["compbench", "score", "--results", str(f), "--task", "cub", "--answer-key", "m_answer",
                 "--out", str(out), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["cub"]["correct"] == 4 and summary["tasks"]["cub"]["n"] == 6
    assert summary["tasks"] == json.loads((tmp_path / "s.json").read_text())["tasks"]
    rows = [json.loads(l) for l in (out / "scored.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows].count("correct") == 4
    from traitlens.compbench.runner import summarize_rows

    back = summarize_rows([dict(r, dimension="attribute") for r in rows])   # the rows read back score the same
    assert back.tasks["cub"].accuracy == summary["tasks"]["cub"]["accuracy"]


def test_shared_options_exist(capsys):
    import pytest

    for cmd, opts in ((["compbench", "score"], ["--out", "--json"]),
                      (["compbench", "build"], ["--out", "--device", "--seed", "--json"]),
                      (["compbench", "run"], ["--out", "--device", "--seed", "--json"]),
                      (["compbench", "export-lmms-eval"], ["--out", "--json"])):
        with pytest.raises(SystemExit):
            main(cmd + ["--help"])
        text = capsys.readouterr().out
        for o in opts:
            assert o in text, (cmd, o)


def test_failure_page_shows_images_at_their_size(tmp_path):
    data = tmp_path / "bench"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 0, 0)).save(data / "img" / "a.png")
    Image.new("RGB", (900, 600), (0, 0, 200)).save(data / "img" / "b.png")
    (data / "img" / "c.png").write_bytes(b"")
    (data / "celeba.json").write_text(json.dumps([
        {"image_1": "img/a.png", "image_2": "img/b.png", "question": "Q?", "answer": "Right"}]))
    out = tmp_path / "run"
    assert main(["compbench", "run", "--data", str(data), "--model", "scripted:left", "--out", str(out)]) == 0
    html = (out / "failures.html").read_text()
    sizes = re.findall(r'<img src="data:image/png;base64,[^"]+" width="(\d+)" height="(\d+)"', html)
    assert ("64", "48") in sizes                                 # drawn at 64 px, not stretched
    assert ("256", "171") in sizes                               # large images capped at 256 px
    assert 'class="gallery"' not in html.split("Failure cases")[1]
