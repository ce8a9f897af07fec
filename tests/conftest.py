"""Session-wide test settings (a private cache, no progress bars) and shared fixtures.

Every test run gets its own ``TRAITLENS_CACHE`` (so tests never read or write ``~/.cache/traitlens``,
and what one session pretrains, e.g. the embedded backbones, is made once and shared by the tests
that need it), and progress bars are off.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from traitlens.data.synthetic import SynthConfig, generate_collection
from traitlens.data.traits import TraitTable, load_traits


_OWN_CACHE = []  # the temporary cache this session made (removed when it ends)


def pytest_configure(config):
    if "TRAITLENS_TEST_CACHE" in os.environ:  # reuse a cache across runs while developing
        os.environ["TRAITLENS_CACHE"] = os.environ["TRAITLENS_TEST_CACHE"]
    else:
        os.environ["TRAITLENS_CACHE"] = tempfile.mkdtemp(prefix="traitlens-test-cache-")
        _OWN_CACHE.append(os.environ["TRAITLENS_CACHE"])
    os.environ["TRAITLENS_QUIET"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The tests' models are tiny: one thread is faster than two fighting over shared cores (measured
    # 10-40x on the shared development machine).
    import torch

    torch.set_num_threads(1)


def pytest_unconfigure(config):
    import shutil

    for path in _OWN_CACHE:  # a full session writes ~0.7 GB there (collections, backbones, runs)
        shutil.rmtree(path, ignore_errors=True)


TINY_CONFIG = dict(species=6, per_species=10, size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_synth_config() -> SynthConfig:
    """The SynthConfig of ``tiny_collection`` (a fresh copy each time it is asked for)."""
    return SynthConfig(**TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """Path of a tiny synthetic collection (layout of docs/ARCHITECTURE.md); read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    return generate_collection(root, SynthConfig(**TINY_CONFIG), progress=False)


@pytest.fixture(scope="session")
def tiny_traits(tiny_collection) -> TraitTable:
    """The TraitTable of ``tiny_collection``."""
    return load_traits(tiny_collection)


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    """A tiny synthetic collection on disk (6 species, 5 images each, 32 px; explain and the demo tests)."""
    from traitlens.data.synthetic import SynthConfig, generate_collection

    return generate_collection(tmp_path_factory.mktemp("synth") / "c", SynthConfig(species=6, per_species=5, size=32,
                                                                                  seed=0), progress=False)


@pytest.fixture(scope="session")
def checkpoint(collection, tmp_path_factory):
    """A random tiny-cnn classifier checkpoint for the collection (logits scaled to be moderate)."""
    from traitlens.data.traits import load_traits
    from traitlens.engine.checkpoint import save_checkpoint
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import build_model

    torch.manual_seed(0)
    config = TrainConfig(data=str(collection), out="x", method="finetune", backbone="tiny-cnn", image_size=32,
                         epochs=1, seed=0)
    model, _ = build_model(config, 6)
    with torch.no_grad():
        model.get_classifier().weight.mul_(20)
    run = tmp_path_factory.mktemp("run")
    return save_checkpoint(run, model.eval(), {"config": config, "class_names": load_traits(collection).class_names})


@pytest.fixture(scope="session")
def cb_collection(tmp_path_factory) -> Path:
    """A small synthetic collection for the CompBench tests (written once per session, read-only)."""
    from traitlens.data.synthetic import SynthConfig, generate_collection

    root = tmp_path_factory.mktemp("cb_synthetic") / "coll"
    return generate_collection(root, SynthConfig(species=6, per_species=8, size=32, seed=3), progress=False)
