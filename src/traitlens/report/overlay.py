"""Heat maps drawn over images: one colouring and one blend for every command and report."""

from __future__ import annotations

import numpy as np


def colourise(heat: np.ndarray) -> np.ndarray:
    """H×W map in [0, 1] → H×W×3 uint8 (matplotlib's jet)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, weight: float = 0.5, normalise: bool = False) -> np.ndarray:
    """Blend a heat map over an H×W×3 uint8 image: ``weight·image + (1 − weight)·colour``.

    A map of another size (e.g. an h×w attention map) is upsampled bilinearly to the image first;
    ``normalise`` min-max scales it to [0, 1] (for raw attention or activation values).
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != image.shape[:2]:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(heat))[None, None]
        heat = torch.nn.functional.interpolate(t, size=image.shape[:2], mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    if normalise:
        heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
    colour = colourise(heat).astype(np.float32)
    return np.clip(weight * image.astype(np.float32) + (1 - weight) * colour, 0, 255).astype(np.uint8)


def trait_colours(num_labels: int) -> np.ndarray:
    """``num_labels×3`` uint8 colours: black background, then well-separated hues."""
    import colorsys

    colours = [(0, 0, 0)]
    for k in range(1, num_labels):
        h = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """H×W×3 uint8 image with each trait of an H×W label map painted in its colour (background untouched)."""
    colours = trait_colours(int(labels.max()) + 1)
    paint = colours[labels].astype(np.float32)
    out = image.astype(np.float32)
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * out + alpha * paint, out).clip(0, 255).astype(np.uint8)
