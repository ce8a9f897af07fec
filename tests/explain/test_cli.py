"""`traitlens explain` and `traitlens evaluate-explanations` end to end on a tiny collection and checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from traitlens.cli import main


def test_explain_writes_overlays_results_maps_and_gallery_and_resumes(collection, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    images = collection / "test"
    argv = ["explain", "--checkpoint", str(checkpoint), "--images", str(images), "--method", "finer-gradcam",
            "--alpha", "0.5,1", "--out", str(out), "--save-maps", "--batch-size", "4", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    n = len(list(images.rglob("*.png")))
    assert len(rows) == n and len({r["id"] for r in rows}) == n
    r = rows[0]
    assert r["alpha"] == [0.0, 0.5, 1.0] and len(r["references"]) == 3 and len(r["scores"]) == 3
    assert r["scores"][0] == pytest.approx(r["scores"][0])  # finite
    assert (out / r["overlay"]).exists()
    maps = np.load(out / "maps.npz")
    assert set(maps.files) == {row["id"] for row in rows} and maps[r["id"]].shape == (3, 4, 4)
    html = (out / "index.html").read_text()
    assert "data:image/png;base64" in html and r["prediction"] in html
    # resumable: a second run explains nothing new
    capsys.readouterr()
    assert main(argv) == 0
    assert "explained 0 images" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == n


def test_explain_compares_with_named_classes_and_rejects_unknown(collection, checkpoint, tmp_path):
    from traitlens.data.traits import load_traits

    names = load_traits(collection).class_names
    out = tmp_path / "cmp"
    img = next((collection / "test" / names[0]).glob("*.png"))
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(img), "--compare", names[1],
                 "--target", names[0], "--out", str(out)]) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert row["target"] == names[0] and [x["class"] for x in row["references"]] == [names[1]]
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(img), "--compare", "nope",
                 "--out", str(tmp_path / "bad")]) == 2


def test_evaluate_explanations_writes_table_and_plot(collection, checkpoint, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate-explanations", "--checkpoint", str(checkpoint), "--data", str(collection),
                 "--methods", "gradcam,finer-gradcam", "--steps", "4", "--out", str(out), "--no-only-correct",
                 "--json", str(tmp_path / "t.json")]) == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert [r["method"] for r in table["table"]] == ["gradcam", "finer-gradcam"]
    assert set(table["metrics"]) == {"drop", "contrastive_drop", "pair_drop", "deletion", "insertion", "pointing", "energy",
                                     "diagnostic_energy", "diagnostic_lift", "diagnostic_fraction",
                                     "diagnostic_density"}
    # the defaults: explain the prediction against its siblings; at 32 px no CNN stage reaches 14×14, so the
    # layout's layer stays
    assert table["target"] == "predicted" and table["references"] == "taxonomy" and table["layer"] == "layer4"
    assert table["summary"]["gradcam"]["drop"]["n"] == 6 == table["counts"]["images"]  # one test image per species
    assert 1 <= table["summary"]["gradcam"]["energy"]["n"] <= 6  # NaN for an all-zero map
    assert (out / "metrics.png").stat().st_size > 1000 and (out / "table.md").exists()
    # by default only the correctly classified images are scored (this random model gets few right)
    assert main(["evaluate-explanations", "--checkpoint", str(checkpoint), "--data", str(collection),
                 "--metrics", "drop", "--out", str(tmp_path / "eval2"), "--json", str(tmp_path / "t2.json")]) in (0, 2)
    if (tmp_path / "t2.json").exists():
        t2 = json.loads((tmp_path / "t2.json").read_text())
        assert t2["counts"]["scored"] == t2["counts"]["correct"] < 6


def test_runner_shards_share_one_folder(collection, checkpoint, tmp_path, monkeypatch):
    """Two ranks of a torchrun job split the images and append to the same results.jsonl."""
    from traitlens.engine import distributed
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.methods import load_model
    from traitlens.engine.train import eval_transform
    from traitlens.runs import discover
    from traitlens.runs.explain_job import explain_images

    model, meta = load_model(checkpoint)
    transform = eval_transform(model, config_from_meta(meta))
    items = discover([collection / "test"])
    assert len(items) == len(list((collection / "test").rglob("*.png")))
    out = tmp_path / "shared"
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    counts = []
    for r in (1, 0):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        counts.append(explain_images(model, items, transform, out, meta["class_names"], alphas=[1.0],
                                     batch_size=2, save_maps=True)["explained"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(counts) == [len(items) // 2, len(items) - len(items) // 2]
    assert len(rows) == len(items) == len({r["id"] for r in rows})
    assert (out / "index.html").exists() and len(np.load(out / "maps.npz").files) == len(items)


@pytest.mark.parametrize("alpha", ["nan", "inf", "0.5,-inf"])
def test_explain_refuses_non_finite_alpha_in_one_line(collection, checkpoint, tmp_path, capsys, alpha):
    img = next((collection / "test").rglob("*.png"))
    out = tmp_path / "bad"
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(img), f"--alpha={alpha}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alpha must be" in err[0]
    assert not (out / "results.jsonl").exists() or "NaN" not in (out / "results.jsonl").read_text()
