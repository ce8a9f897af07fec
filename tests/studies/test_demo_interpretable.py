"""The models demo section end to end on a tiny collection (1 epoch each), and its cache."""

import os
import time

import pytest

from traitlens.data.synthetic import SynthConfig, generate_collection
from traitlens.data.traits import load_traits
from traitlens.studies.demo import DemoContext
from traitlens.engine.config import load_config
from traitlens.methods import train
from traitlens.studies.demo import interpretable as demo
from traitlens.report import write_page

os.environ.setdefault("TRAITLENS_QUIET", "1")


def test_demo_section_runs_and_caches(tmp_path, monkeypatch):
    data = generate_collection(tmp_path / "c", SynthConfig(species=3, per_species=5, size=32, seed=0), progress=False)
    backbone = tmp_path / "backbone"
    train(load_config("tiny-cpu", data=str(data), out=str(backbone), epochs=1, batch_size=8), progress=False)
    quick = {k: v.with_(epochs=1, batch_size=8) for k, v in demo._recipes().items()}
    monkeypatch.setattr(demo, "_recipes", lambda scale="standard": quick)
    ctx = DemoContext(out=tmp_path / "report", cache=tmp_path / "cache", data=data, traits=load_traits(data),
                      checkpoints={"backbone-vit": backbone, "vit": backbone})
    (tmp_path / "cache").mkdir()
    section = demo.demo_section(ctx)
    page = write_page("demo", [section], tmp_path / "report" / "index.html")
    html = page.read_text()
    assert "Prompt-CAM" in html and "best head trait share" in html and html.count("<img") >= 2 * 3 * 4
    assert "Finer-CAM" in html and "INTR best head" in html and "deletion AUC" in html
    for name in quick:
        assert list((tmp_path / "cache").glob(f"{name}-scores-*.json"))
    assert list((tmp_path / "cache").glob("compare-*.json"))
    start = time.time()
    demo.train_and_score(ctx, "prompt-cam")
    demo.train_and_score(ctx, "intr")
    assert time.time() - start < 1.0  # cached: no training or scoring again


def test_claims_collection_has_the_species_the_embedded_backbone_avoids():
    # The claims are measured on more images of the demo's species; the embedded ViT was pretrained on
    # species chosen to differ from exactly these (TARGET_COLLECTION's taxonomy), so it never saw them.
    from traitlens.data.synthetic import make_taxonomy
    from traitlens.studies.recipes import CLAIMS_COLLECTION, DEMO_COLLECTION, pretraining

    claims = make_taxonomy(SynthConfig(**CLAIMS_COLLECTION.as_dict())).fingerprint()
    assert claims == make_taxonomy(SynthConfig(**pretraining("vit", "broad").avoid.as_dict())).fingerprint()
    assert claims == make_taxonomy(SynthConfig(**DEMO_COLLECTION.as_dict())).fingerprint()
    assert CLAIMS_COLLECTION.per_species > DEMO_COLLECTION.per_species
