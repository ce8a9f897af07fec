"""Engine properties: batching, α = 0, the GAP+linear closed form, hooks, the epsilon-free score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import FinerCAM
from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

from traitlens.errors import UserError
from traitlens.explain import explain, finer_coefficients, finer_target, select_references


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "scorecam"])
def test_batch_equals_one_at_a_time(vit, vit_images, method):
    batch = explain(vit, vit_images, method=method, alpha=[0.0, 1.0])
    for i in range(vit_images.shape[0]):
        one = explain(vit, vit_images[i:i + 1], method=method, alpha=[0.0, 1.0])
        assert torch.equal(one.references[0], batch.references[i])
        assert (one.raw_maps[:, 0] - batch.raw_maps[:, i]).abs().max() <= 1e-5 * batch.raw_maps.abs().max()
        assert (one.maps[:, 0] - batch.maps[:, i]).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "scorecam"])
def test_alpha_zero_is_the_base_cam(resnet, images, method):
    resnet_images = images[:1] if method == "scorecam" else images
    base = explain(resnet, resnet_images, method=method, finer=False, score_channels=32)
    finer = explain(resnet, resnet_images, method=method, finer=True, alpha=[0.0, 1.0], score_channels=32)
    assert torch.equal(finer.raw_maps[0], base.raw_maps)
    assert torch.equal(finer.maps[0], base.maps)
    assert not torch.allclose(finer.maps[1], base.maps)


def test_sweep_equals_separate_calls(resnet, images):
    sweep = explain(resnet, images, alpha=[0.0, 0.25, 0.5, 1.0, 2.0])
    for ai, a in enumerate([0.0, 0.25, 0.5, 1.0, 2.0]):
        single = explain(resnet, images, alpha=a)
        assert (sweep.raw_maps[ai] - single.raw_maps).abs().max() <= 1e-6 * single.raw_maps.abs().max().clamp(min=1)
    assert sweep.maps.shape == (5, 4, 64, 64) and sweep.alpha == [0.0, 0.25, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("detach", [True, False])
def test_closed_form_for_gap_linear(gap_linear, images, detach):
    x = images[:, :, :16, :16]
    alpha = 0.7
    e = explain(gap_linear, x, alpha=alpha, target_layer="features", detach_weights=detach)
    with torch.no_grad():
        acts = gap_linear.features(x)  # B×C×h×w
    hw = acts.shape[-1] * acts.shape[-2]
    W = gap_linear.fc.weight
    zr = torch.gather(e.logits, 1, e.references)
    w = torch.softmax(zr, 1)
    if detach:  # the form: (W_n − α Σ w_i W_{r_i}) / HW
        coeff_r = w
    else:  # differentiating through the softmax weights adds w_i (z_{r_i} − z̄)
        coeff_r = w * (1 + zr - (w * zr).sum(1, keepdim=True))
    weights = (W[e.target] - alpha * (coeff_r[:, :, None] * W[e.references]).sum(1)) / hw
    expected = torch.einsum("bc,bchw->bhw", weights, acts).clamp(min=0)
    assert (e.raw_maps - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_coefficients_equal_autograd_of_the_score():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 8, generator=g) * 3
    tgt = torch.tensor([0, 3, 7, 2, 2])
    refs = select_references(z, tgt, "logit-distance", k=3)
    for detach in (False, True):
        for weights in ("softmax", "uniform"):
            zz = z.clone().requires_grad_(True)
            finer_target(zz, tgt, refs, 0.6, weights, detach).sum().backward()
            c = finer_coefficients(z, tgt, refs, [0.6], weights, detach)[0]
            dense = torch.zeros_like(z).scatter_add_(1, torch.cat([tgt[:, None], refs], 1), c)
            assert torch.allclose(dense, zz.grad, atol=1e-6)


def test_epsilon_free_score_survives_confident_logits(gap_linear, images):
    """The reference's Σp/(Σp+1e-9) collapses when references are ~100 logits below the target."""
    x = images[:2, :, :16, :16]
    with torch.no_grad():
        gap_linear.fc.weight.mul_(3000)
    try:
        e = explain(gap_linear, x, alpha=1.0, target_layer="features")
        gap = (e.logits.max(1).values - torch.gather(e.logits, 1, e.references).max(1).values)
        assert float(gap.min()) > 60
        acts = gap_linear.features(x).detach()
        w = torch.softmax(torch.gather(e.logits, 1, e.references), 1)
        zr = torch.gather(e.logits, 1, e.references)
        cr = w * (1 + zr - (w * zr).sum(1, keepdim=True))
        weights = gap_linear.fc.weight[e.target] - (cr[:, :, None] * gap_linear.fc.weight[e.references]).sum(1)
        expected = torch.einsum("bc,bchw->bhw", weights, acts).clamp(min=0).detach()
        assert float(expected.max()) > 0
        cos = torch.nn.functional.cosine_similarity(e.raw_maps.flatten(1), expected.flatten(1))
        assert float(cos.min()) > 0.9999
        with FinerCAM(gap_linear, [gap_linear.features]) as cam:
            pkg = cam(x, targets=[FinerWeightedTarget(int(t), r.tolist(), 1.0) for t, r in zip(e.target, e.references)])
        # The package's map is blank or unrelated: its gradient vanished with the softmax mass.
        pkg_t = torch.from_numpy(np.asarray(pkg))
        agree = torch.nn.functional.cosine_similarity(pkg_t.flatten(1), e.maps.flatten(1))
        assert float(pkg_t.max()) == 0.0 or float(agree.min()) < 0.9
    finally:
        with torch.no_grad():
            gap_linear.fc.weight.div_(3000)


