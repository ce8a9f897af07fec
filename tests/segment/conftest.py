"""Shared fixtures of the segmentation tests: tiny synthetic specimens made in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch



def to_frame(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255


def blob_scene(h: int = 48, w: int = 48, shift=(0, 0), seed: int = 0):
    """A frame with three coloured rectangles (traits 1-3) on a noisy grey background, and its labels."""
    rng = np.random.default_rng(seed)
    img = 0.45 + 0.05 * rng.standard_normal((h, w, 3))
    labels = np.zeros((h, w), dtype=np.int64)
    dy, dx = shift
    for k, (y0, x0, y1, x1, colour) in enumerate([(8, 8, 20, 22, (0.9, 0.1, 0.1)),
                                                   (24, 10, 36, 18, (0.1, 0.8, 0.2)),
                                                   (22, 26, 40, 40, (0.1, 0.2, 0.9))], start=1):
        img[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = colour
        labels[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = k
    img = np.clip(img, 0, 1)
    return torch.from_numpy(img).permute(2, 0, 1).float(), torch.from_numpy(labels)


@pytest.fixture(scope="session")
def scene():
    """The :func:`blob_scene` maker (test modules are imported with importlib, so helpers come as fixtures)."""
    return blob_scene


def _synth(size: int) -> dict:
    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy

    cfg = SynthConfig(species=12, per_species=5, size=size, split=(0.2, 0.0, 0.8))
    table = make_taxonomy(cfg)
    train = generate_arrays(cfg, "train", table)
    test = generate_arrays(cfg, "test", table)
    return {"cfg": cfg, "table": table, "train": train, "test": test, "to_frame": to_frame}


@pytest.fixture(scope="session")
def synth64():
    """A small synthetic collection in memory: 12 species, support = first train image, queries = test images."""
    return _synth(64)


@pytest.fixture(scope="session")
def synth128():
    """The same collection rendered at 128 px (the size the accuracy claims are measured at)."""
    return _synth(128)
