"""create(): presets and timm names build the right heads, record their spec, never download unasked."""

import pytest
import torch

from traitlens.backbones import PRESETS, create, create_from_spec, data_config
from traitlens.errors import UserError


def test_tiny_vit_classifier_and_any_input_size():
    model = create("tiny-vit", num_classes=7).eval()
    assert model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
        assert model(torch.randn(2, 3, 48, 80)).shape == (2, 7)  # dynamic image size, non-square
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 1 + 8 * 8, 128)
    assert model.traitlens_spec == {"name": "tiny-vit", "overrides": {}, "num_classes": 7}
    assert sum(p.numel() for p in model.parameters()) < 1_500_000


def test_tiny_cnn_headless_then_reset_classifier():
    model = create("tiny-cnn").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 128)  # num_classes=0: pooled features
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 128, 8, 8)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_real_architectures_without_download():
    r50 = create("resnet50", num_classes=10)
    assert r50.get_classifier().out_features == 10 and r50.num_features == 2048
    dino = create("dino-vitb16")
    assert isinstance(dino.get_classifier(), torch.nn.Identity)
    assert dino.embed_dim == 768 and len(dino.blocks) == 12
    vit = create("vit_small_patch16_224", num_classes=4)  # any timm name works too
    assert vit.get_classifier().out_features == 4
    assert vit.traitlens_spec["name"] == "vit_small_patch16_224"


def test_spec_rebuilds_same_architecture_with_overrides():
    model = create("tiny-vit", num_classes=3, img_size=96, depth=2)
    assert len(model.blocks) == 2
    assert data_config(model)["input_size"] == (3, 96, 96)
    again = create_from_spec(model.traitlens_spec)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes


def test_preset_data_configs():
    cfg = data_config(create("tiny-vit"))
    assert cfg["input_size"] == (3, 64, 64) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx(PRESETS["tiny-vit"].mean)
    clip = data_config(create("clip-vitb16"))
    assert clip["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_unknown_name_and_conflicting_options():
    with pytest.raises(UserError, match="unknown backbone 'no-such-net'"):
        create("no-such-net")
    with pytest.raises(UserError, match="either local weights or pretrained"):
        create("tiny-vit", weights="x.safetensors", pretrained=True)
    with pytest.raises(UserError, match="bad option"):
        create("tiny-cnn", no_such_kwarg=1)


def _offline(monkeypatch):
    """Make every download path fail the way it does without a network."""
    import huggingface_hub
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable\nmore detail")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("name", ["resnet18", "bioclip-vitb16"])
def test_pretrained_offline_gives_user_error(monkeypatch, name):
    _offline(monkeypatch)
    with pytest.raises(UserError) as info:
        create(name, pretrained=True)
    msg = str(info.value)
    assert msg.startswith(f"could not download pretrained weights for {name}: ")
    assert "Network is unreachable" in msg and "(offline?)" in msg and msg.endswith("use local weights instead")
    assert info.value.option == "pretrained"  # the CLI names the flag the user gave
    assert "\n" not in msg


def test_no_download_without_pretrained(monkeypatch):
    _offline(monkeypatch)
    for name in ("tiny-vit", "resnet18"):
        create(name)  # would raise if anything tried to download
