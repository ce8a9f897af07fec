"""Multi-modal Finer-CAM: explain an image-text similarity against similar text concepts.

For a CLIP-style model (open_clip, including BioCLIP when the user has its weights) the "classes" are
text prompts. :class:`ConceptClassifier` turns the model and a list of concepts into an image
classifier whose logits are ``logit_scale · cos(image, text_j)`` and whose linear head holds the text
embeddings, so everything in :func:`traitlens.explain.explain` applies: Finer-CAM explains what makes
the image "red wing patch" rather than "orange wing patch", ``references="weight-cosine"`` compares
with the concepts nearest in text space, and the target layer is the vision tower's last block.

open_clip is an optional extra (``pip install traitlens[clip]``), imported only here and only lazily.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.engine import Explanation, LayerSpec, explain


class ConceptClassifier(nn.Module):
    """Images B×3×H×W → logits B×K over text concepts (the head's rows are scaled text embeddings)."""

    def __init__(self, clip_model: nn.Module, text_features: torch.Tensor, logit_scale: float,
                 concepts: Sequence[str]):
        super().__init__()
        self.clip = clip_model
        self.concepts = list(concepts)
        self.head = nn.Linear(text_features.shape[1], text_features.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(F.normalize(text_features.float(), dim=-1) * float(logit_scale))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.clip.encode_image(images), dim=-1))

    def get_classifier(self) -> nn.Linear:
        return self.head


def concept_classifier(clip_model: nn.Module, tokenizer, concepts: Sequence[str],
                       templates: Sequence[str] = ("{}",)) -> ConceptClassifier:
    """Embed ``concepts`` (each averaged over ``templates`` such as ``"a photo of a bird with {}"``)."""
    if not concepts or len(set(concepts)) != len(concepts):
        raise UserError("give at least one concept, without duplicates")
    device = next(clip_model.parameters()).device
    prompts = [t.format(c) for c in concepts for t in templates]
    with torch.no_grad():
        emb = F.normalize(clip_model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
        emb = emb.view(len(concepts), len(templates), -1).mean(1)
        scale = clip_model.logit_scale.exp().item() if hasattr(clip_model, "logit_scale") else 100.0
    return ConceptClassifier(clip_model, emb, scale, concepts).to(device).eval()


def vision_layer(clip_model: nn.Module) -> LayerSpec:
    """The explanation layer of an open_clip vision tower: the last block's first norm (ViT, class token
    dropped, any grid) or the last stage (ModifiedResNet)."""
    visual = getattr(clip_model, "visual", clip_model)
    if hasattr(visual, "transformer") and hasattr(visual, "patch_size"):
        block = visual.transformer.resblocks[-1]
        module = getattr(block, "ln_1", block)
        ph, pw = (visual.patch_size if isinstance(visual.patch_size, (tuple, list))
                  else (visual.patch_size, visual.patch_size))
        batch_first = getattr(visual.transformer, "batch_first", True)

        def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
            if not batch_first:
                tokens = tokens.transpose(0, 1)
            gh, gw = height // ph, width // pw
            prefix = tokens.shape[1] - gh * gw
            if prefix < 0:
                raise UserError(f"{tokens.shape[1]} tokens do not fit a {gh}×{gw} grid")
            patches = tokens[:, prefix:]
            return patches.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

        return LayerSpec(module, to_map, "visual.transformer.resblocks[-1].ln_1")
    if hasattr(visual, "layer4"):
        return LayerSpec(visual.layer4, lambda act, h, w: act, "visual.layer4")
    raise UserError(f"cannot find the explanation layer of vision tower {type(visual).__name__}")


def explain_concepts(classifier: ConceptClassifier, images: torch.Tensor, target: Union[int, str, Sequence, None] = None,
                     references: Union[str, Sequence] = "logit-distance", alpha=1.0, method: str = "gradcam",
                     finer: bool = True, k: int = 3, target_layer: Optional[LayerSpec] = None, **kw) -> Explanation:
    """Finer-CAM of an image-text similarity: ``target`` and ``references`` are concept names or indices
    (``references`` may also be a selection mode; ``"weight-cosine"`` = the nearest concepts in text space)."""
    spec = target_layer or vision_layer(classifier.clip)
    return explain(classifier, images, method=method, finer=finer, alpha=alpha, target=target,
                   references=references, target_layer=spec, k=k, class_names=classifier.concepts, **kw)
