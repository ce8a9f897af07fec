"""The app's model side: one checkpoint, its preprocessing, and Finer-CAM maps that follow an α slider.

A Finer-CAM map is ``ReLU(cam(A, Σ_j c_j(α) · ∂z_j/∂A))``: the gradients ``∂z_j/∂A`` of the ``k + 1``
logits involved (the target and its references) do not depend on α, only the coefficients ``c(α)``
(:func:`traitlens.explain.targets.finer_coefficients`) do. :class:`MapCache` keeps the activations and
those gradients of one image after one forward and one backward (the engine's own hook and batched
backward, :mod:`traitlens.explain.engine`), so moving the slider recombines a few small tensors and
never runs the model again; the map at any α equals ``explain(model, image, alpha=α)`` (tested).
The base CAM is the same cache at α = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from traitlens.errors import BadImageError, UserError
from traitlens.explain.cams import GRADIENT_METHODS, canonical_method
from traitlens.explain.engine import frozen, upsample
from traitlens.explain.split import record_from_layer
from traitlens.explain.layers import resolve_layer
from traitlens.explain.targets import class_index, finer_coefficients, model_references

#: The comparison modes the page offers, and the reference mode of :func:`select_references` behind each.
COMPARISONS = {"auto (most similar)": "logit-distance", "siblings (same genus)": "taxonomy",
               "chosen classes": None}
METHOD_TITLES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
                 "layercam": "Layer-CAM"}


def logit_gradients(logits: torch.Tensor, leaf: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """∂z_{index[b, j]} / ∂leaf for every j: B×J indices → J×B×(leaf shape[1:]); what the α slider recombines
    (one backward per involved logit, the graph kept between them)."""
    j = index.shape[1]
    onehots = torch.zeros(j, *logits.shape, dtype=logits.dtype, device=logits.device)
    onehots.scatter_(2, index.T[:, :, None], 1.0)
    return torch.stack([torch.autograd.grad(logits, leaf, onehots[i], retain_graph=i < j - 1)[0] for i in range(j)])


@dataclass
class MapCache:
    """One image's forward and backward, kept so that the map for any α is a recombination.

    acts: 1×C×h×w activations of the explanation layer; grads: J×1×C×h×w gradients of the logits
    ``[target, ref_1..ref_k]`` (J = k + 1); logits: 1×K; target: 1; references: 1×k (-1: empty slot).
    """

    acts: torch.Tensor
    grads: torch.Tensor
    logits: torch.Tensor
    target: torch.Tensor
    references: torch.Tensor
    method: str
    weights: str = "softmax"
    detach_weights: bool = False
    layer: str = ""

    def raw(self, alpha: float) -> torch.Tensor:
        """The map at feature resolution after the ReLU, h×w (as ``Explanation.raw_maps``)."""
        if alpha < 0:
            raise UserError(f"alpha must be ≥ 0, got {alpha}")
        coeff = finer_coefficients(self.logits, self.target, self.references, [float(alpha)], self.weights,
                                   self.detach_weights).to(self.grads.dtype)  # 1×1×J
        # Same order of operations as the engine, so the maps agree with explain() to the last bit at α = 0.
        combined = coeff[:, :, 0, None, None, None] * self.grads[0]
        if self.grads.shape[0] > 1:
            combined = combined + torch.einsum("abj,jbchw->abchw", coeff[:, :, 1:], self.grads[1:])
        return GRADIENT_METHODS[self.method](self.acts, combined).clamp(min=0)[0, 0]

    def map(self, alpha: float, size: Tuple[int, int]) -> torch.Tensor:
        """The map upsampled to ``size`` and normalised to [0, 1], H×W."""
        return upsample(self.raw(alpha)[None], size)[0]


class Explorer:
    """A loaded checkpoint with what the page needs: preprocessing, class names, traits, maps and heads.

    ``model``/``meta`` as :func:`traitlens.methods.load_model` returns them; ``traits``: an optional
    TraitTable (siblings for the comparison picker, part names for the Segment tab).
    """

    def __init__(self, model: nn.Module, meta: dict, traits=None, display_size: int = 224):
        from traitlens.engine.checkpoint import config_from_meta
        from traitlens.engine.data import eval_transform

        self.model, self.meta, self.traits = model.eval(), meta, traits
        self.class_names: List[str] = list(meta.get("class_names") or
                                           [str(i) for i in range(int(meta.get("num_classes", 0)))])
        self.method = getattr(model, "traitlens_method", meta.get("method", ""))
        self.transform = eval_transform(model, config_from_meta(meta))
        self.display_size = int(display_size)
        self.device = next(model.parameters()).device
        self._layer_error: Optional[str] = None
        if self.has_heads:
            # Prompt-CAM runs its blocks with prompts outside the backbone's own forward, INTR reads its maps
            # from the decoder: they explain themselves per head, and no CAM layer of theirs is ever called.
            self.layer, self._layer_error = None, f"a {self.method} model explains itself per head: see the Heads tab"
        else:
            try:
                self.layer = resolve_layer(model)
            except UserError as exc:
                self.layer, self._layer_error = None, str(exc)

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], traits=None, device: str = "cpu",
                        display_size: int = 224) -> "Explorer":
        from traitlens.methods import load_model

        model, meta = load_model(checkpoint, device=device)
        return cls(model, meta, traits=traits, display_size=display_size)

    # ---------------------------------------------------------------------------------- images
    def load(self, path: Union[str, Path]) -> Tuple[torch.Tensor, np.ndarray]:
        """An image file → (model input 1×3×H×W normalised, display image uint8 H'×W'×3 of what the
        model sees, its longer side ``display_size``)."""
        from traitlens.data.imageio import load_image
        from traitlens.data.transforms import denormalize

        try:
            image = load_image(path)
        except BadImageError as exc:
            raise UserError(f"{Path(str(exc.path)).name}: {exc.reason}") from None
        x = self.transform(image)[0][None]  # the transform returns (image, mask)
        seen = denormalize(x[0], self.transform.mean, self.transform.std, as_uint8=True)
        display = np.asarray(_resize(seen, self.display_size))
        return x.to(self.device), display

    def top(self, logits: torch.Tensor, k: int = 5) -> Dict[str, float]:
        """The top-``k`` classes of 1×K logits as ``{name: probability}``."""
        p = torch.softmax(logits.float(), -1)[0]
        values, idx = p.topk(min(k, p.numel()))
        return {self.class_names[i]: float(v) for v, i in zip(values.tolist(), idx.tolist())}

    def class_id(self, name: str, what: str = "class") -> int:
        return class_index(name, len(self.class_names), self.class_names, what)

    # ------------------------------------------------------------------------------------ maps
    def gradients(self, x: torch.Tensor, method: str = "gradcam", target=None, comparison: str = "logit-distance",
                  classes: Sequence[str] = (), k: int = 3, weights: str = "softmax") -> MapCache:
        """One forward and one batched backward of image ``x`` (1×3×H×W) → a :class:`MapCache`.

        target: None (the predicted class) or a class name/id; comparison: a reference mode of
        :func:`~traitlens.explain.targets.select_references` (``logit-distance``, ``taxonomy``, ...) or
        None for the explicit ``classes`` (names).
        """
        if self.layer is None:
            raise UserError(f"Finer-CAM cannot explain this {self.method or 'model'}: {self._layer_error}")
        method = canonical_method(method)
        if method not in GRADIENT_METHODS:
            raise UserError(f"unknown CAM method {method!r} for the app; choose one of {', '.join(GRADIENT_METHODS)}")
        if comparison == "taxonomy" and self.traits is None:
            raise UserError("siblings need the collection's traits.json: start the app with --data DIR")
        if comparison is None and not classes:
            raise UserError("choose at least one comparison class")
        spec = self.layer
        height, width = x.shape[-2:]
        # The graph starts at the target layer (the layers before it run without autograd), as in explain().
        with frozen(self.model), torch.enable_grad():
            recorded = record_from_layer(self.model, spec.module, x, spec.name)
            logits, leaf = recorded.logits, recorded.leaf
            tgt = (logits.detach().argmax(1) if target in (None, "")
                   else torch.tensor([self.class_id(target, "target")], device=x.device))
            mode = comparison if comparison is not None else [self.class_id(c, "comparison") for c in classes]
            refs = model_references(self.model, logits.detach(), tgt, mode, k, self.class_names, self.traits)
            index = torch.cat([tgt[:, None], refs.clamp(min=0)], dim=1)  # 1×J
            grads = logit_gradients(logits, leaf, index)  # J×1×...
            j = grads.shape[0]
            grads = spec.to_map(grads.flatten(0, 1), height, width).unflatten(0, (j, -1))  # J×1×C×h×w
            acts = spec.to_map(leaf.detach(), height, width)
        return MapCache(acts=acts.detach(), grads=grads.detach(), logits=logits.detach(), target=tgt,
                        references=refs, method=method, weights=weights, layer=spec.name)

    @property
    def cam_problem(self) -> Optional[str]:
        """Why this model has no CAM maps (None when it has)."""
        return self._layer_error if self.layer is None else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """1×K logits of image ``x`` (no gradients)."""
        with torch.no_grad():
            return self.model(x)

    def names(self, ids: torch.Tensor) -> List[str]:
        return [self.class_names[int(i)] for i in ids.reshape(-1).tolist() if int(i) >= 0]

    # ----------------------------------------------------------------------------------- heads
    @property
    def has_heads(self) -> bool:
        """Whether the model explains itself per attention head (Prompt-CAM, INTR)."""
        return hasattr(self.model, "identify_traits") and hasattr(self.model, "class_attention")

    def heads(self, x: torch.Tensor, cls=None, top_k: int = 4):
        """Greedy head blurring for class ``cls`` (None: the predicted class) on image ``x`` (1×3×H×W).

        For a class other than the predicted one this is "looking through that class's prompt": blurring
        does not stop when the image stops being classified as it. Returns (TraitHeads, logits 1×K).
        """
        if not self.has_heads:
            raise UserError(f"this checkpoint is a {self.method or type(self.model).__name__} model; the Heads view "
                            "needs a prompt-cam or intr checkpoint")
        with torch.no_grad():
            logits = self.model(x)
            pred = int(logits.argmax(1))
            c = pred if cls in (None, "") else self.class_id(cls)
            classes = torch.tensor([c], device=x.device)
            found = self.model.identify_traits(x, classes, top_k=top_k, stop_on_misclassification=c == pred)
        return found, logits


def _resize(image: np.ndarray, size: int):
    from PIL import Image

    pil = Image.fromarray(image)
    scale = size / max(pil.size)  # the longer side becomes ``size``, the aspect ratio is kept
    wanted = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    return pil if wanted == pil.size else pil.resize(wanted, Image.BILINEAR)
