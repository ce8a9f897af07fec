"""Feature extractors: shapes, unit norm, backbone patch grids from the layout, concatenation."""

from __future__ import annotations

import torch

from traitlens.segment.features import BackboneFeatures, ColourPositionFeatures, ConcatFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions


def test_colour_features_are_unit_norm_and_context_separates_boundaries():
    x = torch.rand(2, 3, 20, 24)
    for context in (0, 1, 2):
        f = ColourPositionFeatures(context=context)(x)
        assert f.shape[:1] == (2,) and f.shape[-2:] == (20, 24)
        assert torch.allclose(f.norm(dim=1), torch.ones(2, 20, 24), atol=1e-5)
    # two same-coloured pixels, one beside a red region and one beside a blue one
    img = torch.full((1, 3, 8, 8), 0.5)
    img[..., :, :2] = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    img[..., :, 6:] = torch.tensor([0, 0, 1.0]).view(1, 3, 1, 1)
    plain = ColourPositionFeatures(context=0, position_weight=0)(img)
    ctx = ColourPositionFeatures(context=1, position_weight=0)(img)
    sim = lambda f: float((f[0, :, 4, 2] * f[0, :, 4, 5]).sum())  # noqa: E731
    assert sim(plain) > 0.999 and sim(ctx) < 0.97


def test_backbone_features_follow_the_token_layout():
    from traitlens.backbones import create

    torch.manual_seed(0)
    vit = create("tiny-vit")
    feats = BackboneFeatures(vit, input_size=(64, 64))
    out = feats(torch.rand(2, 3, 50, 40))
    assert out.shape[0] == 2 and out.shape[-2:] == (8, 8)  # patch 8 at 64 px
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 8, 8), atol=1e-4)
    both = ConcatFeatures([(feats, 0.5), (ColourPositionFeatures(), 0.5)])
    joint = both(torch.rand(1, 3, 32, 32))
    assert joint.shape[-2:] == (32, 32)
    img = torch.rand(3, 32, 32)
    lab = torch.zeros(32, 32, dtype=torch.long)
    lab[4:12, 4:20] = 1
    prop = LabelPropagation(both, LabelPropOptions(work_size=(32, 32), align=True, local=2))
    prop.reset(2)
    prop.add_support(img, lab)
    assert prop.predict(img).shape == (2, 32, 32)
