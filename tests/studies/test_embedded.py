"""The embedded tiny backbones: run folders, cache reuse, atomic publishing, disjoint species."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from traitlens.studies import embedded
from traitlens.studies.embedded import embedded_backbone, load_embedded, recipe
from traitlens.errors import UserError


TINY = "tiny"  # the tiny recipe: 6 species at 32 px, one epoch (the real ones run in the claims tier)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache with both kinds pretrained on the tiny recipe."""
    root = tmp_path_factory.mktemp("embedded")
    runs = {kind: embedded_backbone(kind, cache_dir=root, progress=False, breadth=TINY) for kind in ("cnn", "vit")}
    return root, runs


@pytest.fixture()
def tiny_recipe(shared_cache, tmp_path):
    """A fresh cache folder holding the shared pretraining collection (so only training runs again)."""
    for folder in shared_cache[0].glob("pretrain-synth-*"):
        shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path


def test_run_folder_is_a_checkpoint_and_is_reused(shared_cache, monkeypatch):
    from traitlens.studies.memo import plain

    tmp_path, runs = shared_cache
    run = runs["cnn"]
    assert run.parent == tmp_path and run.name.startswith("embedded-cnn-tiny-")
    meta = json.loads((run / "model.json").read_text())
    assert meta["backbone"]["name"] == "tiny-cnn" and meta["num_classes"] == 6
    record = json.loads((run / "embedded.json").read_text())
    assert 0.0 <= record["test_top1"] <= 1.0 and record["recipe"] == plain(recipe("cnn", TINY))
    assert not (run / "last").exists()  # no optimizer state kept in the cache
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []  # no partial folders left

    import traitlens.methods as methods

    def must_not_train(*a, **k):
        raise AssertionError("a cached embedded backbone was pretrained again")

    monkeypatch.setattr(methods, "train", must_not_train)
    assert embedded_backbone("cnn", cache_dir=tmp_path, progress=False, breadth=TINY) == run


def test_pretraining_species_are_disjoint_from_the_demo(shared_cache):
    from traitlens.data.synthetic import SynthConfig, make_taxonomy
    from traitlens.data.traits import load_traits

    run = shared_cache[1]["cnn"]
    collection = load_traits(json.loads((run / "embedded.json").read_text())["collection"])
    from traitlens.studies.recipes import DEMO_COLLECTION

    assert all(recipe(kind, b).avoid == DEMO_COLLECTION for kind in ("vit", "cnn") for b in ("tiny", "standard", "broad"))
    demo = make_taxonomy(SynthConfig(**DEMO_COLLECTION.as_dict()))  # the species avoided are the demo's
    assert not set(collection.names) & set(demo.names)
    assert not set(collection.genera) & set(demo.genera)
    demo_traits = [demo.traits_of(i) for i in range(demo.num_species)]
    assert all(collection.traits_of(i) not in demo_traits for i in range(collection.num_species))


def test_load_embedded_has_pretrained_body_and_fresh_head(shared_cache):
    tmp_path = shared_cache[0]
    model = load_embedded("vit", num_classes=5, cache_dir=tmp_path, breadth=TINY)
    assert model.get_classifier().out_features == 5
    stored = load_file(str(embedded_backbone("vit", cache_dir=tmp_path, breadth=TINY) / "model.safetensors"))
    assert stored["head.weight"].shape[0] == 6
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if not k.startswith("head."))
    assert model.traitlens_weights.dropped_head == ["head.bias", "head.weight"]
    headless = load_embedded("vit", cache_dir=tmp_path, breadth=TINY)
    assert headless(torch.randn(2, 3, 64, 64)).shape == (2, 128)


def test_second_writer_keeps_the_first_copy(tmp_path, tiny_recipe, monkeypatch):
    import traitlens.methods as methods

    real_fit = methods.train
    winner = {}

    def fit_while_another_process_publishes(config, **kw):
        result = real_fit(config, **kw)
        # Another process finishes first: its complete folder appears under the final name.
        final = embedded.memo_path(tmp_path, "embedded-cnn-tiny", recipe("cnn", TINY), code=embedded.TRAINING)
        final.mkdir()
        for name in ("model.safetensors", "model.json"):
            shutil.copy(config.out + "/" + name, final / name)
        (final / "embedded.json").write_text('{"writer": "other"}')
        winner["path"] = final
        return result

    monkeypatch.setattr(methods, "train", fit_while_another_process_publishes)
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False, breadth=TINY)
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
        embedded_backbone("cnn", cache_dir=tmp_path, progress=False, breadth=TINY)
    final = embedded.memo_path(tmp_path, "embedded-cnn-tiny", recipe("cnn", TINY), code=embedded.TRAINING)
    partial = tmp_path / f".{final.name}.partial"
    assert (partial / "last" / "state.json").is_file()  # the trained epochs are kept
    seen = {}

    def resumed_fit(config, **kw):
        seen["state"] = (partial / "last" / "state.json").is_file()
        seen["resume"] = kw.get("resume")
        return real_fit(config, **kw)

    monkeypatch.setattr(methods, "evaluate_checkpoint", real_evaluate)
    monkeypatch.setattr(methods, "train", resumed_fit)
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False, breadth=TINY)
    assert seen == {"state": True, "resume": None}  # the engine resumes from the partial folder's state
    assert _ok(run) and not partial.exists()


