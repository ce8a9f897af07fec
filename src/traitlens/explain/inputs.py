"""What ``explain`` accepts, turned into the batch the model takes: paths, PIL images, arrays and tensors.

>>> model, meta = load_model("runs/vit")
>>> e = explain(model, "bunting.jpg")                  # or a PIL image, a list of them, a 3×H×W tensor
>>> x = as_batch(model, [pil_a, "b.png"])              # B×3×H×W, what explain() computes on

Pictures (a path, a ``PIL.Image``, an H×W×3 uint8 array or uint8 tensor) go through the model's own eval
transform (:func:`preprocessing`: the backbone's data config, as timm's: resize the shorter side, centre crop,
normalise; the checkpoint's image size when it was trained at another). Float tensors are taken as already
normalised model input: 3×H×W gains its batch dimension, B×3×H×W passes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from torch import nn

from traitlens.errors import UserError


def preprocessing(model: nn.Module):
    """The eval transform for ``model``'s input (a :class:`~traitlens.data.transforms.SpecimenTransform`):
    ``model.traitlens_transform`` when the loader set it, else one built from the backbone's data config and the
    image size its checkpoint (``model.traitlens_meta``) was trained at."""
    given = getattr(model, "traitlens_transform", None)
    if given is not None:
        return given
    from traitlens import backbones
    from traitlens.data.transforms import from_data_config

    dc = dict(backbones.data_config(model))
    size = ((getattr(model, "traitlens_meta", None) or {}).get("config") or {}).get("image_size")
    if size:
        dc["input_size"] = (3, int(size), int(size))
    return from_data_config(dc, train=False)


def _is_picture(x) -> bool:
    from PIL import Image

    if isinstance(x, (str, Path, Image.Image)):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype == np.uint8 or x.ndim in (2, 3)
    return torch.is_tensor(x) and x.dtype == torch.uint8


def _picture(x):
    """A path or an array → a PIL RGB image (uint8 tensors are H×W×3 or 3×H×W)."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return x.convert("RGB")
    if isinstance(x, (str, Path)):
        from traitlens.data.imageio import load_image

        return load_image(x, max_pixels=64 * 1024 * 1024)
    arr = x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)  # floats in [0, 1]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UserError(f"an image array must be H×W×3 (or H×W), got shape {tuple(arr.shape)}")
    return Image.fromarray(np.ascontiguousarray(arr))


def _one(model: nn.Module, x, transform) -> torch.Tensor:
    if _is_picture(x):
        out = transform(_picture(x))
        return out[0] if isinstance(out, tuple) else out
    if torch.is_tensor(x) and x.dim() == 3 and x.shape[0] == 3:
        return x.float()
    raise UserError(f"cannot explain a {type(x).__name__}"
                    + (f" of shape {tuple(x.shape)}" if hasattr(x, "shape") else "")
                    + ": give image paths, PIL images, H×W×3 uint8 arrays, or normalised 3×H×W / B×3×H×W tensors")


def as_batch(model: nn.Module, images: Union[torch.Tensor, Sequence, object]) -> torch.Tensor:
    """``images`` as the normalised B×3×H×W float tensor ``model`` takes (see the module's docstring)."""
    if torch.is_tensor(images) and images.dim() == 4 and images.dtype != torch.uint8:
        return images
    if torch.is_tensor(images) and images.dim() == 4:  # B uint8 pictures
        items: List = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise UserError("no images to explain")
    transform = preprocessing(model) if any(_is_picture(x) for x in items) else None
    tensors = [_one(model, x, transform) for x in items]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise UserError(f"the images have different sizes after preprocessing ({', '.join(map(str, sorted(shapes)))}); "
                        "give pictures (the model's transform makes them one size) or tensors of one size")
    return torch.stack(tensors)
