"""A small synthetic collection for the compbench tests (written once per session, read-only)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cb_collection(tmp_path_factory) -> Path:
    from traitlens.data.synthetic import SynthConfig, generate_collection

    root = tmp_path_factory.mktemp("cb_synthetic") / "coll"
    return generate_collection(root, SynthConfig(species=6, per_species=8, size=32, seed=3), progress=False)
