"""Prompt-CAM: shapes, parameter count, freezing, and agreement with a naive reference implementation."""

import itertools

import pytest
import timm
import torch

from traitlens.errors import UserError
from traitlens.models import PromptCAM
from traitlens.models.prompt_cam import HierarchicalPromptCAM, vpt_init_bound


def tiny_vit(reg_tokens=0, init_values=None, qk_norm=False, dynamic=False, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3,
                             num_heads=4, num_classes=0, reg_tokens=reg_tokens, init_values=init_values,
                             qk_norm=qk_norm, dynamic_img_size=dynamic)


def naive_block(blk, x, blur=None):
    """timm's pre-norm block with the attention written out; blur: B×H×T bool rows to make uniform."""
    attn = blk.attn
    b, t, d = x.shape
    h = blk.norm1(x)
    qkv = attn.qkv(h).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if blur is not None:
        logits = logits.masked_fill(blur[..., None], 0.0)
    p = logits.softmax(-1)
    o = (p @ v).transpose(1, 2).reshape(b, t, d)
    x = x + blk.ls1(attn.proj(o))
    return x + blk.ls2(blk.mlp(blk.norm2(x))), p


def naive_forward(model, images, blur_heads=None, target=None):
    """The paper's definition: concatenate, run whole blocks, drop prompts; blur heads of row `target`."""
    bb = model.backbone
    prompts = model.prompts.tokens
    c = prompts.shape[1]
    x = bb.norm_pre(bb._pos_embed(bb.patch_embed(images)))
    b = x.shape[0]
    if model.mode == "shallow":
        x = torch.cat([prompts[0].expand(b, -1, -1), x], 1)
    last = len(bb.blocks) - 1
    for i, blk in enumerate(bb.blocks):
        if model.mode == "deep":
            x = torch.cat([prompts[i].expand(b, -1, -1), x], 1)
        blur = None
        if i == last and blur_heads:
            blur = torch.zeros(b, blk.attn.num_heads, x.shape[1], dtype=torch.bool)
            for bi in range(b):
                for hh in blur_heads[bi]:
                    blur[bi, hh, target[bi]] = True
        y, p = naive_block(blk, x, blur)
        if i == last:
            out, probs = y[:, :c], p
        x = y[:, c:] if model.mode == "deep" else y
    return model.prompts.scorer(bb.norm(out)).squeeze(-1), probs


@pytest.fixture(params=[dict(), dict(reg_tokens=2, init_values=1e-1, qk_norm=True)], ids=["plain", "reg-ls-qknorm"])
def vit(request):
    return tiny_vit(**request.param)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_matches_naive_definition(vit, mode):
    torch.manual_seed(1)
    model = PromptCAM(vit, num_classes=5, mode=mode).eval()
    with torch.no_grad():
        model.prompts.tokens.normal_(0, 0.5)  # make prompts matter
        images = torch.randn(3, 3, 32, 32)
        ref, probs = naive_forward(model, images)
        assert torch.allclose(model(images), ref, atol=1e-5)
        classes = torch.tensor([0, 4, 2])
        maps = model.class_attention(images, classes)
        npre = vit.num_prefix_tokens
        want = probs[torch.arange(3), :, classes, 5 + npre:].reshape(3, 4, 4, 4)
        assert maps.shape == (3, 4, 4, 4)
        assert torch.allclose(maps, want, atol=1e-6)


def test_shapes_and_param_count():
    vit = tiny_vit()
    deep = PromptCAM(vit, num_classes=7)
    L, C, D = 3, 7, 32
    assert deep.num_trainable() == L * C * D + D + 1
    assert deep.prompts.tokens.shape == (L, C, D)
    shallow = PromptCAM(tiny_vit(), num_classes=7, mode="shallow")
    assert shallow.num_trainable() == C * D + D + 1
    x = torch.randn(2, 3, 32, 32)
    assert deep(x).shape == (2, 7)
    assert deep.class_attention(x, 3).shape == (2, 4, 4, 4)
    # non-square input on a dynamic-size ViT: a 4×6 grid
    dyn = PromptCAM(tiny_vit(dynamic=True), num_classes=7)
    assert dyn(torch.randn(2, 3, 32, 48)).shape == (2, 7)
    assert dyn.class_attention(torch.randn(2, 3, 32, 48), torch.tensor([1, 2])).shape == (2, 4, 4, 6)


