"""Cycle-consistent fine-tuning of label propagation: a feature projection trained on CPU."""

from __future__ import annotations

import pytest
import torch

from traitlens.segment.backends import build_propagator, load_projection
from traitlens.segment.finetune import FeatureProjection, cycle_finetune, cycle_loss, projection_state


def test_cycle_loss_is_small_for_the_truth_and_large_for_its_opposite(scene):
    _, lab = scene()
    perfect = torch.nn.functional.one_hot(lab, 4).permute(2, 0, 1).float()
    assert float(cycle_loss(perfect, lab)) < 0.01
    assert float(cycle_loss(1 - perfect, lab)) > 1.0


def test_projection_starts_as_identity_and_training_lowers_the_loss(scene, tmp_path):
    img, lab = scene()
    queries = [scene(shift=(3, -2), seed=5)[0], scene(shift=(-2, 4), seed=6)[0]]
    prop = build_propagator("labelprop", work_size=48, local=3, differentiable=True)
    x = torch.rand(1, prop.projection.proj.weight.shape[1], 5, 5)
    assert torch.allclose(prop.projection(x), x)
    assert prop.differentiable()
    losses = cycle_finetune(prop, prop.projection.parameters(), (img, lab), queries, steps=6, lr=0.05, num_labels=4)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 <= sum(losses[:2]) / 2 + 1e-6
    from safetensors.torch import save_file

    save_file(projection_state(prop.projection), str(tmp_path / "projection.safetensors"))
    loaded = load_projection(tmp_path)
    assert torch.allclose(loaded(x), prop.projection(x))


def test_not_differentiable_is_refused(scene):
    img, lab = scene()
    prop = build_propagator("labelprop", work_size=48)
    with pytest.raises(ValueError, match="gradients"):
        cycle_finetune(prop, [], (img, lab), [img], steps=1)
    assert isinstance(FeatureProjection(3), torch.nn.Module)
