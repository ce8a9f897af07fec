"""Multi-modal Finer-CAM on a small randomly initialised open_clip model (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from traitlens.explain.clip import concept_classifier, explain_concepts, vision_layer  # noqa: E402

CONCEPTS = ["red wing patch", "orange wing patch", "yellow wing patch", "blue crown", "striped tail"]


@pytest.fixture(scope="module")
def clip_setup():
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32,
                                                                  head_width=32),
                           text_cfg=CLIPTextCfg(context_length=16, width=32, heads=2, layers=1)).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    return model, tokenizer, concept_classifier(model, tokenizer, CONCEPTS, templates=("{}", "a bird with {}"))


def test_concept_logits_are_scaled_cosine_similarities(clip_setup):
    model, tokenizer, clf = clip_setup
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        txt = torch.stack([torch.nn.functional.normalize(model.encode_text(tokenizer([c, f"a bird with {c}"])), dim=-1)
                           .mean(0) for c in CONCEPTS])
        expected = model.logit_scale.exp() * img @ torch.nn.functional.normalize(txt, dim=-1).T
        assert torch.allclose(clf(x), expected, atol=1e-4)


def test_concept_finer_cam_matches_grad_cam_package(clip_setup):
    from pytorch_grad_cam import FinerCAM
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    model, _, clf = clip_setup
    x = torch.randn(2, 3, 32, 32)
    e = explain_concepts(clf, x, target="red wing patch", references=["orange wing patch", "yellow wing patch"],
                         alpha=[0.0, 1.0])
    assert e.target.tolist() == [0, 0] and e.references.tolist() == [[1, 2], [1, 2]]
    assert e.maps.shape == (2, 2, 32, 32) and e.raw_maps.shape == (2, 2, 4, 4)
    spec = vision_layer(model)
    with FinerCAM(clf, [spec.module], reshape_transform=lambda t: spec.to_map(t, 32, 32)) as cam:
        pkg = cam(x, targets=[FinerWeightedTarget(0, [1, 2], 1.0)] * 2)
    assert np.abs(e.maps[1].numpy() - pkg).max() <= 1e-4


def test_concept_references_by_text_similarity(clip_setup):
    _, _, clf = clip_setup
    x = torch.randn(2, 3, 32, 32)
    e = explain_concepts(clf, x, target=0, references="weight-cosine", k=2)
    w = torch.nn.functional.normalize(clf.head.weight, dim=-1)
    nearest = (w[0] @ w.T).argsort(descending=True)[1:3]
    assert e.references[0].tolist() == nearest.tolist()
    base = explain_concepts(clf, x, target=0, finer=False)
    zero = explain_concepts(clf, x, target=0, references="weight-cosine", k=2, alpha=0.0)
    assert torch.equal(base.maps, zero.maps)