def test_final_norm_of_a_pooled_vit_is_its_fc_norm():
    # timm moves the final LayerNorm to fc_norm (after pooling) for avg/max-pooled ViTs such as the tiny
    # embedded one; the prompt outputs must still be normalised by it before the scorer.
    torch.manual_seed(0)
    pooled = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                               num_heads=4, num_classes=0, global_pool="max")
    assert isinstance(pooled.norm, torch.nn.Identity)
    model = PromptCAM(pooled, num_classes=3).eval()
    assert model.final_norm is pooled.fc_norm
    with torch.no_grad():
        pooled.fc_norm.weight.uniform_(0.5, 2.0)
        x = torch.randn(2, 3, 32, 32)
        out = model.backbone.blocks[-1](model.encode(x).tokens)[:, :3]
        assert torch.allclose(model(x), model.prompts.scorer(pooled.fc_norm(out)).squeeze(-1), atol=1e-5)
    token = tiny_vit()
    assert PromptCAM(token, num_classes=3).final_norm is token.norm


def test_vpt_init_range():
    model = PromptCAM(tiny_vit(), num_classes=50)
    bound = vpt_init_bound((8, 8), 32)
    assert bound == pytest.approx((6 / (3 * 64 + 32)) ** 0.5)
    t = model.prompts.tokens
    assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    assert t.mean().abs() < 0.1 * bound


def test_backbone_frozen_after_training_step():
    model = PromptCAM(tiny_vit(), num_classes=4)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    prompts_before = model.prompts.tokens.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    model.train()
    assert not model.backbone.training
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.prompts.tokens, prompts_before)
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_permuting_prompts_permutes_logits(mode):
    torch.manual_seed(0)
    model = PromptCAM(tiny_vit(), num_classes=6, mode=mode).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.prompts.tokens.normal_(0, 0.5)
        logits = model(x)
        perm = torch.randperm(6)
        model.prompts.tokens.copy_(model.prompts.tokens[:, perm])
        assert torch.allclose(model(x), logits[:, perm], atol=1e-5)


