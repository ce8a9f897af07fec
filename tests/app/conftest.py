"""Fixtures of the app tests: a tiny collection (the session's ``collection``) and tiny checkpoints.

The checkpoints have random weights: the app's functions are checked against the library's own results
(``explain``, ``traitlens segment``), which needs no trained model.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gradio", reason="the app needs gradio (pip install 'traitlens[app]')")


def _checkpoint(collection, run, method: str, backbone: str):
    from traitlens.data.traits import load_traits
    from traitlens.engine.checkpoint import save_checkpoint
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import build_model

    torch.manual_seed(0)
    config = TrainConfig(data=str(collection), out="x", method=method, backbone=backbone, image_size=32, epochs=1,
                         seed=0)
    model, _ = build_model(config, 6)
    if method == "finetune":
        with torch.no_grad():  # moderate, distinct logits, so references and maps are not degenerate
            model.get_classifier().weight.mul_(20)
    return save_checkpoint(run, model.eval(), {"config": config, "class_names": load_traits(collection).class_names})


@pytest.fixture(scope="session")
def vit_run(collection, tmp_path_factory):
    """A random tiny-vit classifier checkpoint for ``collection`` (32 px)."""
    return _checkpoint(collection, tmp_path_factory.mktemp("app-vit"), "finetune", "tiny-vit")


@pytest.fixture(scope="session")
def prompt_cam_run(collection, tmp_path_factory):
    """A random tiny-vit Prompt-CAM checkpoint for ``collection``."""
    return _checkpoint(collection, tmp_path_factory.mktemp("app-pc"), "prompt-cam", "tiny-vit")


@pytest.fixture()
def session(vit_run, collection, tmp_path):
    from traitlens.app import create_session

    return create_session(vit_run, collection / "test", project=tmp_path / "project", work=tmp_path / "work")