def test_hooks_do_not_leak_over_1000_calls(gap_linear):
    x = torch.randn(2, 3, 4, 4)
    flags = [p.requires_grad for p in gap_linear.parameters()]
    gap_linear.zero_grad(set_to_none=True)  # other tests ran the package's full backward on it
    gap_linear.train()
    for i in range(1000):
        explain(gap_linear, x, alpha=[0.0, 1.0], target_layer="features")
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in gap_linear.modules())
    assert [p.requires_grad for p in gap_linear.parameters()] == flags
    assert gap_linear.training  # restored
    assert all(p.grad is None for p in gap_linear.parameters())
    gap_linear.eval()


def test_hooks_are_removed_when_the_forward_fails(gap_linear):
    with pytest.raises(RuntimeError):
        explain(gap_linear, torch.randn(2, 5, 8, 8), target_layer="features")  # wrong channel count
    assert len(gap_linear.features._forward_hooks) == 0
    assert all(p.requires_grad for p in gap_linear.parameters())


def test_explain_works_under_no_grad(resnet, images):
    with torch.no_grad():
        e = explain(resnet, images[:1])
    assert float(e.maps.max()) == pytest.approx(1.0, abs=1e-6)


def test_user_errors(resnet, images):
    with pytest.raises(UserError, match="unknown CAM method"):
        explain(resnet, images, method="nope")
    with pytest.raises(UserError, match="alpha"):
        explain(resnet, images, alpha=-1)
    with pytest.raises(UserError, match="no layer"):
        explain(resnet, images, target_layer="layer9")
    with pytest.raises(UserError, match="out of range"):
        explain(resnet, images, target=12)
    with pytest.raises(UserError, match="class names"):
        explain(resnet, images, target="Lazuli Bunting")


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "legrad", "pgc:GradCAM"])
@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), [0.5, float("-inf")], "abc"])
def test_non_finite_alphas_are_refused_by_every_method(vit, vit_images, method, alpha):
    with pytest.raises(UserError, match="alpha must be"):
        explain(vit, vit_images, method=method, finer=True, alpha=alpha)