def test_deep_prompts_do_not_reach_next_layer():
    model = PromptCAM(tiny_vit(), num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trace = []
        model.encode(x, trace=trace)
        assert len(trace) == 3
        for i, seq in enumerate(trace):  # every block sees exactly its own prompts, nothing carried over
            assert torch.equal(seq[:, :3], model.prompts.tokens[i].expand(2, -1, -1))
        shallow = PromptCAM(tiny_vit(), num_classes=3, mode="shallow").eval()
        trace = []
        shallow.encode(x, trace=trace)
        assert torch.equal(trace[0][:, :3], shallow.prompts.tokens[0].expand(2, -1, -1))
        assert not torch.allclose(trace[1][:, :3], shallow.prompts.tokens[0].expand(2, -1, -1))


def brute_force_greedy(model, images, target):
    """Greedy head blurring by full re-computation for every candidate (the reference for the fast path)."""
    b = images.shape[0]
    heads = model.num_heads
    blurred = [[] for _ in range(b)]
    probs = [[naive_forward(model, images)[0].softmax(1)[i, target[i]].item()] for i in range(b)]
    for _ in range(heads):
        best = [(-1.0, None)] * b
        for j in range(heads):
            trial = [bl + [j] if j not in bl else None for bl in blurred]
            sets = [t or [] for t in trial]
            p = naive_forward(model, images, sets, target)[0].softmax(1)
            for i in range(b):
                if trial[i] is not None and p[i, target[i]].item() > best[i][0]:
                    best[i] = (p[i, target[i]].item(), j)
        for i in range(b):
            blurred[i].append(best[i][1])
            probs[i].append(best[i][0])
    return [bl[::-1] for bl in blurred], probs


def test_greedy_head_blurring_matches_brute_force():
    torch.manual_seed(3)
    model = PromptCAM(tiny_vit(reg_tokens=1, init_values=0.5, seed=3), num_classes=5).double().eval()
    with torch.no_grad():
        model.prompts.tokens.normal_(0, 1.0)
        model.prompts.scorer.weight.normal_(0, 1.0)
        images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
        target = torch.tensor([1, 3, 0])
        found = model.identify_traits(images, target, top_k=2, stop_on_misclassification=False)
        ranked, probs = brute_force_greedy(model, images, target.tolist())
    assert found.ranked_heads.tolist() == ranked
    assert torch.allclose(found.target_prob, torch.tensor(probs, dtype=torch.float64), atol=1e-9)
    assert found.num_kept.tolist() == [2, 2, 2]
    assert found.maps.shape == (3, 4, 4, 4)
    assert found.top_maps().shape == (3, 2, 4, 4)
    # all heads blurred: the target row is uniform, whatever the order
    assert found.aggregate().shape == (3, 4, 4)


def test_stop_when_misclassified():
    # Two near-identical classes and a sharp last block: blurring heads flips many predictions.
    torch.manual_seed(0)
    model = PromptCAM(tiny_vit(seed=0), num_classes=2).double().eval()
    with torch.no_grad():
        model.backbone.blocks[-1].attn.qkv.weight.mul_(20)
        t = model.prompts.tokens
        t[:, 1] = t[:, 0]
        t[-1, 1] += 1e-3 * torch.randn(32, dtype=torch.float64)
        images = torch.randn(32, 3, 32, 32, dtype=torch.float64)
        found = model.identify_traits(images, top_k=1)
    # the default target is the prediction: correct before any blurring
    assert found.still_predicted[:, 0].all()
    kept = found.num_kept.tolist()
    assert sum(k > 1 for k in kept) >= 8  # measured: 17 of 32
    for i, k in enumerate(kept):
        blurs_done = 4 - k
        assert found.still_predicted[i, : blurs_done + 1].all()  # never misclassified while blurring
        if k > 1:
            assert not found.still_predicted[i, blurs_done + 1]  # one more blur would misclassify


def test_user_errors():
    cnn = timm.create_model("resnet18", num_classes=0, pretrained=False)
    with pytest.raises(UserError):
        PromptCAM(cnn, num_classes=3)
    with pytest.raises(UserError):
        PromptCAM(tiny_vit(), num_classes=3, mode="middle")
    model = PromptCAM(tiny_vit(), num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(UserError):
        model.class_attention(x, torch.tensor([0, 3]))
    with pytest.raises(UserError):
        model.class_attention(x, torch.tensor([0, 1, 2]))
    with pytest.raises(UserError):
        model.identify_traits(x, top_k=9)
    with pytest.raises(UserError):
        model(torch.randn(3, 32, 32))


def test_hierarchical_prompt_sets():
    tree = {"root": ["g.a", "g.b"], "g.a": ["s1", "s2", "s3"], "g.b": ["s4", "s5"]}
    model = HierarchicalPromptCAM(tiny_vit(), tree).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert {k: tuple(v.shape) for k, v in out.items()} == {"root": (4, 2), "g.a": (4, 3), "g.b": (4, 2)}
        paths = model.predict(x)
        for path, genus in zip(paths, out["root"].argmax(1).tolist()):
            assert path[:2] == ["root", tree["root"][genus]] and path[2] in tree[path[1]]
        assert model.class_attention(x, "g.a", torch.tensor([0, 1, 2, 0])).shape == (4, 4, 4, 4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * (2 + 3 + 2) * 32 + 3 * 33
    with pytest.raises(UserError):
        model.prompt_set("s1")


@pytest.mark.parametrize("qk_norm", [False, True])
def test_run_block_rows_equal_the_whole_block(qk_norm):
    """Rows of a block (fused qkv for most rows, split projection for few) equal timm's whole block."""
    from traitlens.models.vit_blocks import run_block

    blk = tiny_vit(qk_norm=qk_norm, init_values=0.1).blocks[1].eval()
    x = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = blk(x)
        for rows in (slice(None), slice(3, None), slice(0, 3), slice(0, 9)):
            torch.testing.assert_close(run_block(blk, x, rows), full[:, rows], atol=1e-5, rtol=1e-5)
