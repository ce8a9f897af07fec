import json

import pytest
import torch

from traitlens.engine.evaluate import evaluate, metrics_from_logits


def test_metrics_on_hand_made_logits():
    # 6 samples, 6 classes. Predicted (argmax) classes: 0, 1, 2, 0, 5, 3; true: 0, 1, 1, 0, 4, 3.
    logits = torch.full((6, 6), -10.0)
    ranking = [[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5], [2, 3, 4, 5, 0, 1], [0, 1, 2, 3, 4, 5],
               [5, 0, 1, 2, 4, 3], [3, 0, 1, 2, 4, 5]]
    for i, order in enumerate(ranking):
        for rank, c in enumerate(order):
            logits[i, c] = 10.0 - rank
    labels = torch.tensor([0, 1, 1, 0, 4, 3])
    m = metrics_from_logits(logits, labels)
    assert m["n"] == 6
    assert m["top1"] == pytest.approx(4 / 6)
    # sample 2 (true 1) has class 1 at rank 6 -> missed by top-5; sample 4 (true 4) has it at rank 5 -> hit.
    assert m["top5"] == pytest.approx(5 / 6)
    conf = torch.tensor(m["confusion"])
    assert conf.shape == (6, 6) and conf.sum() == 6
    assert conf[1, 2] == 1 and conf[4, 5] == 1 and conf[0, 0] == 2 and conf[3, 3] == 1
    assert m["per_class"] == [1.0, 0.5, None, 1.0, 0.0, None]
    assert m["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    json.dumps(m)  # plain JSON


def test_top5_with_fewer_than_five_classes_is_top_c():
    logits = torch.tensor([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    m = metrics_from_logits(logits, torch.tensor([0, 2]))
    assert m["top1"] == 0.0 and m["top5"] == 1.0


def test_evaluate_runs_a_model_over_the_real_dataset(tiny_data):
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.data.transforms import SpecimenTransform

    ds = ImageFolderDataset(tiny_data, "val", SpecimenTransform(16), masks=None)

    class Oracle(torch.nn.Module):
        """Always predicts class 0."""

        def forward(self, x):
            return torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(x.shape[0], 1)

    m = evaluate(Oracle(), ds, "cpu", batch_size=5, return_logits=True, show_progress=False)
    assert m["n"] == len(ds) == 16
    assert m["index"].tolist() == list(range(16))
    assert m["labels"].tolist() == ds.targets
    assert m["top1"] == pytest.approx(0.25)  # one class in four
    assert torch.tensor(m["confusion"])[:, 0].tolist() == [4, 4, 4, 4]
