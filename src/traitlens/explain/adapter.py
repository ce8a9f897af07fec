"""Any CAM of the ``grad-cam`` package (``pytorch_grad_cam``) as the base of a (Finer) explanation.

traitlens' own engine covers Grad-CAM, HiResCAM, Grad-CAM++, XGrad-CAM, Layer-CAM and Score-CAM; for
every other method of the package (EigenCAM, AblationCAM, ShapleyCAM, FullGrad, ...) this adapter
gives it the same "what": the class logit or the epsilon-free Finer score with the same reference
selection. It runs the package as the package runs (its own hooks, a full backward, numpy maps), once
per α, so it is the compatible path, not the fast one. ``raw_maps`` are the package's maps (it does
not expose the feature-resolution map).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.explanation import Explanation
from traitlens.explain.layers import resolve_layer
from traitlens.explain.targets import alpha_list, finer_target, model_references, resolve_classes


class FinerScore:
    """A ``pytorch_grad_cam`` target: the Finer score of one sample (1-D logits → scalar)."""

    def __init__(self, target: int, references: Sequence[int], alpha: float, weights: str = "softmax",
                 detach_weights: bool = False):
        self.target = torch.tensor([int(target)])
        self.references = torch.tensor([[int(r) for r in references]], dtype=torch.long)
        self.alpha = float(alpha)
        self.weights = weights
        self.detach_weights = detach_weights

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logits = output[None] if output.dim() == 1 else output
        refs = self.references.to(logits.device)
        if refs.numel() == 0:
            refs = refs.reshape(1, 0)
        return finer_target(logits, self.target.to(logits.device), refs, self.alpha, self.weights,
                            self.detach_weights)[0]


def explain_with_package(model: nn.Module, images: torch.Tensor, cam_class, finer: bool = True, alpha=1.0,
                         target=None, references="logit-distance", target_layer=None, k: int = 3,
                         weights: str = "softmax", detach_weights: bool = False,
                         class_names: Optional[Sequence[str]] = None, traits=None):
    """:func:`traitlens.explain.explain` with a ``pytorch_grad_cam`` CAM class (or its name) as the method."""
    cam_class = package_method(cam_class)
    spec = resolve_layer(model, target_layer)
    alphas, sweep = alpha_list(alpha)  # the engine's validation: α ≥ 0
    device = next(model.parameters()).device
    images = images.to(device)
    height, width = images.shape[-2:]
    was_training = model.training
    with torch.no_grad():
        model.eval()
        logits = model(images)
    num_classes = logits.shape[1]
    tgt = (logits.argmax(1) if target is None
           else resolve_classes(target, num_classes, images.shape[0], class_names, device))
    if finer:
        refs = model_references(model, logits, tgt, references, k, class_names, traits)
    else:
        refs = torch.empty(images.shape[0], 0, dtype=torch.long, device=device)
    refs_list = [[r for r in row if r >= 0] for row in refs.tolist()]
    maps = []
    cam = cam_class(model=model, target_layers=[spec.module],
                    reshape_transform=lambda act: spec.to_map(act, height, width))
    try:
        for a in alphas:
            targets = [FinerScore(t, r, a, weights, detach_weights) for t, r in zip(tgt.tolist(), refs_list)]
            maps.append(torch.as_tensor(cam(input_tensor=images, targets=targets), device=device))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
    maps = torch.stack(maps).float()
    scores = torch.stack([finer_target(logits, tgt, refs, a, weights) for a in alphas])
    if not sweep:
        maps, scores = maps[0], scores[0]
    return Explanation(maps=maps, raw_maps=maps, logits=logits, target=tgt, references=refs,
                       alpha=alphas if sweep else alphas[0], scores=scores, method=f"pgc:{cam_class.__name__}",
                       finer=finer, layer=spec.name)


def package_method(cam_class):
    """A ``pytorch_grad_cam`` CAM class, or its name (``"EigenCAM"``, ``"pgc:EigenCAM"``) → the class."""
    if isinstance(cam_class, type):
        return cam_class
    name = str(cam_class).split(":", 1)[-1]
    try:
        import pytorch_grad_cam
    except ImportError as err:
        raise UserError("the grad-cam package is not installed; pip install grad-cam") from err
    cls = getattr(pytorch_grad_cam, name, None)
    if not isinstance(cls, type):
        known = [n for n in dir(pytorch_grad_cam) if n.endswith("CAM") or n == "FullGrad"]
        raise UserError(f"pytorch_grad_cam has no CAM {name!r}; known: {', '.join(known)}")
    return cls
