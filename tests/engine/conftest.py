"""Tiny ImageFolder trees written by the tests themselves (no network, no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["alpha", "beta", "gamma", "delta"]


def make_folder(root: Path, per_class=None, size: int = 32, seed: int = 0, classes=CLASSES) -> Path:
    """``root/{train,val,test}/<class>/<i>.png``: each class a coloured square on a noisy background,
    at a class-specific quadrant, so a tiny model can learn it in a few epochs."""
    per_class = per_class or {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    colours = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (220, 220, 30), (200, 40, 200), (30, 200, 200)]
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
                half = size // 2
                y0, x0 = (c // 2) * half, (c % 2) * half
                s = half - 4
                oy, ox = rng.integers(0, 4, size=2)
                img[y0 + oy:y0 + oy + s, x0 + ox:x0 + ox + s] = colours[c % len(colours)]
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("tiny-data"))