def _ok(run):
    return (run / "model.safetensors").is_file() and "test_top1" in json.loads((run / "embedded.json").read_text())


def test_force_retrains_and_replaces(tmp_path, tiny_recipe):
    run = embedded_backbone("cnn", cache_dir=tmp_path, progress=False, breadth=TINY)
    (run / "embedded.json").write_text('{"stale": true}')
    again = embedded_backbone("cnn", cache_dir=tmp_path, force=True, progress=False, breadth=TINY)
    assert again == run and "test_top1" in json.loads((run / "embedded.json").read_text())


def test_cache_location_and_recipe_key(tmp_path, monkeypatch):
    from dataclasses import replace

    from traitlens.studies import memo

    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path / "c"))
    assert embedded.backbones_dir() == tmp_path / "c" / "backbones"
    standard = recipe("vit")
    a = memo.memo_key(standard, memo.TRAINING)
    assert memo.memo_key(replace(standard, collection=replace(standard.collection, seed=9)), memo.TRAINING) != a
    assert memo.memo_key(replace(standard, training=standard.training.with_(lr=1e-2)), memo.TRAINING) != a
    # pretraining runs no explanation, segmentation or calibration code: their changes keep the backbone
    assert {"engine", "data", "backbones", "models"} <= set(memo.TRAINING)
    assert not {"explain", "segment", "calibrate", "compbench", "runs", "report", "cli"} & set(memo.TRAINING)
    monkeypatch.setattr(memo, "source_digest", lambda code=None: "other code")  # the same recipe, changed code
    assert memo.memo_key(standard, memo.TRAINING) != a
    with pytest.raises(UserError, match="kind must be one of vit, cnn"):
        embedded_backbone("mlp", cache_dir=tmp_path)


def test_breadths_are_their_own_recipes_and_folders(shared_cache):
    from traitlens.studies.memo import memo_key

    standard, broad = recipe("vit"), recipe("vit", "broad")
    assert standard.collection.species == 18 and broad.collection.species == 200
    assert broad.training.epochs == 30 and memo_key(broad) != memo_key(standard)
    with pytest.raises(UserError, match="breadth must be one of standard, broad, tiny"):
        recipe("vit", "wide")
    run = shared_cache[1]["vit"]
    assert run.name.startswith("embedded-vit-tiny-")
    assert json.loads((run / "model.json").read_text())["num_classes"] == 6


def test_cli_pretrains_prints_and_records_the_weights(tmp_path, tiny_recipe, capsys):
    from traitlens.backbones import create
    from traitlens.cli import main

    from traitlens.studies.memo import plain

    args = ["backbone", "embedded", "--kind", "cnn", "--breadth", "tiny", "--cache-dir", str(tmp_path), "--no-progress"]
    assert main(args + ["--json", str(tmp_path / "record.json")]) == 0
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["weights"] in capsys.readouterr().out and record["recipe"] == plain(recipe("cnn", TINY))
    model = create("tiny-cnn", num_classes=3, weights=record["weights"])  # what --weights gets
    assert model.traitlens_weights.dropped_head and model.get_classifier().out_features == 3
    with pytest.raises(SystemExit):
        main(["backbone", "embedded", "--breadth", "wide"])


def test_backbones_finds_what_the_study_published_and_makes_nothing(shared_cache, tmp_path):
    from traitlens.backbones import find_embedded

    root, runs = shared_cache
    assert find_embedded("vit", breadth=TINY, cache_dir=root) == runs["vit"]
    assert find_embedded("cnn", breadth=TINY, cache_dir=root) == runs["cnn"]
    with pytest.raises(UserError, match="no embedded tiny VIT backbone \\(broad\\)"):
        find_embedded("vit", breadth="broad", cache_dir=root)
    with pytest.raises(UserError, match="no embedded tiny CNN backbone \\(standard\\)"):
        find_embedded("cnn", cache_dir=root)  # only the tiny one was made here
    with pytest.raises(UserError, match="no embedded tiny CNN backbone"):
        find_embedded("cnn", cache_dir=tmp_path)  # an empty cache: nothing is pretrained on the way
    assert not list(tmp_path.glob("embedded-*"))
