"""Reference selection modes and the explained class."""

from __future__ import annotations

import pytest
import torch

from traitlens.errors import UserError
from traitlens.explain import explain, select_references

Z = torch.tensor([[5.0, 4.0, 1.0, 4.5, -2.0, 3.0],
                  [0.0, 9.0, 8.0, 1.0, 7.5, 2.0]])


def test_logit_distance_ranks_by_distance_to_the_anchor():
    refs = select_references(Z, torch.tensor([0, 1]), "logit-distance", k=3)
    assert refs.tolist() == [[3, 1, 5], [2, 4, 5]]
    # anchor = a non-predicted class
    refs = select_references(Z, torch.tensor([2, 0]), "logit-distance", k=2)
    assert refs.tolist() == [[5, 1], [3, 5]]  # ties keep class order


def test_clamps_to_the_number_of_classes():
    z = torch.tensor([[1.0, 3.0, 2.0]])
    assert select_references(z, torch.tensor([1]), k=5).tolist() == [[2, 0]]
    assert select_references(z[:, :1], torch.tensor([0]), k=3).shape == (1, 0)


def test_top_predicted_and_weight_cosine():
    assert select_references(Z, torch.tensor([2, 0]), "top-predicted", k=2).tolist() == [[0, 3], [1, 2]]
    w = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.5], [0.1, 0.9]])
    refs = select_references(Z, torch.tensor([0, 2]), "weight-cosine", k=2, classifier_weight=w)
    assert refs.tolist() == [[1, 4], [5, 4]]


def test_taxonomy_keeps_siblings_and_marks_empty_slots():
    siblings = [[1, 3], [0, 3], [], [0, 1], [5], [4]]
    refs = select_references(Z, torch.tensor([0, 2]), "taxonomy", k=3, siblings=siblings)
    assert refs.tolist() == [[3, 1, -1], [-1, -1, -1]]


def test_explicit_references_by_id_and_name():
    names = ["indigo", "lazuli", "painted", "varied", "blue", "snow"]
    assert select_references(Z, torch.tensor([0, 0]), ["Lazuli", 3], class_names=names).tolist() == [[1, 3]] * 2
    assert select_references(Z, torch.tensor([0, 0]), "lazuli,painted", class_names=names).tolist() == [[1, 2]] * 2
    with pytest.raises(UserError, match="unknown reference class"):
        select_references(Z, torch.tensor([0, 0]), ["robin"], class_names=names)


def test_explain_with_names_and_taxonomy(gap_linear, images):
    class FakeTraits:
        class_names = list("abcdef")

        def index(self, n):
            return self.class_names.index(n)

        def siblings(self, n):
            i = self.index(n)
            return [j for j in range(6) if j // 2 == i // 2 and j != i]

    x = images[:3, :, :16, :16]
    e = explain(gap_linear, x, target="c", references="taxonomy", traits=FakeTraits(), target_layer="features",
                class_names=list("abcdef"))
    assert e.target.tolist() == [2, 2, 2]
    assert e.references[:, 0].tolist() == [3, 3, 3] and (e.references[:, 1:] == -1).all()
    explicit = explain(gap_linear, x, target="c", references=["d"], target_layer="features",
                       class_names=list("abcdef"))
    # one sibling with the whole weight: the same comparison
    assert torch.allclose(e.raw_maps, explicit.raw_maps, atol=1e-6)
    assert torch.allclose(e.scores, explicit.scores)
