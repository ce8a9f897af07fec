"""INTR: shapes, DETR-compatible layers, query/memory symmetries, head blurring, DETR checkpoint loading."""

import pytest
import timm
import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.models import INTR, load_detr
from traitlens.models.intr import tile_queries
from traitlens.models.position_encoding import PositionEmbeddingSine

SIZES = dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=0, layers=(1, 1, 1, 1), channels=(8, 16, 24, 32),
                             stem_width=8, output_stride=8)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                             num_heads=4, num_classes=0, reg_tokens=1)


def make(backbone=None, num_classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return INTR(backbone or tiny_cnn(seed), num_classes, **{**SIZES, "dropout": 0.0, **kw}).eval()


def test_shapes_cnn_and_vit():
    x = torch.randn(2, 3, 32, 32)
    for backbone, grid in ((tiny_cnn(), (4, 4)), (tiny_vit(), (4, 4))):
        model = make(backbone)
        with torch.no_grad():
            logits = model(x)
            assert logits.shape == (2, 5)
            lg, maps, g = model.attention_maps(x)
            assert torch.allclose(lg, logits, atol=1e-5)
            assert g == grid and maps.shape == (2, 2, 4, 5, 16)
            assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 4, 5), atol=1e-5)
            assert model.class_attention(x, torch.tensor([1, 4])).shape == (2, 4, 4, 4)
            top, tmaps = model.top_class_attention(x, q=3)
            assert top.shape == (2, 3) and tmaps.shape == (2, 3, 4, 4, 4)
            assert torch.equal(top, logits.topk(3, 1).indices)
            one = model.class_attention(x, top[:, 1])
            assert torch.allclose(tmaps[:, 1], one, atol=1e-6)


