"""The embedded backbones' shipped (standard) recipes learn their pretraining collections. The backbones are
pretrained in the session's cache (tests/conftest.py), where the other claims reuse them."""

import json

import pytest

from traitlens.studies.embedded import embedded_backbone, load_embedded



@pytest.mark.claims
@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_real_recipe_learns_its_collection(kind):
    """The shipped recipe: measured test top-1 0.89 (ViT) and 0.93-0.94 (CNN) on 18 held-out-species classes."""
    run = embedded_backbone(kind, progress=False)
    record = json.loads((run / "embedded.json").read_text())
    assert record["test_top1"] >= 0.85, record
    assert record["test_top5"] >= 0.99, record
    model = load_embedded(kind, num_classes=12)
    summary = model.traitlens_weights  # everything but the 18-class head ("head." or "fc.") came back
    assert len(summary.missing) == 2 and summary.missing == summary.dropped_head and summary.unexpected == []
