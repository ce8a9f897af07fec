"""lmms-eval export: the YAML parses (with its !function tags) and utils.py scores like traitlens."""

import importlib.util
import json
import sys

import yaml
from PIL import Image

from traitlens.cli import main


def test_export_lmms_eval(tmp_path, monkeypatch):
    data = tmp_path / "bench"
    (data / "img").mkdir(parents=True)
    for n in ("1.png", "2.png"):
        Image.new("RGB", (12, 8), (0, 90, 0)).save(data / "img" / n)
    (data / "vqav2.json").write_text(json.dumps([
        {"image_1": "img/1.png", "image_2": "img/2.png", "question": "Which has more?", "answer": "Same"},
        {"image_1": "img/1.png", "image_2": "img/2.png", "question": "Which has more?", "answer": "Left"}]))
    (data / "mb.json").write_text(json.dumps([
        {"path_input": "img/1.png", "path_output": "img/2.png", "Modified_option": "hat, dog", "Answeer": "dog"}]))
    out = tmp_path / "lmms"
    assert main(["compbench", "export-lmms-eval", "--data", str(data), "--out", str(out)]) == 0

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    group = yaml.load((out / "compbench.yaml").read_text(), Loader=Loader)
    assert sorted(group["task"]) == ["compbench_magicbrush", "compbench_vqav2"]
    cfg = yaml.load((out / "compbench_vqav2.yaml").read_text(), Loader=Loader)
    assert cfg["output_type"] == "generate_until" and cfg["generation_kwargs"]["max_new_tokens"] == 128
    assert cfg["process_results"] == ("function", "utils.compbench_process_results")

    spec = importlib.util.spec_from_file_location("cb_lmms_utils", out / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = [json.loads(l) for l in (out / "compbench_vqav2.jsonl").read_text().splitlines()]
    docs += [json.loads(l) for l in (out / "compbench_magicbrush.jsonl").read_text().splitlines()]
    assert len(docs) == 3
    assert [im.size for im in utils.compbench_doc_to_visual(docs[0])] == [(12, 8), (12, 8)]
    assert "Same" in utils.compbench_doc_to_text(docs[0])
    assert "Options: None, hat, dog" in utils.compbench_doc_to_text(docs[2])
    assert utils.compbench_process_results(docs[0], ["Same."]) == {"accuracy": 1.0, "not_understood": 0.0}
    assert utils.compbench_process_results(docs[1], ["Right"]) == {"accuracy": 0.0, "not_understood": 0.0}
    assert utils.compbench_process_results(docs[1], ["Left and Right"]) == {"accuracy": 0.0, "not_understood": 1.0}
    assert utils.compbench_process_results(docs[2], [" Dog"]) == {"accuracy": 1.0, "not_understood": 0.0}


def test_export_keeps_a_custom_tasks_wording(tmp_path):
    """A custom task worded First/Second is rebuilt by utils.py with that wording, not Left/Right."""
    data = tmp_path / "bench"
    (data / "img").mkdir(parents=True)
    for n in ("1.png", "2.png"):
        Image.new("RGB", (12, 8), (0, 90, 0)).save(data / "img" / n)
    (data / "beaks.json").write_text(json.dumps([
        {"task": "beaks", "dimension": "attribute", "wording": "first_second", "same_allowed": True,
         "image_1": "img/1.png", "image_2": "img/2.png", "question": "Which beak is longer?", "answer": "Left"}]))
    out = tmp_path / "lmms"
    assert main(["compbench", "export-lmms-eval", "--data", str(data), "--out", str(out)]) == 0

    spec = importlib.util.spec_from_file_location("cb_lmms_utils_wording", out / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = json.loads((out / "compbench_beaks.jsonl").read_text())
    rebuilt = utils._spec(doc)
    assert (rebuilt.wording, rebuilt.sides, rebuilt.same_allowed) == ("first_second", ("First", "Second"), True)
    assert rebuilt.prompt(doc["question"]) == doc["prompt"]                # what lmms-eval asks is what it scores
    assert utils.compbench_process_results(doc, ["First"]) == {"accuracy": 1.0, "not_understood": 0.0}
