"""The published checkpoint formats at their real size (the claims tier: ~1 GB of random tensors in all).

Each file is built from its recorded layout with every block; it must load into its preset with every tensor
accounted for: the model's tensors equal to the file's (after the documented renaming), the documented drops
and the position-embedding resampling only. The 2-block versions in ``test_published_formats.py`` check the
details; this module checks that nothing changes at full depth (e.g. a block index the 2-block files lack).
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from traitlens.backbones import create

pytestmark = pytest.mark.claims

_spec = importlib.util.spec_from_file_location("_layouts", Path(__file__).with_name("_layouts.py"))
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)

CASES = [
    ("dinov2_vitb14_pretrain.pth", "dinov2-vitb14", 0, 1),
    ("dinov2_vitb14_reg4_pretrain.pth", "dinov2-vitb14-reg", 0, 1),
    ("dino_vitbase16_pretrain.pth", "dino-vitb16", 0, 0),
    ("dino_vitbase16_full_checkpoint.pth", "dino-vitb16", 0, 0),
    ("timm_vit_base_patch14_dinov2.lvd142m.safetensors", "dinov2-vitb14", 0, 0),
    ("open_clip_pytorch_model.bin", "bioclip-vitb16", 512, 0),
    ("hf_clip_vit_base_patch16__model.safetensors", "clip-vitb16", 512, 0),
]


@pytest.mark.parametrize("name,preset,num_classes,mask_tokens", CASES)
def test_full_size_file_loads_every_tensor(tmp_path, name, preset, num_classes, mask_tokens):
    obj = L.build(name)
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    del obj
    model = create(preset, num_classes=num_classes, weights=path)
    s = model.traitlens_weights
    assert s.matched == s.total and not s.partial and not s.unexpected and not s.mismatched
    assert sum("mask-image" in why or "masked-image" in why for why in s.dropped.values()) == mask_tokens
    assert set(s.resampled) <= {"pos_embed"}


def test_full_sam2_tiny_original_converts_and_loads_strictly(tmp_path):
    from traitlens.segment.sam2 import load_sam2
    from traitlens.segment.sam2_convert import convert_state

    obj = L.build("sam2_hiera_tiny.pt")
    torch.save(obj, tmp_path / "sam2_hiera_tiny.pt")
    model = load_sam2(tmp_path / "sam2_hiera_tiny.pt")
    assert model.traitlens_source["size"] == "tiny" and model.traitlens_source["version"] == "2.0"
    own = model.state_dict()
    for key, value in convert_state(obj["model"]).items():
        assert torch.equal(own[key], value), key
