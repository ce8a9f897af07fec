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


def test_an_interrupted_fine_tuning_resumes_to_the_same_result(scene):
    img, lab = scene()
    queries = [scene(shift=(3, -2), seed=5)[0], scene(shift=(-2, 4), seed=6)[0]]

    def run(**kwargs):
        torch.manual_seed(0)
        prop = build_propagator("labelprop", work_size=48, local=3, differentiable=True)
        params = list(prop.projection.parameters())
        return prop, cycle_finetune(prop, params, (img, lab), queries, steps=6, lr=0.05, num_labels=4, **kwargs)

    saved = []
    whole, losses = run(on_checkpoint=saved.append, checkpoint_every=2)
    assert [len(s["losses"]) for s in saved] == [2, 4, 6]
    resumed, rest = run(resume=saved[1])  # as if killed after step 5: the state of step 4 is on disk
    assert rest == pytest.approx(losses, abs=1e-6)
    assert torch.allclose(resumed.projection.proj.weight, whole.projection.proj.weight, atol=1e-6)


def test_finetune_cli_saves_its_state_resumes_and_refuses_other_options(scene, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from traitlens.cli import main

    def png(array, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    img, lab = scene()
    to_uint8 = lambda x: (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    png(to_uint8(img), tmp_path / "support.png")
    png(lab.numpy().astype(np.uint8), tmp_path / "support_mask.png")
    for i, (shift, seed) in enumerate((((3, -2), 5), ((-2, 4), 6))):
        png(to_uint8(scene(shift=shift, seed=seed)[0]), tmp_path / "images" / f"{i}.png")
    out = tmp_path / "ft"
    args = ["segment", "finetune", "--support", str(tmp_path / "support.png"), "--support-mask",
            str(tmp_path / "support_mask.png"), "--images", str(tmp_path / "images"), "--work-size", "48",
            "--local", "3", "--device", "cpu", "--out", str(out), "--steps", "4", "--checkpoint-every", "2"]
    assert main(args) == 0
    state = torch.load(out / "finetune-state.pt", weights_only=True)
    assert len(state["losses"]) == 4 and state["options"]["steps"] == 4
    first = (out / "finetune.json").read_text()
    assert main(args) == 0  # nothing left to train: the same result, read back
    assert (out / "finetune.json").read_text() == first
    capsys.readouterr()
    assert main(args[:-4] + ["--steps", "4", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert main(args[:-4] + ["--steps", "4", "--lr", "0.5", "--restart"]) == 0


def test_a_training_split_smaller_than_one_batch_lowers_the_batch(capsys):
    from traitlens.engine.train import fitting_batch_size

    assert fitting_batch_size(64, 36) == 36
    assert fitting_batch_size(64, 37, world=2) == 36
    assert fitting_batch_size(16, 36) == 16
