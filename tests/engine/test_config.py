from pathlib import Path

import pytest

from traitlens.engine.config import TrainConfig, load_config, parse_override, presets, save_config
from traitlens.errors import UserError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = TrainConfig(data="d", out="o")
    assert cfg.method == "linear-probe" and cfg.val_split == "val" and cfg.classes is None
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_yaml_then_values_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("method: finetune\nepochs: 3\nlr: 0.01\nwarmup_epochs: 1\n")
    cfg = load_config(tmp_path / "c.yaml", ["lr=1e-4", "classes=a,b", "grad_clip=null", "method_options.k=4",
                                            "amp=off", "image_size=48", "weights=007"], epochs=5)
    assert cfg.method == "finetune" and cfg.epochs == 5
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert isinstance(cfg.warmup_epochs, float)
    assert cfg.classes == ["a", "b"]
    assert cfg.grad_clip is None and cfg.method_options == {"k": 4}
    assert cfg.amp == "off" and cfg.image_size == 48
    assert cfg.weights == "007"  # a string field keeps what was typed


@pytest.mark.parametrize("override, message", [
    ("lrr=0.1", "unknown key 'lrr'"),
    ("epochs=two", "epochs must be an integer"),
    ("epochs=1.5", "epochs must be an integer"),
    ("epochs=0", "epochs must be at least 1"),
    ("optimizer=adam", "optimizer must be one of adamw, sgd"),
    ("scheduler=linear", "scheduler must be one of"),
    ("amp=fp8", "amp must be one of"),
    ("augment=maybe", "augment must be true or false"),
    ("lr", "is not key=value"),
    ("epochs.x=1", "epochs is not a mapping"),
    ("pretrained=null", "pretrained must not be null"),
    ("label_smoothing=1.0", "label_smoothing must be below 1"),
    ("device=tpu", "device must be auto, cpu, cuda"),
])
def test_bad_overrides_raise_one_clear_user_error(override, message):
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_yaml_key_and_missing_file(tmp_path):
    (tmp_path / "c.yaml").write_text("epoch: 3\n")
    with pytest.raises(UserError, match="unknown key.*epoch"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_packaged_presets_load():
    names = presets()
    assert {"linear-probe", "finetune", "tiny-cpu"} <= set(names)
    for name in names:
        cfg = load_config(name, ["data=x", "out=y"])
        assert cfg.data == "x"
    assert load_config("linear-probe").method == "linear-probe"
    assert load_config("finetune.yaml").method == "finetune"


def test_parse_override_types():
    assert parse_override("lr=0.5") == ("lr", 0.5)
    assert parse_override("augment=false") == ("augment", False)
    assert parse_override("data=/x/y") == ("data", "/x/y")
    assert parse_override("method_options.names=[a, b]") == ("method_options.names", ["a", "b"])
