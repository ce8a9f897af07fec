"""The merged-image adapter: a pair as one picture, for models that take a single image.

Both images are resized (aspect ratio kept) to the average of their heights and placed side by side,
separated by a 1 px black, 8 px white, 1 px black band, as the benchmark merged its pairs for
single-image models.
"""

from __future__ import annotations

from typing import Tuple

from PIL import Image

#: The separator between the two images, left to right: (width in px, RGB colour).
SEPARATOR: Tuple[Tuple[int, Tuple[int, int, int]], ...] = ((1, (0, 0, 0)), (8, (255, 255, 255)), (1, (0, 0, 0)))
SEPARATOR_WIDTH = sum(w for w, _ in SEPARATOR)


def _to_height(im: Image.Image, height: int) -> Image.Image:
    if im.height == height:
        return im
    width = max(1, round(im.width * height / im.height))
    return im.resize((width, height), Image.BICUBIC)


def merge_pair(left: Image.Image, right: Image.Image) -> Image.Image:
    """``left`` and ``right`` joined into one RGB image of height ``round((h1 + h2) / 2)``."""
    left, right = left.convert("RGB"), right.convert("RGB")
    height = max(1, round((left.height + right.height) / 2))
    a, b = _to_height(left, height), _to_height(right, height)
    canvas = Image.new("RGB", (a.width + SEPARATOR_WIDTH + b.width, height), (255, 255, 255))
    canvas.paste(a, (0, 0))
    x = a.width
    for width, colour in SEPARATOR:
        canvas.paste(Image.new("RGB", (width, height), colour), (x, 0))
        x += width
    canvas.paste(b, (x, 0))
    return canvas
