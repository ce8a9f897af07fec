"""Full-size ``traitlens import`` round trips (the claims tier): the INTR release at its real size through
``evaluate``, ``traits`` and ``explain``; the 12-block Prompt-CAM ``model.pt`` through ``evaluate`` and ``traits``."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.claims

_spec = importlib.util.spec_from_file_location("_imports", Path(__file__).with_name("test_imports.py"))
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def test_full_intr_release_round_trip(tmp_path, capsys):
    T.check_intr_import(tmp_path, capsys, T.intr_release(), round_trip=True)


def test_full_prompt_cam_model_pt_round_trip(tmp_path, capsys):
    release = T.L.build("prompt_cam_dinov2_cub_model.pt")
    torch.save(release, tmp_path / "model.pt")
    result = T.import_trained(tmp_path / "model.pt", tmp_path / "run", image_size=56)
    model, meta = T.load_model(tmp_path / "run")
    assert result["backbone"] == "dinov2-vitb14" and meta["config"]["backbone_options"] == {}
    state, _ = T.reference_state(release["model_state_dict"])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items()) and set(state) == set(own)
    names = [f"class_{i:03d}" for i in range(200)]
    T._round_trip(tmp_path / "run", T._images(tmp_path / "data", names[:2], size=56), tmp_path, capsys, explain=False)
