"""traitlens' CAMs equal torchcam's (an optional test dependency) on the same model, layer and targets."""

from __future__ import annotations

import pytest

from traitlens.explain import explain
from traitlens.explain.engine import normalise

torchcam = pytest.importorskip("torchcam")
from torchcam.methods import FinerCAM, GradCAM, GradCAMpp, LayerCAM  # noqa: E402

# torchcam divides by (max + 1e-8), traitlens by (max + 1e-7): compare with torchcam's epsilon.
EPS = 1e-8


def vit_reshape(t, height=32, width=48, prefix=3, patch=8):
    """An independent reshape for torchcam: drop CLS + 2 registers, tokens → B×C×gh×gw."""
    if t.dim() == 4:
        return t
    b, n, c = t.shape
    return t[:, prefix:].reshape(b, height // patch, width // patch, c).permute(0, 3, 1, 2)


def torchcam_map(cls, model, x, layer, reshape, class_idx=None, **kw):
    with cls(model, layer, reshape_transform=reshape, **kw) as cam:
        scores = model(x)
        idx = scores.argmax(1).tolist() if class_idx is None else class_idx
        return cam(idx, scores)[0].detach()


def models(resnet, vit, images, vit_images):
    return {"resnet": (resnet, images, "layer4", None), "vit": (vit, vit_images, "blocks.1.norm1", vit_reshape)}


@pytest.mark.parametrize("which", ["resnet", "vit"])
@pytest.mark.parametrize("method,cls", [("gradcam", GradCAM), ("layercam", LayerCAM)])
def test_base_cams_match_torchcam(resnet, vit, images, vit_images, which, method, cls):
    model, x, layer, reshape = models(resnet, vit, images, vit_images)[which]
    ours = explain(model, x, method=method, finer=False)
    theirs = torchcam_map(cls, model, x, layer, reshape)
    assert ours.raw_maps.shape == theirs.shape
    assert float((normalise(ours.raw_maps, EPS) - theirs).abs().max()) <= 1e-5


@pytest.mark.parametrize("which", ["resnet", "vit"])
@pytest.mark.parametrize("gamma,method,base", [(0.6, "gradcam", GradCAM), (1.0, "gradcam", GradCAM),
                                               (0.6, "layercam", LayerCAM)])
def test_finer_cam_matches_torchcam(resnet, vit, images, vit_images, which, gamma, method, base):
    """torchcam's FinerCAM is y_c − γ·mean(y_refs) over the 3 classes nearest in logit: our uniform weights."""
    model, x, layer, reshape = models(resnet, vit, images, vit_images)[which]
    ours = explain(model, x, method=method, finer=True, alpha=gamma, k=3, weights="uniform")
    theirs = torchcam_map(FinerCAM, model, x, layer, reshape, gamma=gamma, num_references=3, base_method=base)
    assert float((normalise(ours.raw_maps, EPS) - theirs).abs().max()) <= 1e-5
    sweep = explain(model, x, method=method, finer=True, alpha=[0.0, gamma], k=3, weights="uniform")
    assert float((normalise(sweep.raw_maps[1], EPS) - theirs).abs().max()) <= 1e-5


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_gradcampp_differs_from_torchcam_by_its_unapplied_alpha(resnet, vit, images, vit_images, which):
    """torchcam 0.5's GradCAMpp divides a boolean-indexed *copy* in place (``alpha[idx][mask].div_``), so its
    channel weights are Σ g²·ReLU(g), not Grad-CAM++'s Σ α·ReLU(g). traitlens follows the paper (and grad-cam,
    tests/explain/test_parity.py); here we check we reproduce torchcam's actual formula from our own
    gradients, so the difference is that and nothing else."""
    model, x, layer, reshape = models(resnet, vit, images, vit_images)[which]
    theirs = torchcam_map(GradCAMpp, model, x, layer, reshape)
    ours = explain(model, x, method="gradcam++", finer=False)
    captured = {}

    def weights_as_torchcam(a, g):
        captured["w"] = (g * g * g.clamp(min=0)).sum((-2, -1), keepdim=True)
        return (captured["w"] * a).sum(-3)

    from traitlens.explain import cams
    original = cams.GRADIENT_METHODS["gradcam++"]
    cams.GRADIENT_METHODS["gradcam++"] = weights_as_torchcam
    try:
        replayed = explain(model, x, method="gradcam++", finer=False)
    finally:
        cams.GRADIENT_METHODS["gradcam++"] = original
    assert float((normalise(replayed.raw_maps, EPS) - theirs).abs().max()) <= 1e-5
    assert float((normalise(ours.raw_maps, EPS) - theirs).abs().max()) > 1e-3