def test_layers_match_torch_multihead_attention_detr_style():
    """Our decoder layer equals DETR's, written with nn.MultiheadAttention, with pos=None on memory keys."""
    model = make()
    layer = model.transformer.decoder.layers[0]
    ref_self = nn.MultiheadAttention(32, 4, batch_first=True)
    ref_cross = nn.MultiheadAttention(32, 4, batch_first=True)
    ref_self.load_state_dict(layer.self_attn.state_dict())  # same parameter names as DETR / torch
    ref_cross.load_state_dict(layer.multihead_attn.state_dict())
    torch.manual_seed(1)
    tgt, mem, qpos = torch.randn(2, 5, 32), torch.randn(2, 16, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        t = layer.norm1(tgt + ref_self(tgt + qpos, tgt + qpos, tgt)[0])
        c, w = ref_cross(t + qpos, mem, mem, average_attn_weights=False)
        t = layer.norm2(t + c)
        t = layer.norm3(t + layer.linear2(torch.relu(layer.linear1(t))))
        ours, ours_w = layer(tgt, mem, qpos, need_weights=True)
        assert torch.allclose(ours, t, atol=1e-5)
        assert torch.allclose(ours_w, w, atol=1e-6)
        assert torch.allclose(layer(tgt, mem, qpos)[0], t, atol=1e-5)  # the fused path


def test_decoder_ignores_memory_positions_and_queries_permute():
    model = make()
    torch.manual_seed(2)
    mem, qpos = torch.randn(2, 16, 32), model.query_embed.weight[None].expand(2, -1, -1)
    with torch.no_grad():
        out, _ = model.transformer.decode(mem, qpos)
        perm = torch.randperm(16)
        assert torch.allclose(model.transformer.decode(mem[:, perm], qpos)[0], out, atol=1e-5)
        x = torch.randn(2, 3, 32, 32)
        logits = model(x)
        cperm = torch.randperm(5)
        model.query_embed.weight.copy_(model.query_embed.weight[cperm])
        assert torch.allclose(model(x), logits[:, cperm], atol=1e-5)


def test_sine_position_encoding():
    pe = PositionEmbeddingSine(16)
    pos = pe(torch.zeros(2, 32, 3, 5))
    assert pos.shape == (2, 32, 3, 5)
    # channel 0: sin of the normalised row; channel 16: sin of the normalised column
    assert torch.allclose(pos[0, 0, :, 0], torch.sin(torch.arange(1, 4) / 3 * 2 * torch.pi), atol=1e-4)
    assert torch.allclose(pos[0, 16, 0], torch.sin(torch.arange(1, 6) / 5 * 2 * torch.pi), atol=1e-4)
    assert torch.allclose(pos[0, 1, :, 0], torch.cos(torch.arange(1, 4) / 3 * 2 * torch.pi), atol=1e-4)


def brute_force_blur_logits(model, x, target, blur_heads):
    """Full recomputation with logits of row target[b] in the last cross-attention zeroed for blur_heads[b]."""
    memory, _ = model.encode(x)
    qpos = model.query_embed.weight[None].expand(x.shape[0], -1, -1)
    tgt = torch.zeros_like(qpos)
    layers = model.transformer.decoder.layers
    for layer in layers[:-1]:
        tgt, _ = layer(tgt, memory, qpos)
    last = layers[-1]
    tgt = last.self_attend(tgt, qpos)
    attn = last.multihead_attn
    q, k, v = attn.project(tgt + qpos, memory, memory)
    logits = (q * attn.head_dim ** -0.5) @ k.transpose(-2, -1)
    for b, heads in enumerate(blur_heads):
        for h in heads:
            logits[b, h, target[b]] = 0
    out = last.after_cross(tgt, attn.merge(logits.softmax(-1) @ v))
    return model.presence(model.transformer.decoder.norm(out)).squeeze(-1)


def test_greedy_blurring_matches_brute_force():
    model = make(seed=4).double()
    with torch.no_grad():
        for p in model.transformer.decoder.layers[-1].multihead_attn.parameters():
            p.mul_(4)  # sharper attention, so heads differ
        x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
        target = torch.tensor([0, 2, 4])
        found = model.identify_traits(x, target, top_k=2, stop_on_misclassification=False)
        blurred = [[] for _ in range(3)]
        for step in range(4):
            best = [(-1, None)] * 3
            for j in range(4):
                sets = [bl + [j] for bl in blurred]
                p = brute_force_blur_logits(model, x, target, sets).softmax(1)
                for i in range(3):
                    if j not in blurred[i] and p[i, target[i]] > best[i][0]:
                        best[i] = (p[i, target[i]].item(), j)
            for i in range(3):
                blurred[i].append(best[i][1])
                assert found.target_prob[i, step + 1].item() == pytest.approx(best[i][0], abs=1e-9)
        assert found.ranked_heads.tolist() == [bl[::-1] for bl in blurred]
        maps = model.class_attention(x, target)
        assert torch.allclose(found.maps, maps, atol=1e-9)


def test_tile_queries():
    q = torch.randn(4, 8)
    assert torch.equal(tile_queries(q, 3), q[:3])
    t = tile_queries(q, 10, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10, 8) and torch.equal(t[:4], q)
    diff = t[4:] - q.repeat(3, 1)[4:10]
    assert 0.05 < diff.std().item() < 0.15


def fake_detr_checkpoint(path, num_queries=6):
    """A DETR-format checkpoint ({"model": ...}, DETR key names) made from a tiny INTR of another seed."""
    src = make(seed=7, num_classes=num_queries)
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("backbone."):
            state["backbone.0.body." + k[len("backbone."):]] = v
        elif k.startswith(("transformer.", "input_proj.", "query_embed.")):
            state[k] = v
    state["class_embed.weight"] = torch.randn(92, 32)
    state["bbox_embed.layers.0.weight"] = torch.randn(32, 32)
    torch.save({"model": state}, path)
    return src


@pytest.mark.parametrize("num_classes", [4, 15])
def test_load_detr_checkpoint(tmp_path, num_classes):
    src = fake_detr_checkpoint(tmp_path / "detr.pth")
    model = make(seed=1, num_classes=num_classes)
    presence = model.presence.weight.clone()
    summary = load_detr(model, tmp_path / "detr.pth", noise=0.1)
    assert sorted(summary["dropped"]) == ["bbox_embed.layers.0.weight", "class_embed.weight"]
    assert summary["missing"] == ["presence.weight", "presence.bias"]
    for k, v in src.state_dict().items():
        if k.startswith(("transformer.", "input_proj.", "backbone.")):
            assert torch.equal(model.state_dict()[k], v), k
    q, q0 = model.query_embed.weight, src.query_embed.weight
    assert torch.equal(q[: min(6, num_classes)], q0[: min(6, num_classes)])
    if num_classes > 6:
        assert not torch.equal(q[6:12], q0) and (q[6:12] - q0).abs().max() < 0.6
    assert torch.equal(model.presence.weight, presence)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, num_classes)


def test_load_detr_errors(tmp_path):
    fake_detr_checkpoint(tmp_path / "detr.pth")
    wrong = make(num_classes=3, d_model=64)
    with pytest.raises(UserError, match="does not fit"):
        load_detr(wrong, tmp_path / "detr.pth")
    torch.save({"model": {"a": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a DETR"):
        load_detr(make(), tmp_path / "other.pth")
    with pytest.raises(UserError):
        INTR(tiny_cnn(), 5, d_model=30, num_heads=4)
    with pytest.raises(UserError):
        make().class_attention(torch.randn(2, 3, 32, 32), torch.tensor([0, 9]))
