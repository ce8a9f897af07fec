"""One joint transform for a specimen image, its part mask and its keypoints, in torch.

Every transform here is "crop a box of the input, resize it to the output size, maybe mirror it". That one
:class:`Geometry` is applied to the image (antialiased bilinear/bicubic), the mask (nearest neighbour, ids kept
exactly) and points or boxes (CUB parts and bounding boxes), so all three stay aligned.

Evaluation follows timm's ``crop_mode``: ``center`` (the default) sends the shorter side to ``size / crop_pct`` and
keeps the centre ``size``; ``border`` fits the longer side instead and pads the rest (with the mean colour, so
padding is zero after normalisation); ``squash`` resizes both sides, ignoring the aspect ratio. A crop box may
reach outside the image (``border``): what lies outside is padding. :func:`map_to_input` sends a map computed on
the transformed image back onto the original photo's pixels.
Training draws a random-resized crop and a horizontal flip from the ``torch.Generator`` it is given, never
from global RNG, so a dataset can seed each sample by (seed, epoch, index): a resumed or distributed run then
sees exactly the augmentations of a single uninterrupted run.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Sequence[int]]
CROP_MODES = ("center", "border", "squash")


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) only, so a sample's augmentation does not depend on which
    process draws it or on how many samples were drawn before it."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0]))


@dataclass(frozen=True)
class Geometry:
    """Crop box (``left``, ``top``, ``width``, ``height``, input pixels) resized to ``out_h``×``out_w``, then
    mirrored left-right when ``flip``. Coordinates are continuous pixel coordinates (pixel i spans [i, i+1))."""

    left: int
    top: int
    width: int
    height: int
    out_h: int
    out_w: int
    flip: bool = False

    @classmethod
    def identity(cls, width: int, height: int) -> "Geometry":
        return cls(0, 0, width, height, height, width, False)

    def map_points(self, xy) -> Tuple[torch.Tensor, torch.Tensor]:
        """N×2 (x, y) input points → (N×2 output points, N bool: inside the output image)."""
        pts = torch.as_tensor(np.asarray(xy, dtype=np.float32)).reshape(-1, 2).clone()
        x = (pts[:, 0] - self.left) * (self.out_w / self.width)
        y = (pts[:, 1] - self.top) * (self.out_h / self.height)
        if self.flip:
            x = self.out_w - x
        out = torch.stack([x, y], dim=1)
        inside = (x >= 0) & (x <= self.out_w) & (y >= 0) & (y <= self.out_h)
        return out, inside

    def map_boxes(self, xywh) -> torch.Tensor:
        """N×4 boxes (x, y, w, h) → N×4 boxes in output pixels, clipped to the output image."""
        boxes = torch.as_tensor(np.asarray(xywh, dtype=np.float32)).reshape(-1, 4)
        corners = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=0)
        mapped, _ = self.map_points(corners)
        n = boxes.shape[0]
        a, b = mapped[:n], mapped[n:]
        lo = torch.minimum(a, b)
        hi = torch.maximum(a, b)
        limit = torch.tensor([self.out_w, self.out_h], dtype=torch.float32)
        lo = torch.minimum(lo.clamp(min=0), limit)
        hi = torch.minimum(hi.clamp(min=0), limit)
        return torch.cat([lo, hi - lo], dim=1)


def _pair(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 3:  # timm's (C, H, W)
        size = size[1:]
    if len(size) != 2:
        raise ValueError(f"size must be an int, (H, W) or (C, H, W); got {size}")
    return size


def image_to_uint8_tensor(image) -> torch.Tensor:
    """PIL image or H×W×3 uint8 array → 3×H×W uint8 tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        arr = np.array(image)  # a writable copy: torch refuses to wrap PIL's read-only buffer
    elif isinstance(image, torch.Tensor):
        return image if image.shape[0] == 3 else image.permute(2, 0, 1)
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


