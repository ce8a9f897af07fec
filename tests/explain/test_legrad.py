"""LeGrad: parity with torchcam's LeGrad on the same model, Finer targets, and the timm-attention reader."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import Block
from torch import nn

from traitlens.errors import UserError
from traitlens.explain import explain
from traitlens.explain.engine import normalise

from .conftest import scaled_head


class MHAAttention(nn.Module):
    """timm's attention slot filled by an nn.MultiheadAttention (what torchcam's LeGrad can hook)."""

    def __init__(self, mha):
        super().__init__()
        self.mha = [mha]  # not registered twice: the block owns it as self_attention

    def forward(self, x, attn_mask=None, is_causal=False):
        return self.mha[0](x, x, x, need_weights=False)[0]


class MHABlock(Block):
    def __init__(self, dim, num_heads, **kw):
        super().__init__(dim, num_heads, **kw)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attn = MHAAttention(self.self_attention)


def tiny_vit(block_fn=Block, seed=7):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                              num_classes=10, block_fn=block_fn, qkv_bias=True)
    return scaled_head(model, 8.0).eval()


def copy_into_mha(timm_model, mha_model):
    """Give the MHA model the timm model's weights: the same function, two attention implementations."""
    state = {k: v for k, v in timm_model.state_dict().items() if ".attn." not in k}
    mha_model.load_state_dict(state, strict=False)
    for src, dst in zip(timm_model.blocks, mha_model.blocks):
        with torch.no_grad():
            dst.self_attention.in_proj_weight.copy_(src.attn.qkv.weight)
            dst.self_attention.in_proj_bias.copy_(src.attn.qkv.bias)
            dst.self_attention.out_proj.weight.copy_(src.attn.proj.weight)
            dst.self_attention.out_proj.bias.copy_(src.attn.proj.bias)
    return mha_model


@pytest.fixture(scope="module")
def pair():
    ours = tiny_vit()
    return ours, copy_into_mha(ours, tiny_vit(MHABlock, seed=8))


X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def test_timm_attention_and_mha_give_the_same_legrad(pair):
    timm_model, mha_model = pair
    with torch.no_grad():
        assert torch.allclose(timm_model(X), mha_model(X), atol=1e-5)
    a = explain(timm_model, X, method="legrad", alpha=[0.0, 0.6])
    b = explain(mha_model, X, method="legrad", alpha=[0.0, 0.6])
    assert a.raw_maps.shape == (2, 3, 4, 4) and a.layer == "blocks.0,blocks.1,blocks.2"
    assert torch.equal(a.references, b.references)
    assert float((a.raw_maps - b.raw_maps).abs().max()) <= 1e-5 * float(a.raw_maps.abs().max())
    assert timm_model.blocks[0].attn.fused_attn == timm.layers.use_fused_attn()  # restored


@pytest.mark.parametrize("layers", [None, ["blocks.1", "blocks.2"]])
def test_legrad_matches_torchcam(pair, layers):
    pytest.importorskip("torchcam")
    from torchcam.methods import LeGrad

    _, model = pair
    ours = explain(model, X, method="legrad", finer=False, target_layer=layers)
    names = layers or [f"blocks.{i}" for i in range(3)]
    with LeGrad(model, names, score_projection=lambda t: model.forward_head(model.norm(t)),
                prefix_tokens=model.num_prefix_tokens, grid_shape=(4, 4)) as cam:
        scores = model(X)
        theirs = cam(scores.argmax(1).tolist(), scores)[0].detach()
    assert float((normalise(ours.raw_maps, 1e-8) - theirs).abs().max()) <= 1e-5


def test_finer_legrad(pair):
    """α = 0 is plain LeGrad; a sweep slot equals the single call; the contrast changes the map."""
    model, _ = pair
    base = explain(model, X, method="legrad", finer=False)
    sweep = explain(model, X, method="legrad", alpha=[0.0, 0.6, 1.0])
    one = explain(model, X, method="legrad", alpha=0.6)
    assert torch.equal(sweep.raw_maps[0], base.raw_maps)
    assert float((sweep.raw_maps[1] - one.raw_maps).abs().max()) <= 1e-5 * float(one.raw_maps.abs().max())
    assert float((sweep.maps[2] - base.maps).abs().max()) > 0.05
    assert sweep.maps.shape == (3, 3, 32, 32) and float(sweep.maps.max()) == pytest.approx(1.0, abs=1e-5)


def test_legrad_refuses_what_it_cannot_explain(resnet, images, pair):
    with pytest.raises(UserError, match="LeGrad explains timm VisionTransformer"):
        explain(resnet, images, method="legrad")
    with pytest.raises(UserError, match="out of range"):
        explain(pair[0], X, method="legrad", target_layer="blocks.7")
