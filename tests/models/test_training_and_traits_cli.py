"""Prompt-CAM and INTR through the engine (build hooks, checkpoints) and the `traitlens traits` command."""

import json
import os

import numpy as np
import pytest
import torch

from traitlens.cli import main
from traitlens.data.synthetic import SynthConfig, generate_collection
from traitlens.engine.config import load_config
from traitlens.engine.train import seed_everything
from traitlens.methods import build_model, load_model, train
from traitlens.errors import UserError
from traitlens.models import INTR, PromptCAM

os.environ.setdefault("TRAITLENS_QUIET", "1")

TINY_INTR = {"d_model": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
             "dim_feedforward": 64, "dropout": 0.0}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    return generate_collection(root, SynthConfig(species=3, per_species=5, size=32, seed=0), progress=False)


def test_build_hooks_and_options():
    cfg = load_config(None, method="prompt-cam", backbone="tiny-vit", method_options={"mode": "shallow"})
    model, groups = build_model(cfg, 5)
    assert isinstance(model, PromptCAM) and model.mode == "shallow"
    assert model.traitlens_method == "prompt-cam"
    trained = sum(p.numel() for g in groups for p in g["params"])
    assert trained == model.num_trainable() == 5 * 128 + 129
    cfg = load_config(None, method="prompt-cam", backbone="tiny-vit", method_options={"normalization": "inception"})
    model, _ = build_model(cfg, 5)
    from traitlens.backbones import data_config

    assert data_config(model)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(UserError, match="unknown method option"):
        build_model(load_config(None, method="prompt-cam", method_options={"depth": 3}), 5)

    cfg = load_config(None, method="intr", backbone="tiny-cnn", lr=1e-3, backbone_lr_scale=0.1,
                      method_options={**TINY_INTR, "freeze_batchnorm": True})
    model, groups = build_model(cfg, 4)
    assert isinstance(model, INTR)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "transformer": pytest.approx(1e-3)}
    n_groups = sum(p.numel() for g in groups for p in g["params"])
    assert n_groups == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)


@pytest.mark.parametrize("method,backbone,options", [
    ("prompt-cam", "tiny-vit", {}),
    ("intr", "tiny-cnn", TINY_INTR),
])
def test_train_checkpoint_and_traits_cli(collection, tmp_path, method, backbone, options):
    run = tmp_path / "run"
    cfg = load_config(None, method=method, backbone=backbone, data=str(collection), out=str(run), epochs=1,
                      batch_size=8, optimizer="sgd" if method == "prompt-cam" else "adamw", lr=1e-2,
                      device="cpu", amp="off", method_options=options)
    result = train(cfg, progress=False)
    assert result["best"] is not None
    model, meta = load_model(run)
    assert meta["method"] == method and len(meta["class_names"]) == 3

    if method == "prompt-cam":  # the frozen backbone is saved as it was built (no drift while training)
        seed_everything(cfg.seed)  # as train() does before building
        fresh, _ = build_model(cfg, 3)
        for k, v in fresh.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[k], v), k

    # the trait scores the demo and the accuracy tests use: well-formed on a barely trained model
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.data.traits import load_traits
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform
    from traitlens.models.trait_scores import score_dataset

    test_set = ImageFolderDataset(collection, "test", transform=eval_transform(model, config_from_meta(meta)))
    scores = score_dataset(model, test_set, load_traits(collection), meta["class_names"], top_k=2)
    assert scores["n"] == len(test_set) and 0 <= scores["top1"] <= 1
    assert scores["trait_ratio"] > 0 and -1 <= scores["drop_top"] <= 1 and -1 <= scores["drop_random"] <= 1
    assert [r["species"] for r in scores["per_species"]] == meta["class_names"]

    out = tmp_path / "traits"
    images = collection / "test"
    name = meta["class_names"][1]
    code = main(["traits", "--checkpoint", str(run), "--images", str(images), "--class", name,
                 "--top-heads", "2", "--out", str(out), "--device", "cpu", "--json", str(tmp_path / "s.json")])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    n = len(list(images.rglob("*.png")))
    assert len(rows) == n
    heads = model.num_heads
    for row in rows:
        assert row["class"] == name
        assert sorted(row["ranked_heads"]) == list(range(heads))
        assert 2 <= row["num_kept"] <= heads and row["kept_heads"] == row["ranked_heads"][:row["num_kept"]]
        maps = np.load(out / row["maps"])
        assert maps.shape == (heads, 8, 8) and np.isfinite(maps).all()
        assert len(row["overlays"]) == 2 and all((out / o).is_file() for o in row["overlays"])
    assert (out / "index.html").read_text().count("<img") >= n * 3
    assert json.loads((tmp_path / "s.json").read_text())["images"] == n

    assert main(["traits", "--checkpoint", str(run), "--images", str(images), "--class", "auto",
                 "--out", str(tmp_path / "auto"), "--device", "cpu"]) == 0
    assert main(["traits", "--checkpoint", str(run), "--images", str(images), "--class", "Nonesuch",
                 "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2
