"""Shared fixtures: a tiny synthetic collection on disk that any area's tests can reuse.

``tiny_collection`` is written once per test session (6 species in 2 genera, 10 images per species,
32 px: train 6, val 2, test 2 per species) and must be treated as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlens.data.synthetic import SynthConfig, generate_collection
from traitlens.data.traits import TraitTable, load_traits

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
