"""`traitlens traits` through the runner: resumable, one record and one set of maps per image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from traitlens.cli import main


@pytest.fixture(scope="module")
def prompt_cam(tmp_path_factory):
    """An untrained tiny Prompt-CAM checkpoint of three classes."""
    from traitlens.engine.checkpoint import save_checkpoint
    from traitlens.engine.config import load_config
    from traitlens.methods import build_model

    torch.manual_seed(0)
    config = load_config(None, method="prompt-cam", backbone="tiny-vit", image_size=32, device="cpu")
    model, _ = build_model(config, 3)
    return save_checkpoint(tmp_path_factory.mktemp("pcam"), model.eval(),
                           {"config": config, "class_names": ["a", "b", "c"]})


def test_traits_resumes_and_keeps_one_record_per_image(tmp_path, prompt_cam, make_images):
    make_images(tmp_path / "c" / "x", 3)
    make_images(tmp_path / "c" / "y", 2, seed=5, ext=".jpg")
    out = tmp_path / "out"
    args = ["traits", "--checkpoint", str(prompt_cam), "--images", str(tmp_path / "c"), "--top-heads", "2",
            "--batch-size", "2", "--out", str(out), "--device", "cpu", "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["x/img000.png", "x/img001.png", "x/img002.png",
                                             "y/img000.jpg", "y/img001.jpg"]
    for r in rows:
        maps = np.load(out / r["maps"])
        assert maps.ndim == 3 and maps.shape[0] == len(r["ranked_heads"]) and np.isfinite(maps).all()
        assert len(r["overlays"]) == 2 and all((out / o).is_file() for o in r["overlays"])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == 5 and sum(summary["top_head_counts"]) == 5
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # as if stopped there
    assert main(args) == 0
    again = json.loads((tmp_path / "s.json").read_text())
    assert again["done"] == 3 and again["resumed"] == 2 and again["images"] == 5
    assert len((out / "results.jsonl").read_text().splitlines()) == 5
    assert (out / "index.html").read_text().count("<img") == 5 * 3


def test_traits_warns_when_the_model_is_at_chance_and_lists_skipped_files(tmp_path, prompt_cam, make_images,
                                                                          capsys):
    make_images(tmp_path / "c", 3)
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["traits", "--checkpoint", str(prompt_cam), "--images", str(tmp_path / "c"), "--top-heads", "2",
                 "--out", str(out), "--device", "cpu", "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mean_top = np.mean([r["top_probability"] for r in rows])
    assert mean_top < 1.5 / 3  # the untrained model: near 1/3 on 3 classes
    assert any("at chance" in w for w in summary["warnings"]) and "warning: the model is at chance" in printed
    assert summary["skipped"] == 1 and "skipped.jsonl" in printed
    html = (out / "index.html").read_text()
    assert "Warning: the model is at chance" in html and "broken.png" in html
    from traitlens.runs.traits_job import trust_warnings

    trained = [{"top_probability": 0.9, "num_classes": 3, "blur_effect": 0.3}] * 4
    assert trust_warnings(trained) == []
    still = [{"top_probability": 0.9, "num_classes": 3, "blur_effect": 0.001}] * 4
    assert ["changes the class probability by less than" in w for w in trust_warnings(still)] == [True]


def test_explain_on_a_prompt_cam_run_points_to_traits(tmp_path, prompt_cam, make_images, capsys):
    make_images(tmp_path / "c", 1)
    assert main(["explain", "--checkpoint", str(prompt_cam), "--images", str(tmp_path / "c"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a Prompt-CAM run" in err[0] and "traitlens traits --checkpoint" in err[0]
    assert not (tmp_path / "out" / "results.jsonl").exists()
