"""Bad numbers and bad checkpoints: each probe of the hardening issue, reproduced, now one clear line."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from traitlens.cli import main
from traitlens.engine.checkpoint import save_checkpoint
from traitlens.engine.config import TrainConfig, load_config
from traitlens.engine.train import fit
from traitlens.errors import UserError
from traitlens.methods import build_model, load_model, train


def _config(data, out, **kw):
    base = dict(data=str(data), out=str(out), method="finetune", backbone="tiny-vit", image_size=32, epochs=3,
                batch_size=8, lr=3e-3, backbone_lr_scale=1.0, warmup_epochs=0, weight_decay=0.0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("override,field", [("lr=inf", "lr"), ("lr=nan", "lr"), ("weight_decay=-.inf", "weight_decay"),
                                            ("grad_clip=.nan", "grad_clip"), ("method_options.query_noise=.inf",
                                                                              "method_options.query_noise")])
def test_non_finite_numbers_are_refused_at_the_config_layer(override, field):
    with pytest.raises(UserError, match=f"{field} must be a finite number"):
        load_config(None, [override])


def test_lr_inf_from_the_command_line_is_one_line_and_trains_nothing(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--lr", "inf"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "lr must be a finite number" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_nan_loss_stops_the_run_naming_epoch_and_step_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "run")
    torch.manual_seed(0)
    model, groups = build_model(config, 4)
    calls = {"n": 0}

    def poison(module, inputs, output):  # from the 6th training step on (epoch 2, 4 steps an epoch), NaN logits
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 6:
                return output * float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(UserError, match=r"loss became nan at epoch 2, step 6; the best checkpoint .* is kept"):
        fit(config, model, groups, progress=False)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["epoch"] == 1  # epoch 1's checkpoint, never replaced
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert json.loads((tmp_path / "run" / "last" / "state.json").read_text())["epoch"] == 1


@pytest.fixture()
def checkpoint_run(tmp_path):
    config = _config("d", "o", backbone="tiny-cnn")
    torch.manual_seed(0)
    model, _ = build_model(config, 3)
    return save_checkpoint(tmp_path / "run", model, {"config": config, "class_names": ["a", "b", "c"], "epoch": 1})


def test_class_names_shorter_than_the_head_is_one_clear_line(checkpoint_run):
    meta = json.loads((checkpoint_run / "model.json").read_text())
    meta["class_names"] = ["a", "b"]
    (checkpoint_run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="lists 2 class names for a head of 3 outputs"):
        load_model(checkpoint_run)


def test_nan_weights_in_a_checkpoint_are_refused_naming_the_tensor(checkpoint_run):
    state = load_file(str(checkpoint_run / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[1]
    state[name] = state[name].clone().fill_(float("inf"))
    save_file(state, str(checkpoint_run / "model.safetensors"))
    with pytest.raises(UserError, match=f"inf values \\(first in tensor '{name}'\\)"):
        load_model(checkpoint_run)


def test_a_checkpoint_whose_safetensors_header_lies_is_one_clear_line(checkpoint_run):
    header = json.dumps({"conv1.weight": {"dtype": "F32", "shape": [64, 3, 7, 7], "data_offsets": [0, 37632]}})
    (checkpoint_run / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)
    with pytest.raises(UserError, match="cannot read .*model.safetensors as safetensors") as info:
        load_model(checkpoint_run)
    assert "\n" not in str(info.value)


def test_a_sidecar_cannot_make_timm_load_a_file(checkpoint_run, tmp_path, monkeypatch):
    evil = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1)}, evil)
    meta = json.loads((checkpoint_run / "model.json").read_text())
    meta["config"]["backbone_options"] = {"checkpoint_path": str(evil)}
    (checkpoint_run / "model.json").write_text(json.dumps(meta))
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load reached")))
    with pytest.raises(UserError, match="checkpoint_path is not passed to timm"):
        load_model(checkpoint_run)


def test_weights_are_strict_unless_partial_is_allowed_and_the_load_is_recorded(tiny_data, tmp_path, capsys,
                                                                               monkeypatch):
    from traitlens.backbones import create

    monkeypatch.setenv("TRAITLENS_QUIET", "0")
    torch.manual_seed(1)
    source = create("tiny-vit", num_classes=4).state_dict()
    save_file(source, str(tmp_path / "full.safetensors"))
    partial = {k: v for k, v in source.items() if k != "blocks.0.norm1.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    one = dict(epochs=1, method="linear-probe")
    with pytest.raises(UserError, match="1 model tensor\\(s\\) not in the file .*--allow-partial"):
        train(_config(tiny_data, tmp_path / "a", weights=str(tmp_path / "partial.safetensors"), **one), progress=False)
    train(_config(tiny_data, tmp_path / "b", weights=str(tmp_path / "partial.safetensors"), allow_partial=True, **one),
          progress=True)
    assert "PARTIAL" in capsys.readouterr().err  # printed when training starts
    record = json.loads((tmp_path / "b" / "model.json").read_text())["initial_weights"]
    assert record["partial"] and "blocks.0.norm1.weight" in record["missing"]
    train(_config(tiny_data, tmp_path / "c", weights=str(tmp_path / "full.safetensors"), **one), progress=False)
    record = json.loads((tmp_path / "c" / "model.json").read_text())["initial_weights"]
    assert not record["partial"] and record["matched"] == record["total"] == len(source)


def _float_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _float_actions(sub)
        elif action.type is float:
            yield action


def test_every_float_option_of_every_command_refuses_nan_and_inf(capsys):
    import argparse

    from traitlens.cli import build_parser, non_finite_option

    parser = build_parser()
    floats = list(_float_actions(parser))
    assert len(floats) >= 5  # lr, topk, alpha, timeout, ... across train, explain, calibrate, compbench
    for action in floats:
        ns = argparse.Namespace(**{action.dest: float("inf")})
        assert non_finite_option(ns, parser, []) == f"--{action.dest.replace('_', '-')}"
    assert main(["train", "--lr", "nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "traitlens: error: --lr must be a finite number (not NaN or infinity)"
    finite = parser.parse_args(["train", "--lr", "0.01"])
    assert non_finite_option(finite, parser, ["train", "--lr", "0.01"]) is None
