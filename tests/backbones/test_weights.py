"""Local weights: round trips through every accepted format, nestings, foreign key styles, refusals."""

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from traitlens.backbones import create, load_weights, read_state_dict
from traitlens.errors import UserError


def _same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not any(k.startswith(s) for s in skip))


@pytest.fixture()
def source():
    torch.manual_seed(0)
    return create("tiny-vit", num_classes=5)


def test_safetensors_round_trip(tmp_path, source):
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = create("tiny-vit", num_classes=5, weights=tmp_path / "w.safetensors")
    assert _same_weights(source, model)
    s = model.traitlens_weights
    assert s.matched == s.total == len(source.state_dict())
    assert (s.missing, s.unexpected, s.dropped_head) == ([], [], [])


def test_pth_nested_and_ddp_prefixed(tmp_path, source):
    sd = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": sd, "epoch": 7, "args": {"lr": 0.1}}, tmp_path / "w.pth")
    model = create("tiny-vit", num_classes=5, weights=tmp_path / "w.pth")
    assert _same_weights(source, model)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "b.bin")
    model = create("tiny-vit", num_classes=5, weights=tmp_path / "b.bin")
    assert _same_weights(source, model)


def test_dino_checkpoint_prefers_teacher(tmp_path, source):
    other = create("tiny-vit", num_classes=5)
    ckpt = {
        "student": {f"module.backbone.{k}": v for k, v in other.state_dict().items()},
        "teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()},
        "epoch": 100,
    }
    torch.save(ckpt, tmp_path / "dino.pth")
    model = create("tiny-vit", num_classes=5, weights=tmp_path / "dino.pth")
    assert _same_weights(source, model)


class _Custom:  # any class outside the allowlist: unpickling it could run code
    def __init__(self):
        self.lr = 0.1


