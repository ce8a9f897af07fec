"""The graph starts at the target layer: the ViT re-entry, the hook fallback and the old engine give the same maps."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from traitlens.explain import explain, finer_coefficients, resolve_layer
from traitlens.explain.cams import GRADIENT_METHODS
from traitlens.explain.split import vit_plan

from .conftest import scaled_head


def old_engine_raw(model, x, layer, method, alphas, refs_mode="logit-distance", k=3):
    """The engine as it was before the re-entry: one hooked forward in grad mode, one gradient per logit
    (target and each reference), combined with the Finer coefficients. Returns raw maps A×B×h×w."""
    from traitlens.explain.targets import select_references

    spec = resolve_layer(model, layer)
    store = []

    def hook(m, i, o):
        leaf = o.detach().requires_grad_(True)
        store.append(leaf)
        return leaf.clone()

    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(False)
    h = spec.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        h.remove()
        for p in params:
            p.requires_grad_(True)
    leaf = store[-1]
    tgt = logits.detach().argmax(1)
    refs = select_references(logits.detach(), tgt, refs_mode, k=k)
    index = torch.cat([tgt[:, None], refs], 1)
    grads = []
    for j in range(index.shape[1]):
        onehot = torch.zeros_like(logits).scatter_(1, index[:, j:j + 1], 1.0)
        grads.append(torch.autograd.grad(logits, leaf, onehot, retain_graph=True)[0])
    height, width = x.shape[-2:]
    grads = torch.stack([spec.to_map(g, height, width) for g in grads])  # J×B×C×h×w
    coeff = finer_coefficients(logits, tgt, refs, alphas)  # A×B×J
    combined = torch.einsum("abj,jbchw->abchw", coeff, grads)
    acts = spec.to_map(leaf.detach(), height, width)
    return GRADIENT_METHODS[method](acts, combined).clamp(min=0), logits.detach()


def vit_model(seed=5, **kw):
    torch.manual_seed(seed)
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)
    cfg.update(kw)
    return scaled_head(timm.create_model("vit_tiny_patch16_224", **cfg), 8.0).eval()


def close(a, b, rel=1e-5):
    return float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1e-12)


CASES = {
    "cls, default layer": (dict(reg_tokens=2, dynamic_img_size=True), None, "vit-reentry-cls"),
    "cls, earlier norm1": (dict(), "blocks.0.norm1", "vit-reentry-cls"),
    "cls, block output": (dict(), "blocks.1", "vit-reentry-cls"),
    "cls, last block output": (dict(), "blocks.2", "vit-reentry"),
    "layer scale + qk norm": (dict(init_values=0.3, qk_norm=True), None, "vit-reentry-cls"),
    "avg pool": (dict(global_pool="avg", class_token=False), None, "vit-reentry"),
    "avg pool, norm1": (dict(global_pool="avg"), "blocks.1.norm1", "vit-reentry"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reentry_equals_hook_and_old_engine(case):
    kw, layer, plan = CASES[case]
    model = vit_model(**kw)
    x = torch.randn(3, 3, 32, 48 if kw.get("dynamic_img_size") else 32, generator=torch.Generator().manual_seed(1))
    alphas = [0.0, 0.6, 1.0]
    fast = explain(model, x, alpha=alphas, target_layer=layer)
    hook = explain(model, x, alpha=alphas, target_layer=layer, reentry=False)
    assert fast.extras["plan"] == plan and hook.extras["plan"] == "hook"
    assert close(fast.logits, hook.logits) and torch.equal(fast.references, hook.references)
    assert close(fast.raw_maps, hook.raw_maps) and float((fast.maps - hook.maps).abs().max()) <= 1e-4
    old, old_logits = old_engine_raw(model, x, layer, "gradcam", alphas)
    assert close(fast.logits, old_logits) and close(fast.raw_maps, old)


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "hirescam"])
def test_every_method_equals_the_old_engine(resnet, images, vit, vit_images, method):
    for model, x in ((resnet, images), (vit, vit_images)):
        for alphas in ([1.0], [0.0, 0.5, 1.0]):
            new = explain(model, x, method=method, alpha=alphas)
            old, _ = old_engine_raw(model, x, None, method, alphas)
            assert close(new.raw_maps, old), (type(model).__name__, alphas)


def test_single_alpha_map_equals_its_slot_in_a_sweep(vit, vit_images):
    sweep = explain(vit, vit_images, alpha=[0.0, 0.7, 1.3])
    one = explain(vit, vit_images, alpha=0.7)
    assert close(one.raw_maps, sweep.raw_maps[1])


class Wrapped(nn.Module):
    """A model that holds a ViT and its own head: no re-entry is known for it, the hook plan runs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.backbone = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3,
                                          num_heads=2, num_classes=0)
        self.head = nn.Linear(32, 6)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_models_without_a_known_split_take_the_hook_plan(resnet, images):
    model = Wrapped().eval()
    x = torch.randn(2, 3, 32, 32)
    e = explain(model, x, alpha=[0.0, 1.0])
    assert e.layer == "backbone.blocks.2.norm1" and e.extras["plan"] == "hook"
    old, _ = old_engine_raw(model, x, None, "gradcam", [0.0, 1.0])
    assert close(e.raw_maps, old)
    assert explain(resnet, images).extras["plan"] == "hook"

    class Custom(timm.models.vision_transformer.VisionTransformer):
        def forward(self, x):  # a forward of its own: the re-entry cannot assume what it does
            return super().forward(x) * 2

    custom = Custom(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=4).eval()
    assert vit_plan(custom, custom.blocks[0].norm1) is None
    assert explain(custom, x).extras["plan"] == "hook"


def test_reentry_leaves_no_hooks_and_no_grads():
    model = vit_model()
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        explain(model, x, alpha=[0.0, 1.0])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
