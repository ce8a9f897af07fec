"""layout(): prefix tokens, patch grids and explanation layers measured on real timm models."""

import pytest
import timm
import torch
from torch import nn

from traitlens.backbones import PRESETS, create, data_config, get_module, layout
from traitlens.errors import UserError


@pytest.fixture(scope="module")
def dinov2_reg():
    return create("dinov2-vitb14-reg").eval()


def test_vit_b16_has_one_prefix_token():
    lay = layout(create("dino-vitb16"))
    assert (lay.family, lay.num_prefix_tokens, lay.num_registers) == ("vit", 1, 0)
    assert lay.patch_size == (16, 16) and lay.embed_dim == 768
    assert lay.grid(224, 224) == (14, 14)
    assert lay.explain_layer == "blocks.11.norm1"


def test_dinov2_registers_and_grids(dinov2_reg):
    lay = layout(dinov2_reg)
    assert (lay.num_prefix_tokens, lay.num_registers) == (5, 4)
    assert lay.patch_size == (14, 14)
    assert lay.grid(224, 224) == (16, 16)
    assert lay.grid(224, 320) == (16, 22)
    assert lay.grid(518, 518) == (37, 37)


def test_dinov2_reg_tokens_match_a_real_forward(dinov2_reg):
    lay = layout(dinov2_reg)
    with torch.no_grad():
        tokens = dinov2_reg.forward_features(torch.randn(1, 3, 112, 154))
    assert tokens.shape[1] == 5 + 8 * 11
    fmap = lay.tokens_to_map(tokens, 112, 154)
    assert fmap.shape == (1, 768, 8, 11)
    assert torch.equal(fmap[0, :, 0, 0], tokens[0, 5])  # registers and CLS are all dropped


def test_tokens_to_map_on_tiny_vit_non_square():
    model = create("tiny-vit").eval()
    lay = layout(model)
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 48, 80))
    assert tokens.shape == (2, 1 + 6 * 10, 128)
    fmap = lay.tokens_to_map(tokens, 48, 80)
    assert fmap.shape == (2, 128, 6, 10)
    for i, j in [(0, 0), (2, 7), (5, 9)]:
        assert torch.equal(fmap[:, :, i, j], tokens[:, 1 + i * 10 + j])
    assert torch.equal(lay.map_to_tokens(fmap), tokens[:, 1:])
    with pytest.raises(ValueError, match="do not fit a 8×8 grid"):
        lay.tokens_to_map(tokens, 64, 64)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (65, 71)])
def test_cnn_grid_matches_feature_map(size):
    model = create("tiny-cnn").eval()
    lay = layout(model)
    assert (lay.family, lay.num_prefix_tokens, lay.explain_layer, lay.embed_dim) == ("cnn", 0, "layer4", 128)
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(1, 3, *size))
    assert tuple(fmap.shape[-2:]) == lay.grid(*size)
    assert lay.tokens_to_map(fmap, *size) is fmap


def test_resnet50_stride_and_layer():
    model = create("resnet50")
    lay = layout(model)
    assert lay.patch_size == (32, 32) and lay.embed_dim == 2048
    assert lay.grid(224, 320) == (7, 10)
    assert get_module(model, lay.explain_layer) is model.layer4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_explain_layer_of_every_preset_is_a_real_module(name):
    model = create(name)
    lay = layout(model)
    assert lay.explain_layer == PRESETS[name].explain_layer
    module = get_module(model, lay.explain_layer)
    assert isinstance(module, nn.Module)
    if lay.family == "vit":
        # CLS-token ViTs: the last block's first norm; ViTs pooling their patch tokens: the block itself.
        pools = getattr(model, "global_pool", "token") not in ("token", "map", "")
        assert isinstance(module, nn.LayerNorm) != pools
        assert lay.patch_size == (PRESETS[name].patch_size,) * 2
    else:
        assert lay.patch_size[0] == PRESETS[name].patch_size
    assert data_config(model)["input_size"] == PRESETS[name].input_size


def test_plain_timm_models_without_spec():
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    assert not hasattr(vit, "traitlens_spec")
    lay = layout(vit)
    assert (lay.num_prefix_tokens, lay.explain_layer, lay.embed_dim) == (1, "blocks.11.norm1", 384)
    no_cls = timm.create_model("vit_small_patch16_224", num_classes=0, class_token=False, global_pool="avg")
    assert layout(no_cls).num_prefix_tokens == 0
    assert layout(no_cls).explain_layer == "blocks.11"
    conv = timm.create_model("convnext_atto", num_classes=0)
    lay = layout(conv)
    assert lay.family == "cnn" and lay.patch_size == (32, 32)
    assert get_module(conv, lay.explain_layer) is conv.stages[3]


def test_wrapped_backbone():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create("tiny-vit")
            self.head = nn.Linear(128, 3)

    wrapped = Classifier()
    lay = layout(wrapped)
    assert lay.explain_layer == "backbone.blocks.3"  # tiny-vit pools its patch tokens (max)
    assert get_module(wrapped, lay.explain_layer) is wrapped.backbone.blocks[3]
    assert data_config(wrapped)["input_size"] == (3, 64, 64)

    class DataParallelLike(nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    outer = DataParallelLike(wrapped)
    assert layout(outer).explain_layer == "module.backbone.blocks.3"
    assert get_module(outer, layout(outer).explain_layer) is wrapped.backbone.blocks[3]


def test_errors_are_user_errors():
    with pytest.raises(UserError, match="has no layer 'blocks.99'"):
        get_module(create("tiny-vit"), "blocks.99")
    with pytest.raises(UserError, match="cannot tell the token layout"):
        layout(nn.Linear(3, 3))
