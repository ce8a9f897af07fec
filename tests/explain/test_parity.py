"""traitlens' CAMs equal the grad-cam package's on the same model, layer and targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (FinerCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                              XGradCAM)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

from traitlens.explain import explain

PACKAGE = {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM,
           "layercam": LayerCAM}


def vit_reshape(height, width, prefix=3, patch=8):
    """An independent reshape for grad-cam: drop CLS + 2 registers, tokens → B×C×gh×gw."""
    def reshape(t):
        b, n, c = t.shape
        return t[:, prefix:].reshape(b, height // patch, width // patch, c).permute(0, 3, 1, 2)
    return reshape


def package_raw(cam, x, targets):
    """The package's map at feature resolution, normalised the package's way (its pre-resize step)."""
    cam(input_tensor=x, targets=targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(x, None, targets, acts, grads, False)
    return scale_cam_image(np.maximum(raw, 0))


def finer_targets(e, alpha):
    return [FinerWeightedTarget(int(t), [int(r) for r in rr], alpha) for t, rr in zip(e.target, e.references)]


@pytest.mark.parametrize("method", list(PACKAGE))
def test_gradient_methods_match_package_on_resnet(resnet, images, method):
    ours = explain(resnet, images, method=method, finer=False)
    assert ours.layer == "layer4"
    targets = [ClassifierOutputTarget(int(t)) for t in ours.target]
    with PACKAGE[method](resnet, [resnet.layer4]) as cam:
        raw = package_raw(cam, images, targets)
        full = cam(input_tensor=images, targets=targets)
    from traitlens.explain.engine import normalise
    assert np.abs(normalise(ours.raw_maps).numpy() - raw).max() <= 1e-5
    # After resizing: cv2's and torch's bilinear resize agree to float rounding.
    assert np.abs(ours.maps.numpy() - full).max() <= 1e-4


def test_gradcam_matches_package_on_vit_with_registers(vit, vit_images):
    ours = explain(vit, vit_images, finer=False)
    assert ours.layer == "blocks.1.norm1" and ours.raw_maps.shape == (3, 4, 6)
    targets = [ClassifierOutputTarget(int(t)) for t in ours.target]
    with GradCAM(vit, [vit.blocks[-1].norm1], reshape_transform=vit_reshape(32, 48)) as cam:
        raw = package_raw(cam, vit_images, targets)
    from traitlens.explain.engine import normalise
    assert np.abs(normalise(ours.raw_maps).numpy() - raw).max() <= 1e-5


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_finer_matches_package_finercam(which, resnet, vit, images, vit_images):
    model, x = (resnet, images) if which == "resnet" else (vit, vit_images)
    ours = explain(model, x, finer=True, alpha=[0.5, 1.0])
    # Moderate logits: the references' softmax mass is far above the package's 1e-9.
    gaps = (ours.logits.max(1).values - ours.logits.min(1).values)
    assert 1.0 < float(gaps.min()) and float(gaps.max()) < 40
    layer = model.layer4 if which == "resnet" else model.blocks[-1].norm1
    reshape = None if which == "resnet" else vit_reshape(32, 48)
    for ai, alpha in enumerate([0.5, 1.0]):
        with FinerCAM(model, [layer], reshape_transform=reshape) as cam:
            full = cam(x, targets=finer_targets(ours, alpha))
            raw = cam.base_cam.get_cam_image(x, None, None, cam.base_cam.activations_and_grads.activations[0].numpy(),
                                             cam.base_cam.activations_and_grads.gradients[0].numpy(), False)
        from traitlens.explain.engine import normalise
        assert np.abs(normalise(ours.raw_maps[ai]).numpy() - scale_cam_image(np.maximum(raw, 0))).max() <= 1e-4
        assert np.abs(ours.maps[ai].numpy() - full).max() <= 1e-4


def test_default_reference_selection_matches_package(resnet, images):
    """With no targets, FinerCAM picks the predicted class and ranks 1..3 by |z_j − z_max|: so do we."""
    ours = explain(resnet, images, finer=True, alpha=1.0)
    with FinerCAM(resnet, [resnet.layer4]) as cam:
        full = cam(images)
    assert np.abs(ours.maps.numpy() - full).max() <= 1e-4


def test_scorecam_matches_package(vit, vit_images):
    ours = explain(vit, vit_images, method="scorecam", finer=False, score_batch_size=40)
    targets = [ClassifierOutputTarget(int(t)) for t in ours.target]
    with ScoreCAM(vit, [vit.blocks[-1].norm1], reshape_transform=vit_reshape(32, 48)) as cam:
        full = cam(input_tensor=vit_images, targets=targets)
    assert np.abs(ours.maps.numpy() - full).max() <= 1e-4


def test_scorecam_finer_matches_package_with_finer_target(vit, vit_images):
    ours = explain(vit, vit_images, method="scorecam", finer=True, alpha=1.0)
    with ScoreCAM(vit, [vit.blocks[-1].norm1], reshape_transform=vit_reshape(32, 48)) as cam:
        full = cam(input_tensor=vit_images, targets=finer_targets(ours, 1.0))
    assert np.abs(ours.maps.numpy() - full).max() <= 1e-4


def test_package_adapter_runs_any_grad_cam_method(resnet, images):
    """The adapter with the package's GradCAM as base reproduces the native engine."""
    native = explain(resnet, images, finer=True, alpha=[0.0, 1.0])
    adapted = explain(resnet, images, method=GradCAM, finer=True, alpha=[0.0, 1.0])
    assert adapted.method == "pgc:GradCAM"
    assert torch.equal(adapted.references, native.references)
    assert (adapted.maps - native.maps).abs().max() <= 1e-4
    eigen = explain(resnet, images, method="pgc:EigenCAM", finer=False)
    assert eigen.maps.shape == (4, 64, 64) and float(eigen.maps.max()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "pgc:GradCAM", "pgc:EigenCAM", GradCAM])
@pytest.mark.parametrize("alpha", [-0.5, [0.0, -1.0], []])
def test_native_and_package_methods_refuse_the_same_alphas(resnet, images, method, alpha):
    from traitlens.errors import UserError

    with pytest.raises(UserError, match="alpha must be ≥ 0"):
        explain(resnet, images, method=method, finer=True, alpha=alpha)
