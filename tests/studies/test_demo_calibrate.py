"""The calibrated fine-tuning demo section: runs small and caches (the experiment's claims are in
tests/claims/test_calibration.py)."""

import json

import pytest
import torch



@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 contended threads for these tiny models
    yield
    torch.set_num_threads(before)


def test_demo_section_runs_small_and_caches(tmp_path, monkeypatch, one_thread):
    from traitlens.studies.demo import calibrate as ds
    from traitlens.report import write_page

    monkeypatch.setattr(ds, "DEMO_EXPERIMENT", dict(species=6, per_species=12, size=32, backbone="tiny-cnn",
                                                    pretrain_epochs=2, finetune_epochs=1))

    class Ctx:
        cache = tmp_path / "cache"
        seed = 0

        @staticmethod
        def log(msg):
            pass

    section = ds.demo_section(Ctx)
    cached = list((tmp_path / "cache").glob("calibrate-experiment-*.json"))
    assert len(cached) == 1 and "tables" in json.loads(cached[0].read_text())["result"]
    monkeypatch.setattr(ds, "run_experiment", lambda *a, **k: pytest.fail("cache not used"))
    ds.demo_section(Ctx)
    write_page("calibrate", [section], tmp_path / "index.html")
    html = (tmp_path / "index.html").read_text()
    assert "calibrated fine-tuning" in html and "data:image/png;base64" in html