def test_namespace_is_allowed_other_pickled_objects_are_refused(tmp_path, source):
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    model = create("tiny-vit", num_classes=5, weights=tmp_path / "ckpt.pth")
    assert _same_weights(source, model)
    torch.save({"model": source.state_dict(), "args": _Custom()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="pickled Python objects") as info:
        create("tiny-vit", num_classes=5, weights=tmp_path / "evil.pth")
    assert "_Custom" in str(info.value) and "safetensors" in str(info.value) and "\n" not in str(info.value)


def test_head_of_other_shape_is_dropped(tmp_path, source):
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = create("tiny-vit", num_classes=3, weights=tmp_path / "w.safetensors")
    assert _same_weights(source, model, skip=("head.",))
    s = model.traitlens_weights
    assert s.dropped_head == ["head.bias", "head.weight"]
    assert s.missing == ["head.bias", "head.weight"] and s.mismatched == []
    headless = create("tiny-vit", weights=tmp_path / "w.safetensors")
    s = headless.traitlens_weights
    assert s.unexpected == [] and not s.partial  # a headless model leaves the file's classifier out, and says so
    assert set(s.dropped) == {"head.bias", "head.weight"}


def test_wrong_architecture_fails_in_one_line(tmp_path):
    save_file(create("tiny-cnn").state_dict(), tmp_path / "cnn.safetensors")
    with pytest.raises(UserError, match=r"do not fit tiny-vit: only 0 of \d+ tensors matched"):
        create("tiny-vit", weights=tmp_path / "cnn.safetensors")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        create("tiny-vit", weights=tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported weights file"):
        create("tiny-vit", weights=tmp_path / "w.onnx")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        read_state_dict(tmp_path / "bad.pth")


def test_run_folder_and_model_json(tmp_path, source):
    run = tmp_path / "run"
    run.mkdir()
    save_file(source.state_dict(), run / "model.safetensors")
    (run / "model.json").write_text(json.dumps({"backbone": source.traitlens_spec, "num_classes": 5}))
    assert _same_weights(source, create("tiny-vit", num_classes=5, weights=run / "model.json"))
    rebuilt = create(None, num_classes=5, weights=run)
    assert _same_weights(source, rebuilt) and rebuilt.traitlens_spec["name"] == "tiny-vit"


def _to_open_clip(model):
    """The open_clip / OpenAI-CLIP key style of a timm CLIP ViT (what BioCLIP's hub file holds)."""
    sd = model.state_dict()
    out = {
        "visual.class_embedding": sd["cls_token"][0, 0],
        "visual.positional_embedding": sd["pos_embed"][0],
        "visual.conv1.weight": sd["patch_embed.proj.weight"],
        "visual.proj": sd["head.weight"].t().contiguous(),
        "logit_scale": torch.tensor(4.6),
        "token_embedding.weight": torch.zeros(10, 8),
    }
    for ln, timm_ln in (("ln_pre", "norm_pre"), ("ln_post", "norm")):
        for p in ("weight", "bias"):
            out[f"visual.{ln}.{p}"] = sd[f"{timm_ln}.{p}"]
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_": "attn.qkv", "attn.out_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(len(model.blocks)):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                sep = "" if ours.endswith("_") else "."
                out[f"visual.transformer.resblocks.{i}.{ours}{sep}{p}"] = sd[f"blocks.{i}.{theirs}.{p}"]
    return out


def test_open_clip_visual_tower_converts(tmp_path):
    arch = dict(embed_dim=64, depth=2, num_heads=2, img_size=32)
    torch.manual_seed(1)
    clip = create("bioclip-vitb16", num_classes=16, **arch).eval()
    torch.save(_to_open_clip(clip), tmp_path / "open_clip_pytorch_model.bin")
    model = create("bioclip-vitb16", num_classes=16, weights=tmp_path / "open_clip_pytorch_model.bin", **arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), clip(x), atol=1e-5)
    assert model.traitlens_weights.missing == []
    headless = create("bioclip-vitb16", weights=tmp_path / "open_clip_pytorch_model.bin", **arch)
    assert headless.traitlens_weights.missing == []


def test_bioclip_pretrained_comes_from_its_hub_repo(tmp_path, monkeypatch):
    import huggingface_hub

    arch = dict(embed_dim=64, depth=2, num_heads=2, img_size=32)
    torch.manual_seed(3)
    clip = create("bioclip-vitb16", num_classes=16, **arch).eval()
    torch.save(_to_open_clip(clip), tmp_path / "open_clip_pytorch_model.bin")
    asked = []

    def fake_download(repo, filename, **kw):
        asked.append((repo, filename))
        if filename.endswith(".safetensors"):
            raise OSError("404 Client Error: Entry Not Found")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = create("bioclip-vitb16", num_classes=16, pretrained=True, **arch).eval()
    assert asked == [("imageomics/bioclip", "open_clip_model.safetensors"),
                     ("imageomics/bioclip", "open_clip_pytorch_model.bin")]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), clip(x), atol=1e-5)


def test_dinov2_original_keys_with_registers_convert(tmp_path):
    arch = dict(embed_dim=64, depth=2, num_heads=2, img_size=28)
    torch.manual_seed(2)
    src = create("dinov2-vitb14-reg", **arch).eval()
    with torch.no_grad():  # timm starts cls_token at ~1e-6, too small to survive the round trip below
        src.cls_token.normal_(std=0.02)
    sd = dict(src.state_dict())
    pos0 = 0.02 * torch.randn(1, 1, 64)  # DINOv2 keeps a CLS position that timm folds into cls_token
    original = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    original.update(register_tokens=sd["reg_token"], cls_token=sd["cls_token"] - pos0,
                    pos_embed=torch.cat([pos0, sd["pos_embed"]], 1), mask_token=torch.zeros(1, 64))
    torch.save(original, tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    model = create("dinov2-vitb14-reg", weights=tmp_path / "dinov2_vitb14_reg4_pretrain.pth", **arch).eval()
    assert model.traitlens_weights.missing == [] and model.traitlens_weights.unexpected == []
    # cls_token comes back as (cls - pos0) + pos0: equal up to float rounding
    for k, v in src.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), src.forward_features(x), atol=1e-4)
