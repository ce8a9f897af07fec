"""The embedded tiny backbones: run folders, cache reuse, atomic publishing, disjoint species."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from traitlens.studies import embedded
from traitlens.studies.embedded import embedded_backbone, load_embedded, recipe
from traitlens.errors import UserError


TINY_COLLECTION = dict(species=6, per_species=10, size=32, seed=1)
TINY_TRAINING = dict(epochs=1, batch_size=16, lr=1e-3, backbone_lr_scale=1.0, weight_decay=0.0, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache with both kinds pretrained on a tiny recipe (the real one is exercised by the slow test)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(embedded, "PRETRAIN_COLLECTION", TINY_COLLECTION)
    mp.setattr(embedded, "PRETRAIN_TRAINING", {"vit": TINY_TRAINING, "cnn": TINY_TRAINING})
    root = tmp_path_factory.mktemp("embedded")
    try:
        runs = {kind: embedded_backbone(kind, cache_dir=root, progress=False) for kind in ("cnn", "vit")}
    finally:
        mp.undo()  # later tests in this module (the real recipe) must see the shipped recipe
    return root, runs


@pytest.fixture()
def tiny_recipe(shared_cache, tmp_path, monkeypatch):
    """A fresh cache folder holding the shared pretraining collection (so only training runs again)."""
    monkeypatch.setattr(embedded, "PRETRAIN_COLLECTION", TINY_COLLECTION)
    monkeypatch.setattr(embedded, "PRETRAIN_TRAINING", {"vit": TINY_TRAINING, "cnn": TINY_TRAINING})
    for folder in shared_cache[0].glob("pretrain-synth-*"):
        shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path


def test_run_folder_is_a_checkpoint_and_is_reused(shared_cache, monkeypatch):
    monkeypatch.setattr(embedded, "PRETRAIN_COLLECTION", TINY_COLLECTION)
    monkeypatch.setattr(embedded, "PRETRAIN_TRAINING", {"vit": TINY_TRAINING, "cnn": TINY_TRAINING})
    tmp_path, runs = shared_cache
    run = runs["cnn"]
    assert run.parent == tmp_path and run.name.startswith("embedded-cnn-")
    meta = json.loads((run / "model.json").read_text())
    assert meta["backbone"]["name"] == "tiny-cnn" and meta["num_classes"] == 6
    record = json.loads((run / "embedded.json").read_text())
    assert 0.0 <= record["test_top1"] <= 1.0 and record["recipe"] == recipe("cnn")
    assert not (run / "last").exists()  # no optimizer state kept in the cache
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []  # no partial folders left

    import traitlens.engine.train as train

    def must_not_train(*a, **k):
        raise AssertionError("a cached embedded backbone was pretrained again")

    monkeypatch.setattr(train, "fit", must_not_train)
    assert embedded_backbone("cnn", cache_dir=tmp_path, progress=False) == run


def test_pretraining_species_are_disjoint_from_the_demo(shared_cache):
    from traitlens.data.synthetic import SynthConfig, make_taxonomy
    from traitlens.data.traits import load_traits

    run = shared_cache[1]["cnn"]
    collection = load_traits(json.loads((run / "embedded.json").read_text())["collection"])
    demo = make_taxonomy(SynthConfig(**embedded.TARGET_COLLECTION))
    from traitlens.studies.demo import DEMO_COLLECTION

    assert embedded.TARGET_COLLECTION == DEMO_COLLECTION  # the species avoided are the demo's
    assert not set(collection.names) & set(demo.names)
    assert not set(collection.genera) & set(demo.genera)
    demo_traits = [demo.traits_of(i) for i in range(demo.num_species)]
    assert all(collection.traits_of(i) not in demo_traits for i in range(collection.num_species))


def test_load_embedded_has_pretrained_body_and_fresh_head(shared_cache, monkeypatch):
    monkeypatch.setattr(embedded, "PRETRAIN_COLLECTION", TINY_COLLECTION)
    monkeypatch.setattr(embedded, "PRETRAIN_TRAINING", {"vit": TINY_TRAINING, "cnn": TINY_TRAINING})
    tmp_path = shared_cache[0]
    model = load_embedded("vit", num_classes=5, cache_dir=tmp_path)
    assert model.get_classifier().out_features == 5
    stored = load_file(str(embedded_backbone("vit", cache_dir=tmp_path) / "model.safetensors"))
    assert stored["head.weight"].shape[0] == 6
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if not k.startswith("head."))
    assert model.traitlens_weights.dropped_head == ["head.bias", "head.weight"]
    headless = load_embedded("vit", cache_dir=tmp_path)
    assert headless(torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_second_writer_keeps_the_first_copy(tmp_path, tiny_recipe, monkeypatch):
    import traitlens.methods as methods

    real_fit = methods.train
    winner = {}

    def fit_while_another_process_publishes(config, **kw):
        result = real_fit(config, **kw)
        # Another process finishes first: its complete folder appears under the final name.
        final = tmp_path / f"embedded-cnn-{embedded.recipe_key(recipe('cnn'))}"
        final.mkdir()
        for name in ("model.safetensors", "model.json"):
            shutil.copy(config.out + "/" + name, final / name)
        (final / "embedded.json").write_text('{"writer": "other"}')
        winner["path"] = final
        return result

    monkeypatch.setattr(methods, "train", fit_while_another_process_publishes)
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False)
    assert run == winner["path"]
    assert json.loads((run / "embedded.json").read_text()) == {"writer": "other"}
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []  # the losing copy is gone


def test_interrupted_pretraining_resumes(tmp_path, tiny_recipe, monkeypatch):
    import traitlens.methods as methods

    real_evaluate, real_fit = methods.evaluate_checkpoint, methods.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(methods, "evaluate_checkpoint", interrupted)  # stopped after training, before publishing
    with pytest.raises(KeyboardInterrupt):
        embedded_backbone("cnn", cache_dir=tmp_path, progress=False)
    partial = tmp_path / f".embedded-cnn-{embedded.recipe_key(recipe('cnn'))}.partial"
    assert (partial / "last" / "state.json").is_file()  # the trained epochs are kept
    seen = {}

    def resumed_fit(config, **kw):
        seen["state"] = (partial / "last" / "state.json").is_file()
        seen["resume"] = kw.get("resume")
        return real_fit(config, **kw)

    monkeypatch.setattr(methods, "evaluate_checkpoint", real_evaluate)
    monkeypatch.setattr(methods, "train", resumed_fit)
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False)
    assert seen == {"state": True, "resume": None}  # the engine resumes from the partial folder's state
    assert _ok(run) and not partial.exists()


def _ok(run):
    return (run / "model.safetensors").is_file() and "test_top1" in json.loads((run / "embedded.json").read_text())


def test_force_retrains_and_replaces(tmp_path, tiny_recipe):
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False)
    (run / "embedded.json").write_text('{"stale": true}')
    again = embedded_backbone("cnn", cache_dir=tmp_path, force=True, progress=False)
    assert again == run and "test_top1" in json.loads((run / "embedded.json").read_text())


def test_cache_location_and_recipe_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path / "c"))
    assert embedded.backbones_dir() == tmp_path / "c" / "backbones"
    a = embedded.recipe_key(recipe("vit"))
    monkeypatch.setattr(embedded, "PRETRAIN_COLLECTION", dict(embedded.PRETRAIN_COLLECTION, seed=9))
    assert embedded.recipe_key(recipe("vit")) != a
    with pytest.raises(UserError, match="kind must be one of vit, cnn"):
        embedded_backbone("mlp", cache_dir=tmp_path)


def test_broad_breadth_is_its_own_recipe_and_folder(shared_cache, tmp_path, monkeypatch):
    standard = recipe("vit")
    assert "breadth" not in standard  # the standard key is unchanged by the breadth option
    broad = recipe("vit", "broad")
    assert broad["breadth"] == "broad" and broad["collection"]["species"] == 200
    assert embedded.recipe_key(broad) != embedded.recipe_key(standard)
    with pytest.raises(UserError, match="breadth must be one of standard, broad"):
        recipe("vit", "wide")
    monkeypatch.setattr(embedded, "BROAD_COLLECTION", dict(TINY_COLLECTION, species=8))
    monkeypatch.setattr(embedded, "BROAD_TRAINING", {"vit": TINY_TRAINING, "cnn": TINY_TRAINING})
    run = embedded_backbone("vit", cache_dir=tmp_path, progress=False, breadth="broad")
    assert run.name.startswith("embedded-vit-broad-")
    assert json.loads((run / "model.json").read_text())["num_classes"] == 8
    assert json.loads((run / "embedded.json").read_text())["recipe"] == recipe("vit", "broad")
    assert embedded_backbone("vit", cache_dir=tmp_path, progress=False, breadth="broad") == run  # reused


@pytest.fixture(scope="module")
def real_cache():
    # The session's cache (tests/conftest.py): the demo, explain, models and calibrate tests reuse what
    # this test pretrains instead of pretraining it again.
    return None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_real_recipe_learns_its_collection(real_cache, kind):
    """The shipped recipe: measured test top-1 0.89 (ViT) and 0.93-0.94 (CNN) on 18 held-out-species classes."""
    run = embedded_backbone(kind, cache_dir=real_cache, progress=False)
    record = json.loads((run / "embedded.json").read_text())
    assert record["test_top1"] >= 0.85, record
    assert record["test_top5"] >= 0.99, record
    model = load_embedded(kind, num_classes=12, cache_dir=real_cache)
    summary = model.traitlens_weights  # everything but the 18-class head ("head." or "fc.") came back
    assert len(summary.missing) == 2 and summary.missing == summary.dropped_head and summary.unexpected == []


def test_cli_pretrains_prints_and_records_the_weights(tmp_path, tiny_recipe, capsys):
    from traitlens.backbones import create
    from traitlens.cli import main

    args = ["backbone", "embedded", "--kind", "cnn", "--cache-dir", str(tmp_path), "--no-progress"]
    assert main(args + ["--json", str(tmp_path / "record.json")]) == 0
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["weights"] in capsys.readouterr().out and record["recipe"] == recipe("cnn")
    model = create("tiny-cnn", num_classes=3, weights=record["weights"])  # what --weights gets
    assert model.traitlens_weights.dropped_head and model.get_classifier().out_features == 3
    with pytest.raises(SystemExit):
        main(["backbone", "embedded", "--breadth", "wide"])


def test_backbones_finds_what_the_study_published_and_makes_nothing(shared_cache, tmp_path):
    from traitlens.backbones import find_embedded

    root, runs = shared_cache
    assert find_embedded("vit", cache_dir=root) == runs["vit"]
    assert find_embedded("cnn", cache_dir=root) == runs["cnn"]
    with pytest.raises(UserError, match="no embedded tiny VIT backbone \\(broad\\)"):
        find_embedded("vit", breadth="broad", cache_dir=root)
    with pytest.raises(UserError, match="no embedded tiny CNN backbone"):
        find_embedded("cnn", cache_dir=tmp_path)  # an empty cache: nothing is pretrained on the way
    assert not list(tmp_path.glob("embedded-*"))
