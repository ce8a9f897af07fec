"""Benchmark files are not trusted (issue 16): paths out of the data folder, bad images, task names that
inject YAML, broken JSON lines and binary files. Each probe is refused or skipped with a clear line."""

import base64
import json
import os

import pytest
import yaml
from PIL import Image

from traitlens.cli import main
from traitlens.compbench.records import find_invalid_records, load_records, locate_image


def _png(path, colour, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def bench(tmp_path):
    """A benchmark folder whose records reach outside it (absolute, ``..``, a link) or name bad images."""
    data = tmp_path / "bench"
    _png(data / "img" / "a.png", (200, 30, 30))
    _png(data / "img" / "b.png", (30, 30, 200))
    secret = tmp_path / "private" / "secret.png"
    _png(secret, (1, 2, 3), size=(7, 5))
    os.symlink(secret, data / "img" / "link.png")
    (data / "img" / "empty.png").write_bytes(b"")
    (data / "img" / "text.png").write_text("this is not an image\n")
    full = (data / "img" / "a.png").read_bytes()
    (data / "img" / "cut.png").write_bytes(full[: len(full) // 2])
    recs = {"good": ("img/a.png", "img/b.png"), "absolute": (str(secret), "img/b.png"),
            "dotdot": ("../private/secret.png", "img/b.png"), "windows_dotdot": ("img\\..\\..\\private\\secret.png", "img/b.png"),
            "link": ("img/link.png", "img/b.png"), "empty": ("img/empty.png", "img/b.png"),
            "text": ("img/a.png", "img/text.png"), "cut": ("img/cut.png", "img/b.png")}
    (data / "celeba.json").write_text(json.dumps([
        {"id": k, "image_1": a, "image_2": b, "question": "Which one smiles more?", "answer": "Left"}
        for k, (a, b) in recs.items()]))
    return data, secret


def test_paths_stay_inside_the_data_folder(bench):
    data, secret = bench
    assert locate_image(data, "img/a.png") == (data / "img" / "a.png", None)
    for stored in (str(secret), "../private/secret.png", "img\\..\\..\\private\\secret.png", "C:\\x\\y.png",
                   "img/link.png"):
        path, why = locate_image(data, stored)
        assert path is None and why != "missing", stored
    records, _ = load_records(data / "celeba.json")
    invalid = find_invalid_records(records, data)
    assert sorted(invalid) == ["absolute", "dotdot", "link", "windows_dotdot"]
    assert "absolute" in invalid["absolute"] and "'..'" in invalid["dotdot"] and "link" in invalid["link"]


def test_run_skips_outside_paths_and_bad_images(bench, tmp_path):
    data, secret = bench
    out = tmp_path / "run"
    assert main(["compbench", "run", "--data", str(data), "--model", "scripted:left", "--out", str(out),
                 "--json", str(tmp_path / "s.json")]) == 0
    invalid = json.loads((out / "invalid_records.json").read_text())
    assert sorted(invalid) == ["absolute", "cut", "dotdot", "empty", "link", "text", "windows_dotdot"]
    assert all(invalid[k].startswith("bad image") for k in ("cut", "empty", "text"))
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["good"]                 # nothing else was answered or scored
    assert json.loads((tmp_path / "s.json").read_text())["invalid_records"] == 7
    html = (out / "failures.html").read_text()
    secret_b64 = base64.b64encode(secret.read_bytes()).decode()[:40]
    for f in out.iterdir():
        assert secret_b64.encode() not in f.read_bytes(), f     # the outside file is in no output


def test_openai_payload_refuses_bad_images_and_sends_the_real_format(bench):
    from traitlens.compbench.answerers.openai_http import image_data_url
    from traitlens.errors import BadImageError

    data, _ = bench
    for name in ("empty.png", "text.png", "cut.png"):
        with pytest.raises(BadImageError):
            image_data_url(data / "img" / name)
    Image.new("RGB", (8, 8)).save(data / "img" / "really.png", format="JPEG")   # a JPEG named .png
    assert image_data_url(data / "img" / "really.png").startswith("data:image/jpeg;base64,")


def test_export_leaves_out_bad_records_and_names_cannot_inject_yaml(bench, tmp_path):
    data, secret = bench
    evil = "evil\nfilter_list: !function evil.run"
    (data / "custom.json").write_text(json.dumps([
        {"task": evil, "dimension": "attribute", "image_1": "img/a.png", "image_2": "img/b.png",
         "question": "Q?", "answer": "Left"},
        {"task": "my_task", "dimension": "attribute", "image_1": "img/a.png", "image_2": "img/b.png",
         "question": "Q?", "answer": "Right"}]))
    out = tmp_path / "lmms: x"                                  # a colon in the path stays one YAML scalar
    assert main(["compbench", "export-lmms-eval", "--data", str(data), "--out", str(out)]) == 0

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    group = yaml.load((out / "compbench.yaml").read_text(), Loader=Loader)
    assert sorted(group["task"]) == ["compbench_celeba", "compbench_my_task"]
    for name in group["task"]:
        cfg = yaml.load((out / f"{name}.yaml").read_text(), Loader=Loader)
        assert "filter_list" not in cfg and cfg["task"] == name
        assert cfg["doc_to_text"] == ("function", "utils.compbench_doc_to_text")
        assert cfg["dataset_kwargs"]["data_files"]["test"] == str((out / f"{name}.jsonl").resolve())
    docs = [json.loads(l) for l in (out / "compbench_celeba.jsonl").read_text().splitlines()]
    assert [d["id"] for d in docs] == ["good"]                  # outside paths and bad images left out
    assert str(secret) not in (out / "compbench_celeba.jsonl").read_text()


def test_build_refuses_paths_outside_the_collection(tmp_path):
    data = tmp_path / "coll"
    for i in range(4):
        _png(data / f"{i}.png", (60 * i, 40, 40))
    _png(tmp_path / "outside.png", (9, 9, 9))
    (data / "broken.png").write_bytes(b"\x89PNG\r\n")
    rows = [{"path": f"{i}.png", "class": "../../escape", "attributes": {"spots": i}} for i in range(4)]
    rows += [{"path": "../outside.png", "class": "c", "attributes": {"spots": 9}},
             {"path": str(tmp_path / "outside.png"), "class": "c", "attributes": {"spots": 9}},
             {"path": "broken.png", "class": "c", "attributes": {"spots": 1}},
             {"class": "c", "attributes": {"spots": 2}}, {"path": "0.png", "class": "c", "attributes": 5}, 7]
    (tmp_path / "attrs.json").write_text(json.dumps({"images": rows}))
    out = tmp_path / "built"
    assert main(["compbench", "build", "--data", str(data), "--attributes", str(tmp_path / "attrs.json"),
                 "--out", str(out), "--task", "spots", "--seed", "1", "--device", "cpu",
                 "--json", str(tmp_path / "b.json")]) == 0
    info = json.loads((tmp_path / "b.json").read_text())
    assert len(info["skipped_images"]) == 6  # two outside paths, one broken image, three malformed entries
    assert info["seed"] == 1
    copied = [p for p in out.rglob("*.png")]
    assert copied and all(out.resolve() in p.resolve().parents for p in copied)   # nothing written outside OUT
    assert not (tmp_path / "escape").exists()
    recs = json.loads((out / "spots.json").read_text())
    assert all("outside" not in r["image_1"] + r["image_2"] for r in recs)
    assert main(["compbench", "build", "--data", str(data), "--attributes", str(tmp_path / "attrs.json"),
                 "--out", str(out), "--task", "bad\nname"]) == 2


def test_score_skips_and_names_bad_lines(tmp_path, capsys):
    good = {"image_1": "a.png", "image_2": "b.png", "question": "Q", "answer": "Left", "m_answer": "Left"}
    lines = [json.dumps(good), json.dumps(dict(good, question="Q2", m_answer="Right")), "{not json",
             "", json.dumps(dict(good, question="Q3"))]
    f = tmp_path / "cub.jsonl"
    f.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe binary tail\n")
    assert main(["compbench", "score", "--results", str(f), "--task", "cub", "--answer-key", "m_answer",
                 "--json", str(tmp_path / "s.json")]) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["tasks"]["cub"]["n"] == 3 and got["tasks"]["cub"]["correct"] == 2
    assert got["skipped_bad_lines"] == 2
    assert got["bad_lines"] == [f"{f}:3: not JSON (Expecting property name enclosed in double quotes)",
                                f"{f}:6: not UTF-8 text"]
    # a binary file is one clear line, not "unexpected error: UnicodeDecodeError"
    binary = tmp_path / "cub.json"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["compbench", "score", "--results", str(binary), "--task", "cub", "--answer-key", "m"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "unexpected" not in err
    binl = tmp_path / "x.jsonl"
    binl.write_bytes(bytes(range(256)) * 4)
    assert main(["compbench", "score", "--results", str(binl), "--task", "cub", "--answer-key", "m"]) == 2
    err = capsys.readouterr().err
    assert "holds no records" in err and "unreadable line" in err and "unexpected" not in err


@pytest.mark.parametrize("task, good, bad, named", [
    ("magicbrush", {"path_input": "a.png", "path_output": "b.png", "Modified_option": "hat, dog", "Answeer": "dog"},
     {"path_input": "a.png", "Modified_option": "hat, dog", "Answeer": "dog"}, "'path_output'"),
    ("magicbrush", {"path_input": "a.png", "path_output": "b.png", "Modified_option": "hat, dog", "Answeer": "dog"},
     {"path_input": "a.png", "path_output": "b.png", "Modified_option": 7, "Answeer": "dog"}, "'Modified_option'"),
    ("spot_diff", {"image_1": "a.png", "image_2": "b.png", "options": "car, person", "answer": "car"},
     {"image_1": "a.png", "image_2": "b.png", "options": {"car": 1}, "answer": "car"}, "'options'"),
    ("soccernet", {"left": "a.png", "right": "b.png", "action": "Goal", "answer": "Left"},
     {"left": "a.png", "action": "Goal", "answer": "Left"}, "'right'"),
    ("cub", {"image_1": "a.png", "image_2": "b.png", "question": "Q", "answer": "Left"},
     {"image_1": "a.png", "question": "Q", "answer": "Left"}, "'image_2'"),
    ("cub", {"image_1": "a.png", "image_2": "b.png", "question": "Q", "answer": "Left"},
     {"image_1": ["a.png"], "image_2": "b.png", "question": "Q", "answer": "Left"}, "'image_1'"),
    ("cub", {"image_1": "a.png", "image_2": "b.png", "question": "Q", "answer": "Left"},
     {"question": "Q", "answer": "Left"}, "no image"),
])
def test_a_malformed_record_is_named_and_skipped(tmp_path, task, good, bad, named):
    """One record missing the second image of its pair, or with options that are a number, is listed in
    the load report's invalid records; the records around it load."""
    f = tmp_path / f"{task}.json"
    f.write_text(json.dumps([good, bad, dict(good, id="last")]))
    records, report = load_records(f)
    assert len(records) == 2 and records[1].id == "last"
    assert len(report.invalid) == 1 and report.invalid[0].startswith(f"{f} record 2: "), report.invalid
    assert named in report.invalid[0], report.invalid
    assert report.bad_answer == 0 and "1 invalid record(s) skipped" in report.summary()