class SpecimenTransform:
    """Joint image + mask (+ points) transform.

    ``size``: output side or (H, W). ``mean``/``std``: per-channel, on the [0, 1] scale. Eval (``train=False``):
    shorter side to ``size / crop_pct`` (``crop_pct=None`` means 1: the whole shorter side), centre crop.
    Train: random-resized crop covering ``scale`` of the area with aspect ``ratio``, then a horizontal flip
    with probability 0.5 when ``hflip``. ``seed`` seeds the transform's own generator, used only when a call
    passes none.

    ``crop_mode`` (eval): ``center``, ``border`` (fit the longer side, pad) or ``squash`` (aspect not kept), as
    timm's data config names them.

    ``t(image, mask=None, generator=None) -> (3×H×W float normalised, H×W long or None)``.
    """

    def __init__(self, size: Size, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 train: bool = False, crop_pct: Optional[float] = None, scale: Tuple[float, float] = (0.7, 1.0),
                 hflip: bool = True, ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                 interpolation: str = "bilinear", seed: int = 0, crop_mode: str = "center"):
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
        self.crop_mode = crop_mode
        self.size = _pair(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        self.train = bool(train)
        self.crop_pct = 1.0 if crop_pct is None else float(crop_pct)
        if not 0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.scale = (float(scale[0]), float(scale[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo ≤ hi ≤ 1, got {scale}")
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = bool(hflip)
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
        self.interpolation = interpolation
        self._own_generator = torch.Generator().manual_seed(int(seed))
        self._mean_t = torch.tensor(self.mean).view(3, 1, 1)
        self._std_t = torch.tensor(self.std).view(3, 1, 1)

    def __repr__(self) -> str:
        mode = (f"train, scale={self.scale}, hflip={self.hflip}" if self.train
                else f"eval, crop_pct={self.crop_pct}, crop_mode={self.crop_mode}")
        return f"SpecimenTransform(size={self.size}, {mode}, interpolation={self.interpolation})"

    # --- geometry ---------------------------------------------------------------------------------------
    def sample_geometry(self, width: int, height: int, generator: Optional[torch.Generator] = None) -> Geometry:
        """The crop/resize/flip for an input of ``width``×``height`` (random only in train mode)."""
        out_h, out_w = self.size
        if not self.train:
            return self._center_geometry(width, height)
        g = generator if generator is not None else self._own_generator
        left, top, cw, ch = self._random_box(width, height, g)
        flip = bool(self.hflip and torch.rand(1, generator=g).item() < 0.5)
        return Geometry(left, top, cw, ch, out_h, out_w, flip)

    def _center_geometry(self, width: int, height: int) -> Geometry:
        out_h, out_w = self.size
        if self.crop_mode == "squash":  # timm: Resize((size / crop_pct,) * 2), then the centre size
            ch = max(1, round(height * self.crop_pct))
            cw = max(1, round(width * self.crop_pct))
            return Geometry(int(round((width - cw) / 2.0)), int(round((height - ch) / 2.0)), cw, ch, out_h, out_w)
        if self.crop_mode == "border":  # timm: ResizeKeepRatio (longer side), then CenterCropOrPad
            s = min(out_h / self.crop_pct / height, out_w / self.crop_pct / width)
            ch, cw = max(1, round(out_h / s)), max(1, round(out_w / s))
            return Geometry(int(round((width - cw) / 2.0)), int(round((height - ch) / 2.0)), cw, ch, out_h, out_w)
        # Scale that maps the input onto (out / crop_pct) covering both sides, as timm's Resize + CenterCrop.
        s = max(out_h / self.crop_pct / height, out_w / self.crop_pct / width)
        ch = min(height, max(1, round(out_h / s)))
        cw = min(width, max(1, round(out_w / s)))
        top = int(round((height - ch) / 2.0))
        left = int(round((width - cw) / 2.0))
        return Geometry(left, top, cw, ch, out_h, out_w, False)

    def _random_box(self, width: int, height: int, g: torch.Generator) -> Tuple[int, int, int, int]:
        out_h, out_w = self.size
        area = width * height
        aspect_out = out_w / out_h  # ratio is relative to the output's own shape
        log_lo, log_hi = math.log(self.ratio[0] * aspect_out), math.log(self.ratio[1] * aspect_out)
        for _ in range(10):
            u = torch.rand(2, generator=g)
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0].item())
            aspect = math.exp(log_lo + (log_hi - log_lo) * u[1].item())
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= width and 0 < ch <= height:
                top = int(torch.randint(0, height - ch + 1, (1,), generator=g).item())
                left = int(torch.randint(0, width - cw + 1, (1,), generator=g).item())
                return left, top, cw, ch
        # Fallback (extreme aspect ratios): the largest centred box with an aspect inside ratio.
        in_ratio = width / height
        lo, hi = math.exp(log_lo), math.exp(log_hi)
        if in_ratio < lo:
            cw, ch = width, int(round(width / lo))
        elif in_ratio > hi:
            ch, cw = height, int(round(height * hi))
        else:
            cw, ch = width, height
        cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
        return (width - cw) // 2, (height - ch) // 2, cw, ch

    # --- application ------------------------------------------------------------------------------------
    def apply(self, image, mask=None, geometry: Optional[Geometry] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Apply ``geometry`` (or a freshly sampled one) to the image and the mask."""
        img = image_to_uint8_tensor(image)
        h, w = img.shape[-2:]
        if geometry is None:
            geometry = self.sample_geometry(w, h)
        out = self._image(img, geometry)
        m = None
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask)).long() if not isinstance(mask, torch.Tensor) else mask.long()
            if tuple(m.shape) != (h, w):
                raise ValueError(f"mask is {tuple(m.shape)} but the image is {(h, w)} (H, W); they must match")
            m = resize_mask(m, geometry)
        return out, m

    def _image(self, img: torch.Tensor, geo: Geometry) -> torch.Tensor:
        h, w = img.shape[-2:]
        if geo.left < 0 or geo.top < 0 or geo.left + geo.width > w or geo.top + geo.height > h:
            img = self._padded(img, geo)
            geo = Geometry(0, 0, geo.width, geo.height, geo.out_h, geo.out_w, geo.flip)
        crop = img[:, geo.top:geo.top + geo.height, geo.left:geo.left + geo.width].float()
        if (geo.height, geo.width) != (geo.out_h, geo.out_w):
            if self.interpolation == "nearest":
                crop = F.interpolate(crop[None], size=(geo.out_h, geo.out_w), mode="nearest-exact")[0]
            else:
                crop = F.interpolate(crop[None], size=(geo.out_h, geo.out_w), mode=self.interpolation,
                                     align_corners=False, antialias=True)[0]
                crop = crop.clamp_(0.0, 255.0)  # bicubic overshoots
        if geo.flip:
            crop = crop.flip(-1)
        return (crop / 255.0 - self._mean_t) / self._std_t

    def _padded(self, img: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """The crop box of ``geo`` cut from ``img`` (3×H×W uint8), the part outside the image in the mean colour."""
        fill = torch.tensor([round(m * 255) for m in self.mean], dtype=img.dtype).view(3, 1, 1)
        box = fill.expand(3, geo.height, geo.width).clone()
        h, w = img.shape[-2:]
        y0, x0 = max(0, geo.top), max(0, geo.left)
        y1, x1 = min(h, geo.top + geo.height), min(w, geo.left + geo.width)
        if y1 > y0 and x1 > x0:
            box[:, y0 - geo.top:y1 - geo.top, x0 - geo.left:x1 - geo.left] = img[:, y0:y1, x0:x1]
        return box

    def with_geometry(self, image, mask=None, generator: Optional[torch.Generator] = None):
        """Like ``__call__`` but also returns the :class:`Geometry` used, to map points and boxes."""
        width, height = _image_size(image)
        geo = self.sample_geometry(width, height, generator)
        img, m = self.apply(image, mask, geo)
        return img, m, geo

    def __call__(self, image, mask=None, generator: Optional[torch.Generator] = None):
        img, m, _ = self.with_geometry(image, mask, generator)
        return img, m


def resize_mask(mask: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Nearest-neighbour crop/resize/flip of an H×W label map by index gathering, so ids are kept exactly.

    Uses the same half-pixel convention as the image resize (output pixel i samples input (i + ½)·scale)."""
    rows = geo.top + torch.floor((torch.arange(geo.out_h) + 0.5) * (geo.height / geo.out_h)).long()
    cols = geo.left + torch.floor((torch.arange(geo.out_w) + 0.5) * (geo.width / geo.out_w)).long()
    rows = rows.clamp_(geo.top, geo.top + geo.height - 1)
    cols = cols.clamp_(geo.left, geo.left + geo.width - 1)
    h, w = mask.shape[-2:]
    inside_r, inside_c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    out = mask.index_select(0, rows.clamp(0, h - 1)).index_select(1, cols.clamp(0, w - 1))
    if not (bool(inside_r.all()) and bool(inside_c.all())):  # padding (crop_mode border) is background
        out = out * (inside_r[:, None] & inside_c[None, :]).to(out.dtype)
    if geo.flip:
        out = out.flip(-1)
    return out.contiguous()


def _image_size(image) -> Tuple[int, int]:
    """(width, height) of a PIL image, an H×W×3 array or a 3×H×W tensor."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    arr = np.asarray(image)
    return int(arr.shape[1]), int(arr.shape[0])


def from_data_config(cfg: dict, train: bool = False, **kw) -> SpecimenTransform:
    """Build the transform from timm's data config (``input_size``, ``mean``, ``std``, ``crop_pct``,
    ``interpolation``); keyword arguments override any of them."""
    args = {
        "size": _pair(cfg["input_size"]),
        "mean": cfg.get("mean", IMAGENET_MEAN),
        "std": cfg.get("std", IMAGENET_STD),
        "crop_pct": cfg.get("crop_pct"),
    }
    if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        args["interpolation"] = cfg["interpolation"]
    if cfg.get("crop_mode") in CROP_MODES:
        args["crop_mode"] = cfg["crop_mode"]
    args.update(kw)
    return SpecimenTransform(train=train, **args)


def map_to_input(maps: torch.Tensor, geometry: Geometry, input_size: Tuple[int, int],
                 out_size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Maps computed on a transformed image, drawn back on the original image's pixels.

    ``maps``: ...×h×w over the transformed image (any resolution: it spans the whole output frame);
    ``geometry``: the transform's :class:`Geometry` for an input of ``input_size`` (H, W); ``out_size``: the
    (H', W') to draw at (default ``input_size``; a smaller one for a reduced copy of a large photo). Returns
    ``(...×H'×W' maps, H'×W' bool: the pixels the model saw)``; pixels it did not see (cropped away) are 0.
    Bilinear, batched over the leading dimensions.
    """
    H, W = int(input_size[0]), int(input_size[1])
    oh, ow = (H, W) if out_size is None else (int(out_size[0]), int(out_size[1]))
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    # Pixel centres of the drawing, in input pixels, then in the transformed frame's [-1, 1].
    y = (torch.arange(oh, dtype=torch.float32) + 0.5) * (H / oh)
    x = (torch.arange(ow, dtype=torch.float32) + 0.5) * (W / ow)
    v = (y - geometry.top) / geometry.height * 2 - 1
    u = (x - geometry.left) / geometry.width * 2 - 1
    if geometry.flip:
        u = -u
    seen = ((v >= -1) & (v <= 1))[:, None] & ((u >= -1) & (u <= 1))[None, :]
    grid = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)  # H'×W'×2, (x, y) order
    grid = grid.to(flat.device).expand(flat.shape[0], oh, ow, 2)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out * seen.to(out.device, out.dtype)
    return out.reshape(*lead, oh, ow), seen


def denormalize(tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                as_uint8: bool = False):
    """Undo normalisation of a 3×H×W or B×3×H×W tensor: values in [0, 1]; with ``as_uint8`` an H×W×3 (or
    B×H×W×3) uint8 numpy array ready for drawing."""
    t = tensor.detach().float().cpu()
    shape = (3, 1, 1) if t.dim() == 3 else (1, 3, 1, 1)
    out = (t * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0.0, 1.0)
    if not as_uint8:
        return out
    out = (out * 255.0).round().to(torch.uint8)
    return out.permute(1, 2, 0).numpy() if out.dim() == 3 else out.permute(0, 2, 3, 1).numpy()


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def is_joint(transform: Any) -> bool:
    """Whether ``transform`` takes ``(image, mask=..., generator=...)`` (and so keeps masks aligned)."""
    if transform is None or isinstance(transform, SpecimenTransform):
        return True
    return _accepts(transform, "mask") and _accepts(transform, "generator")


def run_transform(transform, image: Image.Image, mask: Optional[np.ndarray], generator: torch.Generator):
    """Apply any supported transform to one sample → ``(image 3×H×W float, mask H×W long or None, Geometry|None)``.

    ``None``: the image as floats in [0, 1], the mask as is. A :class:`SpecimenTransform`: joint, with its
    geometry. Another joint callable ``(image, mask=, generator=)``: joint, no geometry. Any other callable
    (e.g. a torchvision pipeline): image only; the mask is dropped, since it could not stay aligned.
    """
    if transform is None:
        img = image_to_uint8_tensor(image).float() / 255.0
        m = None if mask is None else torch.as_tensor(np.asarray(mask)).long()
        w, h = _image_size(image)
        return img, m, Geometry.identity(w, h)
    if isinstance(transform, SpecimenTransform):
        return transform.with_geometry(image, mask, generator)
    if is_joint(transform):
        img, m = transform(image, mask=mask, generator=generator)
        return _as_float_image(img), (None if m is None else torch.as_tensor(m).long()), None
    return _as_float_image(transform(image)), None, None


def _as_float_image(img) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img.float() if not img.is_floating_point() else img
    return image_to_uint8_tensor(img).float() / 255.0
