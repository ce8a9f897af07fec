"""Every published checkpoint format loads into its preset with every tensor accounted for, or fails in one line.

Files are built from the layouts recorded from the publishers' code (``_layouts.py``: the real key names and
shapes, random values), cut to 2 transformer blocks so the whole module runs in seconds; the full-depth files are
checked in ``test_published_formats_full.py`` (``claims`` tier). Skipped when the layouts are absent.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from traitlens.backbones import create
from traitlens.errors import UserError

_spec = importlib.util.spec_from_file_location("_layouts", Path(__file__).with_name("_layouts.py"))
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)

DEPTH = dict(depth=2)


def _save(obj, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


def _sd(model):
    return model.state_dict()


def _grid_resample(pos, grid, prefix):
    return resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=prefix)


def test_dinov2_original_pth_loads_every_tensor_and_says_what_it_resampled(tmp_path):
    obj = L.build_truncated("dinov2_vitb14_pretrain.pth")
    model = create("dinov2-vitb14", weights=_save(obj, tmp_path / "dinov2_vitb14_pretrain.pth"), **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert (s.format, s.matched, s.total, s.partial) == ("dinov2", len(own), len(own), False)
    assert list(s.dropped) == ["mask_token"] and s.resampled == {"pos_embed": "37×37 → 16×16 grid"}
    for k, v in obj.items():
        if k not in ("mask_token", "pos_embed"):
            assert torch.equal(own[k], v), k
    # the one documented resampling: 518 px → the preset's 224 px grid
    assert torch.allclose(own["pos_embed"], _grid_resample(obj["pos_embed"], (16, 16), 1), atol=1e-6)
    assert "resampled pos_embed 37×37 → 16×16" in str(s) and "mask_token" not in s.unexpected


def test_dinov2_with_registers_loads_registers_and_folds_the_cls_position(tmp_path):
    obj = L.build_truncated("dinov2_vitb14_reg4_pretrain.pth")
    model = create("dinov2-vitb14-reg", weights=_save(obj, tmp_path / "reg4.pth"), **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert s.format == "dinov2-reg" and s.matched == s.total and not s.partial
    assert torch.equal(own["reg_token"], obj["register_tokens"])
    # timm's layout keeps no position for the prefix tokens: DINOv2's CLS position is added to cls_token
    assert torch.equal(own["cls_token"], obj["cls_token"] + obj["pos_embed"][:, 0])
    assert torch.allclose(own["pos_embed"], _grid_resample(obj["pos_embed"][:, 1:], (16, 16), 0), atol=1e-6)
    assert torch.equal(own["blocks.1.ls2.gamma"], obj["blocks.1.ls2.gamma"])


@pytest.mark.parametrize("layout_name,preset,found,fits", [
    ("dinov2_vitb14_pretrain.pth", "dino-vitb16", "DINOv2 (original .pth)", "dinov2-vitb14"),
    ("dinov2_vitb14_reg4_pretrain.pth", "dinov2-vitb14", "DINOv2 with registers", "dinov2-vitb14-reg"),
    ("dinov2_vitb14_pretrain.pth", "dinov2-vitb14-reg", "DINOv2 (original .pth)", "dinov2-vitb14"),
])
def test_mismatched_pairs_are_an_error_unless_partial_is_allowed(tmp_path, layout_name, preset, found, fits):
    path = _save(L.build_truncated(layout_name), tmp_path / layout_name)
    with pytest.raises(UserError) as info:
        create(preset, weights=path, **DEPTH)
    msg = str(info.value)
    assert found in msg and f"fits preset {fits}" in msg and "--allow-partial" in msg and "\n" not in msg
    model = create(preset, weights=path, strict=False, **DEPTH)  # the user asked for it: loaded, and flagged
    assert model.traitlens_weights.partial and model.traitlens_weights.conflicts


def test_dino_training_checkpoint_with_namespace_args_loads_the_teacher(tmp_path):
    obj = L.build_truncated("dino_vitbase16_full_checkpoint.pth")
    assert type(obj["args"]).__name__ == "Namespace"
    model = create("dino-vitb16", weights=_save(obj, tmp_path / "checkpoint.pth"), **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert s.format == "dino-training" and s.matched == s.total and not s.partial
    for k, v in obj["teacher"].items():
        if k.startswith("backbone."):
            assert torch.equal(own[k[len("backbone."):]], v), k
    reasons = set(s.dropped.values())
    assert any("student" in r for r in reasons) and any("projection head" in r for r in reasons)
    assert len(s.dropped) == len(obj["student"]) + len([k for k in obj["teacher"] if k.startswith("head.")]) + 1


def test_dino_backbone_release_and_timm_dinov2_safetensors_load_exactly(tmp_path):
    obj = L.build_truncated("dino_vitbase16_pretrain.pth")
    model = create("dino-vitb16", weights=_save(obj, tmp_path / "dino_vitbase16_pretrain.pth"), **DEPTH)
    assert model.traitlens_weights.matched == len(obj) and not model.traitlens_weights.dropped
    assert all(torch.equal(_sd(model)[k], v) for k, v in obj.items())
    obj = L.build_truncated("timm_vit_base_patch14_dinov2.lvd142m.safetensors")
    model = create("dinov2-vitb14", weights=_save(obj, tmp_path / "model.safetensors"), **DEPTH)
    s = model.traitlens_weights
    assert s.format == "timm-dinov2" and s.matched == len(obj) and list(s.resampled) == ["pos_embed"]


def _check_clip_tower(own, qkv, proj_t):
    assert torch.equal(own["blocks.0.attn.qkv.weight"], qkv)
    assert torch.equal(own["head.weight"], proj_t)


def test_open_clip_bioclip_file_loads_the_image_tower_and_projection(tmp_path):
    obj = L.build_truncated("open_clip_pytorch_model.bin")
    model = create("bioclip-vitb16", num_classes=512, weights=_save(obj, tmp_path / "open_clip_pytorch_model.bin"),
                   **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert s.format == "open-clip" and s.matched == s.total and not s.partial
    _check_clip_tower(own, obj["visual.transformer.resblocks.0.attn.in_proj_weight"], obj["visual.proj"].t())
    assert torch.equal(own["cls_token"][0, 0], obj["visual.class_embedding"])
    text = [k for k in obj if not k.startswith("visual.")]
    assert sorted(k for k, why in s.dropped.items() if "text tower" in why) == sorted(text)


def _scripted(state):
    """A TorchScript archive holding ``state`` under its dotted names (how OpenAI ships CLIP: torch.jit.save)."""
    from torch import nn

    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        m = root
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, nn.Module())
            m = getattr(m, p)
        m.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    return torch.jit.script(root)


def test_openai_clip_torchscript_archive_is_read_as_data_not_run(tmp_path):
    obj = {k: v.half() for k, v in L.build_truncated("open_clip_pytorch_model.bin").items()}  # OpenAI ships fp16
    path = tmp_path / "ViT-B-16.pt"
    _scripted(obj).save(str(path))
    model = create("clip-vitb16", num_classes=512, weights=path, **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert s.format == "openai-clip" and s.matched == s.total and not s.partial
    _check_clip_tower(own, obj["visual.transformer.resblocks.0.attn.in_proj_weight"].float(),
                      obj["visual.proj"].t().float())


def test_transformers_clip_model_safetensors_loads_into_clip_vitb16(tmp_path):
    obj = L.build_truncated("hf_clip_vit_base_patch16__model.safetensors")
    model = create("clip-vitb16", num_classes=512, weights=_save(obj, tmp_path / "model.safetensors"), **DEPTH)
    s, own = model.traitlens_weights, _sd(model)
    assert s.format == "hf-clip" and s.matched == s.total and not s.partial
    p = "vision_model.encoder.layers.1.self_attn."
    qkv = torch.cat([obj[p + f"{x}_proj.weight"] for x in "qkv"]).float()
    assert torch.equal(own["blocks.1.attn.qkv.weight"], qkv)
    assert torch.equal(own["head.weight"], obj["visual_projection.weight"].float())
    assert torch.equal(own["norm_pre.weight"], obj["vision_model.pre_layrnorm.weight"].float())
    headless = create("clip-vitb16", weights=tmp_path / "model.safetensors", **DEPTH).traitlens_weights
    assert not headless.partial and "visual_projection.weight" in headless.dropped or "head.weight" in headless.dropped


@pytest.mark.parametrize("layout_name,what,command", [
    ("prompt_cam_dinov2_cub_model.pt", "a trained Prompt-CAM model", "traitlens import prompt-cam"),
    ("intr_checkpoint_cub_detr_r50.pth", "an INTR release checkpoint", "traitlens import intr"),
    ("sam2_hiera_tiny.pt", "a SAM 2 checkpoint", "traitlens segment --backend sam2"),
])
def test_trained_models_and_segmenters_are_not_loaded_as_a_backbone(tmp_path, layout_name, what, command):
    obj = L.build_truncated(layout_name, depth=1)
    path = _save(obj, tmp_path / layout_name)
    preset = "resnet50" if "intr" in layout_name else "dinov2-vitb14"
    with pytest.raises(UserError) as info:
        create(preset, weights=path, **({} if preset == "resnet50" else DEPTH))
    assert what in str(info.value) and command in str(info.value)


def test_nan_weights_are_refused_naming_the_first_bad_tensor(tmp_path):
    obj = L.build_truncated("dino_vitbase16_pretrain.pth")
    obj["blocks.1.mlp.fc1.weight"][3, 4] = float("nan")
    obj["blocks.1.mlp.fc2.weight"][0, 0] = float("inf")
    with pytest.raises(UserError, match=r"NaN values \(first in tensor 'blocks.1.mlp.fc1.weight'\)"):
        create("dino-vitb16", weights=_save(obj, tmp_path / "w.pth"), **DEPTH)


def test_a_safetensors_file_whose_header_lies_is_one_clear_line(tmp_path):
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 40)  # 40 bytes, not 4000
    with pytest.raises(UserError, match="cannot read .*lying.safetensors as safetensors") as info:
        create("tiny-vit", weights=path)
    assert "\n" not in str(info.value)


def test_file_options_for_timm_are_refused_wherever_they_come_from(tmp_path, monkeypatch):
    def no_load(*a, **kw):
        raise AssertionError("torch.load must not be reached")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(UserError, match="checkpoint_path is not passed to timm"):
        create("tiny-vit", checkpoint_path=str(tmp_path / "evil.pth"))
    with pytest.raises(UserError, match="pretrained_cfg_overlay is not passed to timm"):
        create("tiny-vit", pretrained_cfg_overlay={"file": str(tmp_path / "evil.pth")})


def test_sam2_original_keys_convert_to_the_transformers_layout_and_config():
    from traitlens.segment.sam2_convert import config_for, convert_state

    original = {k: torch.empty(v[0], device="meta") for k, v in L.layout("sam2_hiera_tiny.pt")["model"].items()}
    hf = L.layout("sam2_hiera_tiny_hf__model.safetensors")
    converted = convert_state(original)
    assert set(converted) == set(hf)  # 468 original tensors → the 466 transformers ones, nothing left over
    assert all(list(converted[k].shape) == hf[k][0] for k in hf)
    config, size, version = config_for(original)
    ref = L.config("sam2_hiera_tiny_hf.config.json")
    assert (size, version) == ("tiny", "2.0")
    mine = config.to_dict()
    bb, ref_bb = mine["vision_config"]["backbone_config"], ref["vision_config"]["backbone_config"]
    for key in ("hidden_size", "blocks_per_stage", "embed_dim_per_stage", "num_attention_heads_per_stage",
                "global_attention_blocks", "window_size_per_stage", "window_positional_embedding_background_size"):
        assert bb[key] == ref_bb[key] or list(bb[key]) == list(ref_bb[key]), key
    for key in ("enable_temporal_pos_encoding_for_object_pointers", "enable_occlusion_spatial_embedding",
                "num_maskmem", "image_size"):
        assert mine[key] == ref[key], key
    # SAM 2.1 files carry two more tensors, which switch on 2.1's options
    v21 = dict(original, no_obj_embed_spatial=torch.empty(1, 64, device="meta"))
    assert config_for(v21)[2] == "2.1" and config_for(v21)[0].enable_occlusion_spatial_embedding


def test_backbone_identify_names_the_format_and_the_preset(tmp_path, capsys):
    from traitlens.cli import main

    path = _save(L.build_truncated("dinov2_vitb14_reg4_pretrain.pth"), tmp_path / "reg4.pth")
    assert main(["backbone", "identify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "DINOv2 with registers (original .pth)" in out and "fits dinov2-vitb14-reg" in out
    assert main(["backbone", "identify", str(path), "--backbone", "dinov2-vitb14"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fits preset dinov2-vitb14-reg" in err and "(check" not in err.split(":")[0] and "\n" not in err
