"""Heat maps drawn over images: one colouring and one blend for every command and report.

>>> from traitlens.report.overlay import overlay
>>> picture = overlay("bunting.jpg", e.maps[0], transform=tf, colorbar=True)   # H×W(+bar)×3 uint8

``overlay`` draws on the *original* image at its own resolution: a map computed on the model's transformed input
(``transform``: the eval :class:`~traitlens.data.transforms.SpecimenTransform` that made it) is sent back through
the crop with :func:`~traitlens.data.transforms.map_to_input`; the pixels the model never saw (cropped away) are
shown dimmed, uncoloured.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

#: Below this, text is unreadable; above, a label row dwarfs a 64 px tile.
LABEL_SIZE = 11


def colourise(heat: np.ndarray) -> np.ndarray:
    """H×W map in [0, 1] → H×W×3 uint8 (matplotlib's jet)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


@lru_cache(maxsize=8)
def label_font(size: int = LABEL_SIZE):
    """A TrueType font with Greek letters (α) for labels drawn into images: matplotlib's DejaVu Sans, which every
    matplotlib install ships (PIL's built-in bitmap font draws α as an empty box)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:  # a matplotlib without its fonts: PIL's own scalable default (Pillow ≥ 10.1)
        return ImageFont.load_default(size)


def _as_picture(image) -> np.ndarray:
    """A path, a PIL image or an H×W×3 / H×W array → H×W×3 uint8."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        from traitlens.data.imageio import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:  # floats in [0, 1]
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return arr


def _heat_on(picture: np.ndarray, heat, transform=None):
    """The map over ``picture``'s pixels (H×W float32) and which pixels the model saw (H×W bool)."""
    import torch

    from traitlens.data.transforms import SpecimenTransform, map_to_input

    t = heat.detach().float().cpu() if torch.is_tensor(heat) else torch.from_numpy(np.asarray(heat, np.float32))
    h, w = picture.shape[:2]
    if t.shape == (h, w) and transform is None:
        return t.numpy(), np.ones((h, w), bool)
    if transform is None:
        # Without the transform: a map of the picture's aspect ratio covers it; another is taken as the centre
        # crop timm's default eval transform makes (shorter side, crop_pct 1).
        transform = SpecimenTransform(tuple(t.shape))
    geometry = transform.sample_geometry(w, h)
    out, seen = map_to_input(t, geometry, (h, w))
    return out.numpy(), seen.numpy()


def overlay(image, heat, weight: float = 0.5, normalise: bool = False, transform=None,
            colorbar: bool = False) -> np.ndarray:
    """Blend a heat map over an image at the image's own resolution: ``weight·image + (1 − weight)·colour``.

    ``image``: H×W×3 uint8 (or a path, a PIL image). ``heat``: a map in [0, 1] (array or tensor) of any size:
    of the image's size it is used as is; else it is drawn back through ``transform`` (the eval transform that
    made the model's input; default: a centre crop of the shorter side) and upsampled bilinearly. ``normalise``
    min-max scales it first (raw attention or activation values). Pixels outside the model's crop are dimmed.
    ``colorbar`` appends a colour bar (0 … 1) on the right. Returns uint8 H×W'×3.
    """
    picture = _as_picture(image)
    heat, seen = _heat_on(picture, heat, transform)
    if normalise:
        lo, hi = heat[seen].min(), heat[seen].max()
        heat = (heat - lo) / (hi - lo + 1e-12)
    out = blend(picture, heat, seen, weight)
    return with_colorbar(out) if colorbar else out


def blend(picture: np.ndarray, heat: np.ndarray, seen=None, weight: float = 0.5) -> np.ndarray:
    """``weight·picture + (1 − weight)·colour(heat)`` for an H×W×3 uint8 picture and an H×W map of its size in
    [0, 1]; where ``seen`` (H×W bool) is False the picture is dimmed and not coloured."""
    colour = colourise(np.asarray(heat)).astype(np.float32)
    base = picture.astype(np.float32)
    mixed = weight * base + (1 - weight) * colour
    if seen is not None:
        mixed = np.where(np.asarray(seen)[..., None], mixed, 0.45 * base)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def colorbar_strip(height: int, width: int = 0) -> np.ndarray:
    """A vertical jet colour bar ``height`` px tall (1 at the top) with 0 / 0.5 / 1 ticks, as H×w×3 uint8."""
    from PIL import Image, ImageDraw

    font = label_font(max(8, min(LABEL_SIZE, height // 6)))
    bar_w = max(8, height // 12)
    text_w = int(max(font.getlength(t) for t in ("0", "0.5", "1"))) + 4
    width = max(width, bar_w + text_w + 6)
    canvas = Image.new("RGB", (width, height), "white")
    pad = max(4, font.size // 2 + 1)
    span = max(1, height - 2 * pad)
    ramp = np.linspace(1, 0, span, dtype=np.float32)[:, None].repeat(bar_w, 1)
    canvas.paste(Image.fromarray(colourise(ramp)), (2, pad))
    draw = ImageDraw.Draw(canvas)
    for value in (1.0, 0.5, 0.0):
        y = pad + round((1 - value) * (span - 1))
        draw.text((bar_w + 5, y), f"{value:g}", fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def with_colorbar(picture: np.ndarray) -> np.ndarray:
    """``picture`` with :func:`colorbar_strip` appended on its right."""
    bar = colorbar_strip(picture.shape[0])
    return np.concatenate([picture, bar], axis=1)


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
