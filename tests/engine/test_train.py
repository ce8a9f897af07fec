"""train(): learning, val-based selection, checkpoints, exact resume, skipped images, class subsets."""

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from traitlens.data.folders import ImageFolderDataset
from traitlens.engine import train as train_mod
from traitlens.engine.checkpoint import save_checkpoint
from traitlens.engine.config import TrainConfig
from traitlens.engine.train import fit, lr_factor, seed_everything, set_train_mode
from traitlens.methods import build_model, evaluate_checkpoint, load_model, train
from traitlens.errors import UserError


def _config(data, out, **kw):
    base = dict(data=str(data), out=str(out), method="finetune", backbone="tiny-vit", image_size=32, epochs=4,
                batch_size=8, lr=3e-3, backbone_lr_scale=1.0, warmup_epochs=1, weight_decay=0.0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def finetuned(tiny_data, tmp_path_factory):
    """One fine-tuning run shared by the tests below; records which splits train() opened."""
    opened = []
    real_init = ImageFolderDataset.__init__

    def spy(self, root, split=None, *a, **kw):
        opened.append(split)
        real_init(self, root, split, *a, **kw)

    out = tmp_path_factory.mktemp("runs") / "ft"
    with mock.patch.object(ImageFolderDataset, "__init__", spy):
        result = train(_config(tiny_data, out), progress=False)
    return result, out, opened


def test_finetune_learns_and_selects_on_val_never_test(finetuned):
    result, out, opened = finetuned
    history = result["history"]
    assert len(history) == 4
    # 4 balanced classes: chance is 0.25. Measured: val top-1 1.0 from epoch 2 on.
    assert max(h["val_top1"] for h in history) >= 0.75
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.7
    assert "test" not in opened and set(opened) == {"train", "val"}
    best = max(history, key=lambda h: (h["val_top1"], -h["val_loss"]))
    assert result["best"]["epoch"] == best["epoch"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["selected_on"] == "val" and meta["epoch"] == best["epoch"] and meta["complete"] is True
    assert meta["metrics"]["val_top1"] == best["val_top1"]
    assert meta["class_names"] == ["alpha", "beta", "delta", "gamma"] and meta["num_classes"] == 4
    assert meta["backbone"]["name"] == "tiny-vit" and meta["method"] == "finetune"
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 5
    assert len((out / "log.jsonl").read_text().splitlines()) == 4
    assert (out / "config.yaml").is_file() and (out / "last" / "state.json").is_file()


def test_checkpoint_scores_the_same_when_reloaded(finetuned, tiny_data):
    result, out, _ = finetuned
    scored = evaluate_checkpoint(out, tiny_data, split="val", device="cpu", show_progress=False)
    assert scored["top1"] == pytest.approx(result["best"]["metrics"]["val_top1"])
    assert scored["loss"] == pytest.approx(result["best"]["metrics"]["val_loss"], abs=1e-5)
    test = evaluate_checkpoint(out / "model.json", tiny_data, split="test", device="cpu", show_progress=False)
    assert test["n"] == 16 and len(test["confusion"]) == 4 and test["top1"] >= 0.5


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(1)
    config = _config("d", "o", backbone="tiny-cnn")
    model, _ = build_model(config, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    save_checkpoint(tmp_path / "run", model, {"config": config, "class_names": ["a", "b", "c"], "epoch": 1})
    for path in (tmp_path / "run", tmp_path / "run" / "model.safetensors", tmp_path / "run" / "model.json"):
        loaded, meta = load_model(path)
        assert meta["class_names"] == ["a", "b", "c"] and meta["backbone"]["name"] == "tiny-cnn"
        assert torch.equal(loaded(x), expected)
    with pytest.raises(UserError, match="model.json not found"):
        (tmp_path / "run" / "model.json").unlink()
        load_model(tmp_path / "run")


def test_the_engine_loads_a_checkpoint_with_the_builder_it_is_given(tmp_path):
    from traitlens.engine import checkpoint

    config = _config("d", "o", backbone="tiny-cnn")
    model, _ = build_model(config, 3)
    save_checkpoint(tmp_path / "run", model, {"config": config, "class_names": ["a", "b", "c"], "epoch": 1})
    built = []

    def build(cfg, num_classes, load_weights=True):
        built.append((cfg.method, num_classes, load_weights))
        return build_model(cfg, num_classes, load_weights=load_weights)

    loaded, _ = checkpoint.load_model(tmp_path / "run", build=build)
    assert built == [("finetune", 3, False)] and loaded.traitlens_method == "finetune"
    with pytest.raises(RuntimeError, match="traitlens.methods.load_model"):
        checkpoint.load_model(tmp_path / "run")


def test_linear_probe_trains_only_the_head_and_keeps_the_backbone_in_eval_mode(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "lp", method="linear-probe", epochs=3, lr=1e-2)
    seed_everything(config.seed)  # as train() seeds before it builds
    model, groups = build_model(config, 4)
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for g in groups for p in g["params"]} == head
    set_train_mode(model)
    assert model.get_classifier().training and not model.blocks.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(config, model, groups, progress=False)  # the engine trains the model it is given
    after = load_file(str(tmp_path / "lp" / "last" / "state.safetensors"))
    changed = {k for k, v in before.items() if not torch.equal(v, after[f"model.{k}"])}
    assert changed == {"head.weight", "head.bias"}
    # Frozen random-init tiny ViT features: measured val top-1 0.56-0.75 over 3 epochs (chance 0.25).
    assert max(h["val_top1"] for h in result["history"]) >= 0.5


def test_lr_schedule_warmup_then_cosine():
    config = _config("d", "o", epochs=4, warmup_epochs=1, min_lr_ratio=0.0)
    factors = [lr_factor(s, 10, config) for s in range(40)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[39] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    step = _config("d", "o", scheduler="step", step_size=2, gamma=0.5, warmup_epochs=0)
    assert [lr_factor(s, 10, step) for s in (0, 19, 20, 39)] == [1.0, 1.0, 0.5, 0.5]


def test_resume_after_interruption_matches_uninterrupted_run(tiny_data, tmp_path):
    kw = dict(backbone="tiny-cnn", epochs=3, lr=1e-2, grad_clip=1.0, label_smoothing=0.1)
    full = train(_config(tiny_data, tmp_path / "full", **kw), progress=False)

    real = train_mod.lr_factor

    def interrupt(step, *a):
        if step == 9:  # mid epoch 3 (4 steps per epoch)
            raise KeyboardInterrupt
        return real(step, *a)

    config = _config(tiny_data, tmp_path / "cut", **kw)
    with mock.patch.object(train_mod, "lr_factor", interrupt), pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    assert json.loads((tmp_path / "cut" / "last" / "state.json").read_text())["epoch"] == 2
    resumed = train(config, progress=False, resume=True)

    a = load_file(str(tmp_path / "full" / "last" / "state.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    # A finished run resumes to the same result without training again.
    again = train(config, progress=False)
    assert strip(again["history"]) == strip(full["history"])


def test_resume_refuses_a_different_config(tiny_data, tmp_path):
    train(_config(tiny_data, tmp_path / "r", method="linear-probe", epochs=1), progress=False)
    with pytest.raises(UserError, match="different config.*lr"):
        train(_config(tiny_data, tmp_path / "r", method="linear-probe", epochs=2, lr=0.5), progress=False)
    with pytest.raises(UserError, match="nothing to resume"):
        train(_config(tiny_data, tmp_path / "empty", method="linear-probe"), progress=False, resume=True)


def test_bad_images_are_skipped_and_logged_and_class_subset_keeps_label_space(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "alpha" / "zz-broken.png").write_bytes(b"not a png at all")
    (data / "val" / "beta" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = _config(data, tmp_path / "run", method="linear-probe", epochs=2, classes=["alpha", "beta"])
    result = train(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert {(r["split"], Path(r["path"]).name) for r in rows} == {("train", "zz-broken.png"),
                                                                 ("val", "zz-broken.png")}
    assert result["skipped"] == 2 and result["history"][-1]["skipped"] == 2
    # 17 alpha+beta training files -> 2 batches of 8 per epoch; one of those may be the broken one.
    assert result["history"][0]["train_n"] in (15, 16)
    assert result["history"][0]["val_n"] == 8
    model, meta = load_model(tmp_path / "run")
    assert meta["num_classes"] == 4 and meta["trained_classes"] == ["alpha", "beta"]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_bf16_autocast_and_restart_clear_the_earlier_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = train(_config(tiny_data, out, method="linear-probe", epochs=2, amp="bf16"), progress=False)
    assert len(first["history"]) == 2 and all(h["train_loss"] == h["train_loss"] for h in first["history"])
    again = train(_config(tiny_data, out, method="linear-probe", epochs=1, lr=0.05), progress=False, resume=False)
    assert len(again["history"]) == 1
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "model.json").read_text())["config"]["lr"] == 0.05


def test_loader_workers_do_not_change_the_result(tiny_data, tmp_path):
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train(_config(tiny_data, out, method="linear-probe", epochs=1, num_workers=workers), progress=False)
        runs[workers] = load_file(str(out / "last" / "state.safetensors"))
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0] if k.startswith("model."))
