"""The paper's experiment on the synthetic collection (domain A → B), and the demo section around it.

Margins measured with ``ExperimentConfig(seed=s)`` (the demo's 12 species, 60 images each, 64 px, embedded tiny
ViT, pre-trained 15 epochs in domain A, fine-tuned lr 0.003 × 10 epochs in domain B on 6 species, 1 torch thread)
for seeds 0, 1, 2 (in %, seed 0 / 1 / 2):

    pre-trained: A y/y 83.3/84.0/84.0, B y/y 45.1/53.5/48.6, B u/y 55.6/58.3/55.6
    fine-tuned:  s/y 81.9/81.9/87.5, u/y 22.2/8.3/5.6, y/y 52.1/45.1/46.5
    NCM u/u:     pre-trained 79.2/73.6/72.2, fine-tuned 79.2/75.0/73.6
    ALG:         γ 1.35/1.24/0.96, u/y 33.3/33.3/15.3, s/y 81.9/81.9/87.5, y/y 57.6/57.6/51.4
    PCV:         γ 1.58/1.39/1.71, u/y 33.3/37.5/33.3, s/y 81.9/80.6/87.5, y/y 57.6/59.0/60.4
    oracle:      γ 2.88/2.59/2.61, u/y 59.7/62.5/48.6, s/y 75.0/68.1/84.7, y/y 67.4/65.3/66.7
    AUSUC:       pre-trained .348/.403/.353, fine-tuned .554/.540/.574

The same with ``backbone="embedded-cnn"`` (not asserted; why the ViT is the default):

    pre-trained: B y/y 52.1/46.5/45.8, u/y 56.9/56.9/31.9;  fine-tuned: s/y 86.1/91.7/81.9, u/y 0.0/0.0/0.0
    NCM u/u:     pre-trained 79.2/75.0/87.5, fine-tuned 81.9/68.1/79.2
    ALG:         γ 6.97/7.87/6.36 (oracle 5.95/8.13/6.79), u/y 47.2/34.7/40.3, s/y 76.4/76.4/75.0

The test runs seed 0; every margin below holds for all three seeds with room for the small numeric drift of an
embedded backbone pretrained afresh in the test session (1 test image = 1.4 points of u/y or s/y).
"""

import json

import pytest
import torch

from traitlens.studies.calibration import ExperimentConfig, run_experiment


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 contended threads for these tiny models
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_calibration_restores_absent_classes(one_thread):
    r = run_experiment(ExperimentConfig(seed=0))  # the session's embedded ViT: pretrained once per session
    t, ncm = r["tables"], r["ncm"]
    # a moderate domain gap: the pre-trained model is good in A and still far above chance (8%) in B
    assert t["pre-trained (domain A)"]["y/y"] > 0.75 and 0.35 < t["pre-trained"]["y/y"] < 0.65
    # fine-tuning on half the species learns them and collapses the other half's accuracy ...
    assert t["fine-tuned"]["s/y"] > t["pre-trained"]["s/y"] + 0.2
    assert t["fine-tuned"]["u/y"] < t["pre-trained"]["u/y"] - 0.25
    # ... while their features stay (NCM on the fine-tuned features is no worse than before)
    assert ncm["fine-tuned"]["u/u"] >= ncm["pre-trained"]["u/u"] - 0.04
    # one bias brings absent species back and the fine-tuning species do not pay for it (≤ 2 points)
    for m in ("alg", "pcv"):
        assert t[m]["u/y"] > t["fine-tuned"]["u/y"] + 0.06, m
        assert t[m]["y/y"] >= t["fine-tuned"]["y/y"] + 0.02, m
    assert t["alg"]["s/y"] >= t["fine-tuned"]["s/y"] - 0.02
    assert t["pcv"]["s/y"] >= t["fine-tuned"]["s/y"] - 0.03
    assert t["oracle"]["y/y"] >= t["pcv"]["y/y"] and t["oracle"]["y/y"] >= t["alg"]["y/y"]
    # the best single bias recovers most of what fine-tuning took from the absent species (86-112% measured);
    # ALG and PCV choose about half of its γ here (see the module docstring), so they recover less
    lost = t["pre-trained"]["u/y"] - t["fine-tuned"]["u/y"]
    assert t["oracle"]["u/y"] - t["fine-tuned"]["u/y"] >= 0.7 * lost
    assert 0 < r["gamma"]["alg"] < r["gamma"]["oracle"]
    assert r["ausuc"]["fine-tuned"] > r["ausuc"]["pre-trained"] + 0.1
    assert r["mean_logit"]["fine-tuned absent"] < r["mean_logit"]["fine-tuned seen"]
    # temperature scaling calibrates confidence but never changes a prediction
    assert r["ece"]["fine-tuned + temperature"] < r["ece"]["fine-tuned"]


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
