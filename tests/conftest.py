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
