"""Tiny image folders for the runner's tests, and a helper that runs the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[2] / "src"


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0, ext: str = ".png") -> list:
    """``n`` random RGB images ``<folder>/img<i><ext>`` (returns their paths)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}{ext}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def make_images():
    """:func:`write_images`, for tests (conftest modules are not importable under importlib mode)."""
    return write_images


@pytest.fixture
def run_cli():
    """:func:`cli`, for tests."""
    return cli


@pytest.fixture
def images(tmp_path):
    """Forty 32 px images in two class folders."""
    root = tmp_path / "images"
    write_images(root / "a", 20, seed=1)
    write_images(root / "b", 20, seed=2)
    return root


def cli(*args: str, **popen) -> subprocess.Popen:
    """``python -m traitlens.cli ARGS`` in a fresh process (this checkout's sources, quiet, one thread)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), TRAITLENS_QUIET="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "traitlens.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
