"""`traitlens finetune` then `traitlens calibrate --pretrained --finetuned --data` on a tiny collection."""

import json

import pytest
import torch

from traitlens.calibrate import apply_gamma
from traitlens.calibrate.finetuning import dataset_outputs, parse_classes
from traitlens.cli import main
from traitlens.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from traitlens.data.synthetic import SynthConfig, generate_collection
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import train

    root = tmp_path_factory.mktemp("calib")
    a = generate_collection(root / "A", SynthConfig(species=4, per_species=10, size=32, domain="A"), progress=False)
    b = generate_collection(root / "B", SynthConfig(species=4, per_species=10, size=32, domain="B"), progress=False)
    pre = root / "pre"
    train(TrainConfig(data=str(a), out=str(pre), method="finetune", backbone="tiny-cnn", epochs=2, batch_size=16,
                    lr=3e-3, device="cpu", image_size=32), progress=False)
    return {"root": root, "A": a, "B": b, "pre": pre}


def test_finetune_then_calibrate(runs, tmp_path, capsys):
    ft = tmp_path / "ft"
    js = tmp_path / "ft.json"
    assert main(["finetune", "--checkpoint", str(runs["pre"]), "--data", str(runs["B"]), "--classes", "2",
                 "--epochs", "1", "--batch-size", "8", "--out", str(ft), "--device", "cpu", "--json", str(js)]) == 0
    meta = json.loads((ft / "model.json").read_text())
    cfg = meta["config"]
    assert (cfg["optimizer"], cfg["nesterov"], cfg["momentum"], cfg["backbone_lr_scale"], cfg["weight_decay"],
            cfg["scheduler"]) == ("sgd", True, 0.9, 0.1, 5e-4, "cosine")
    assert len(meta["trained_classes"]) == 2 and meta["num_classes"] == 4
    assert json.loads(js.read_text())["seen_ids"] == [0, 1]

    out = tmp_path / "cal"
    res_path = tmp_path / "cal.json"
    assert main(["calibrate", "--pretrained", str(runs["pre"]), "--finetuned", str(ft), "--data", str(runs["B"]),
                 "--method", "all", "--pcv-epochs", "1", "--out", str(out), "--device", "cpu",
                 "--json", str(res_path)]) == 0
    res = json.loads(res_path.read_text())
    assert set(res["gamma"]) == {"alg", "pcv", "oracle"} and res["applied"] == "pcv"
    assert len(res["pcv_folds"]) == 2 and (out / "seen_unseen.png").is_file()
    for name in ("pre-trained", "fine-tuned", "alg", "pcv", "oracle", "NCM fine-tuned"):
        assert 0.0 <= res["tables"][name]["y/y"] <= 1.0
    assert res["tables"]["oracle"]["y/y"] >= max(res["tables"][m]["y/y"] for m in ("fine-tuned", "alg", "pcv"))

    # The calibrated checkpoint loads through the engine and gives the calibrated logits.
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform, open_split
    from traitlens.methods import load_model

    cal, cal_meta = load_model(out / "calibrated")
    tuned, tuned_meta = load_model(ft)
    assert cal_meta["method"] == "finetune" and cal_meta["calibration"]["gamma"] == pytest.approx(res["gamma"]["pcv"])
    ds = open_split(runs["B"], "test", eval_transform(tuned, config_from_meta(tuned_meta)), 0,
                    tuned_meta["class_names"])
    z_cal, _, y = dataset_outputs(cal, ds)
    z_ft, _, _ = dataset_outputs(tuned, ds)
    assert torch.allclose(z_cal, apply_gamma(z_ft, [0, 1], res["gamma"]["pcv"]), atol=1e-4)
    acc = float((z_cal.argmax(1) == y).double().mean())
    assert acc == pytest.approx(res["tables"]["pcv"]["y/y"])


def test_finetune_user_errors(runs, tmp_path, capsys):
    assert main(["finetune", "--checkpoint", str(runs["pre"]), "--data", str(runs["B"]), "--classes", "4",
                 "--out", str(tmp_path / "x")]) == 2
    assert "some must stay absent" in capsys.readouterr().err
    with pytest.raises(UserError):
        parse_classes(str(tmp_path / "missing.txt"), ["a", "b", "c"])
    f = tmp_path / "cls.txt"
    f.write_text("# seen\nb\n2\n")
    assert parse_classes(str(f), ["a", "b", "c", "d"]) == ["b", "c"]
    assert main(["calibrate", "--pretrained", str(runs["pre"]), "--data", str(runs["B"])]) == 2
    assert "--finetuned" in capsys.readouterr().err
    # a model trained on all its classes has nothing absent
    assert main(["calibrate", "--pretrained", str(runs["pre"]), "--finetuned", str(runs["pre"]),
                 "--data", str(runs["B"]), "--out", str(tmp_path / "c")]) == 2
