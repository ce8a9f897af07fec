"""explain() takes what a notebook has: image paths, PIL images, uint8 arrays, 3×H×W or B×3×H×W tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.errors import UserError
from traitlens.explain import explain
from traitlens.explain.inputs import as_batch, preprocessing


def test_paths_pil_arrays_and_tensors_give_the_same_maps(checkpoint, collection):
    from traitlens.methods import load_model

    model, _ = load_model(checkpoint)
    path = next((collection / "test").rglob("*.png"))
    pil = Image.open(path).convert("RGB")
    x = model.traitlens_transform(pil)[0]  # what load_model gives a notebook to preprocess with
    assert preprocessing(model) is model.traitlens_transform and x.shape == (3, 32, 32)
    reference = explain(model, x[None], alpha=1.0)
    for given in (path, str(path), pil, np.asarray(pil), torch.from_numpy(np.array(pil)), x, [pil]):
        e = explain(model, given, alpha=1.0)
        assert e.maps.shape == reference.maps.shape
        assert torch.allclose(e.maps, reference.maps, atol=1e-5)
    assert as_batch(model, [pil, path, x]).shape == (3, 3, 32, 32)
    wide = Image.new("RGB", (120, 40), (90, 120, 30))
    assert as_batch(model, wide).shape == (1, 3, 32, 32)  # the model's transform: shorter side, centre crop
    with pytest.raises(UserError, match="paths, PIL images"):
        explain(model, {"not": "an image"})
    with pytest.raises(UserError, match="different sizes"):
        as_batch(model, [torch.zeros(3, 32, 32), torch.zeros(3, 16, 16)])
