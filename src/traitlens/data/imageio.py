"""Robust image and label-map loading, and a recorder for files a bulk run had to skip.

``load_image`` turns whatever a collection holds (EXIF-rotated phone JPEGs, grayscale scans, palette GIFs,
RGBA PNGs, CMYK JPEGs, 16-bit TIFF/PNG) into an upright 8-bit RGB ``PIL.Image``, decoding each file once.
``load_mask`` keeps label ids exactly; an RGB mask (a picture of a label map) is refused unless a palette maps
its colours to ids. Camera raw files (``.CR2``, ``.NEF``, ``.DNG``, ...) are developed with ``rawpy`` (LibRaw),
the optional ``raw`` extra; without it they raise :class:`BadImageError` saying so, so bulk runs skip them by
name and count them. Anything unreadable raises :class:`BadImageError` naming the path; bulk commands catch it,
record it in :class:`SkippedFiles` and go on.

Decompression-bomb limit: PIL refuses images above ``Image.MAX_IMAGE_PIXELS`` (about 89 M pixels) to protect
against malicious files. Herbarium sheets and slide scans legitimately exceed that, so this module raises PIL's
limit to :data:`MAX_PIXELS` (16384 × 16384 = 268 M pixels, about 0.8 GB as RGB) and refuses anything larger
with a clear error. Change ``traitlens.data.imageio.MAX_PIXELS`` to move the cap.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from traitlens.errors import BadImageError

PathLike = Union[str, Path]

#: Largest image (in pixels) that is decoded; larger files raise :class:`BadImageError`.
MAX_PIXELS = 16384 * 16384
#: Colour that transparent pixels are composited on: mid grey, close to every backbone's mean colour.
BACKGROUND = (128, 128, 128)

# Deliberate: PIL's own limit becomes ours, so its bomb error only fires for files above 2 × our cap, and our
# own check (below) gives the user a clear message first.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

#: Camera raw formats read through rawpy (LibRaw) when it is installed (``pip install 'traitlens[raw]'``).
RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf",
                            ".orf", ".rw2", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f"})
RAW_HINT = "install the raw extra (pip install 'traitlens[raw]', i.e. rawpy) to read camera raw files"

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def special_file_kind(mode: int) -> Optional[str]:
    """What a ``st_mode`` is when it is not a regular file or a folder (opening a FIFO blocks forever)."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None


def _open(path: Path, max_pixels: Optional[int] = None) -> Image.Image:
    """Open lazily (header only) with every failure mapped to BadImageError, and enforce the pixel limit
    (``max_pixels``, default :data:`MAX_PIXELS`) before anything is decoded."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(path, f"cannot open ({exc})") from None
    w, h = im.size
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if w * h > limit:
        im.close()
        raise BadImageError(path, f"image too large ({w}x{h} = {w * h} pixels > the limit of {limit})")
    if w == 0 or h == 0:
        im.close()
        raise BadImageError(path, "image has zero size")
    return im


def _decode(im: Image.Image, path: Path) -> None:
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # A truncated file shows up here ("image file is truncated"); PIL's LOAD_TRUNCATED_IMAGES stays off
        # so half-grey images never pass silently into training.
        raise BadImageError(path, f"corrupt or truncated image data ({exc})") from None


def _sixteen_bit_to_8(arr: np.ndarray) -> np.ndarray:
    """Scale an integer array to 8 bits: 16-bit data by 255/65535, anything outside [0, 65535] by min-max."""
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 65535:
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    span = max(hi - lo, 1)
    return ((arr - lo) * 255 // span).astype(np.uint8)


def _float_to_8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr * 255).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(arr).astype(np.uint8)
    return np.round((arr - lo) * 255 / max(hi - lo, 1e-12)).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: 16-bit/32-bit/float scaled (never clipped), alpha composited on BACKGROUND."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
        return Image.fromarray(_sixteen_bit_to_8(np.asarray(im)), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_8(np.asarray(im)), "L").convert("RGB")
    if mode in ("P", "L", "RGB") and "transparency" in im.info:  # tRNS chunk: a transparent colour/index
        im = im.convert("RGBA")
    elif mode in _ALPHA_MODES:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, im).convert("RGB")
    # L, 1, P (opaque), CMYK, YCbCr, LAB, HSV: PIL's own conversions are correct for these.
    return im.convert("RGB")


def _shrink(im: Image.Image, max_size: int) -> Image.Image:
    """Longest side ≤ max_size: integer ``reduce`` (box filter, cheap) first, then one exact resize."""
    w, h = im.size
    longest = max(w, h)
    if longest <= max_size:
        return im
    factor = longest // max_size
    if factor >= 2:
        im = im.reduce(factor)
        w, h = im.size
        longest = max(w, h)
    if longest > max_size:
        scale = max_size / longest
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return im


def load_image(path: PathLike, max_size: Optional[int] = None, max_pixels: Optional[int] = None) -> Image.Image:
    """Read ``path`` as an upright 8-bit RGB image (EXIF orientation applied), decoding the file once.

    ``max_size`` bounds the longest side: JPEGs are decoded directly at a reduced scale (``Image.draft``,
    1/2 … 1/8 in the DCT), other formats are reduced right after decoding. ``max_pixels`` (default
    :data:`MAX_PIXELS`) is checked against the header before decoding. Raises :class:`BadImageError` for a
    missing, special (FIFO, socket, device), unreadable, corrupt, truncated or too large file.
    """
    path = Path(path)
    if path.suffix.lower() in RAW_EXTENSIONS:
        return _load_raw(path, max_size, max_pixels)
    im = _open(path, max_pixels)
    keep_open = False
    try:
        if max_size is not None:
            if max_size < 1:
                raise ValueError(f"max_size must be ≥ 1, got {max_size}")
            if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
                # draft picks the largest DCT scale whose result is still ≥ the requested size.
                im.draft(im.mode, (max_size, max_size))
        _decode(im, path)
        out = _upright(im, path)
        out = to_rgb(out)
        if max_size is not None:
            out = _shrink(out, max_size)
        if out is im:
            # Nothing needed converting: hand back the decoded image itself (no copy of a large image). PIL has
            # already closed a single-frame file after decoding; a multi-frame file is copied so it can close.
            if getattr(im, "n_frames", 1) > 1:
                out = im.copy()
            else:
                keep_open = True
        return out
    finally:
        if not keep_open:
            im.close()


def _rawpy():
    try:
        import rawpy
    except ImportError:
        return None
    return rawpy


def raw_available() -> bool:
    """Whether camera raw files can be read here (the optional ``rawpy`` is installed)."""
    return _rawpy() is not None


def _check_file(path: Path) -> None:
    """BadImageError for a missing, folder or special file (what :func:`_open` checks before PIL opens it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot open ({exc})") from None
    if stat.S_ISDIR(mode):
        raise BadImageError(path, "is a folder, not an image file")
    kind = special_file_kind(mode)
    if kind is not None:
        raise BadImageError(path, f"is {kind}, not an image file")


@contextlib.contextmanager
def _open_raw(path: Path):
    """A LibRaw handle of ``path``; every failure (no rawpy, unreadable file) a BadImageError naming it."""
    _check_file(path)
    rawpy = _rawpy()
    if rawpy is None:
        raise BadImageError(path, f"camera raw file ({path.suffix}); {RAW_HINT}")
    try:
        raw = rawpy.imread(str(path))
    except Exception as exc:  # LibRawError and its subclasses, and IO errors
        raise BadImageError(path, f"unreadable camera raw file ({type(exc).__name__}: {exc})") from None
    try:
        yield raw
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(path, f"unreadable camera raw file ({type(exc).__name__}: {exc})") from None
    finally:
        raw.close()


def _load_raw(path: Path, max_size: Optional[int], max_pixels: Optional[int]) -> Image.Image:
    """A camera raw file developed by LibRaw (camera white balance, sRGB, 8 bit), turned upright as the camera
    recorded it; the pixel limit is checked from the raw header before anything is developed."""
    with _open_raw(path) as raw:
        w, h = int(raw.sizes.width), int(raw.sizes.height)
        limit = MAX_PIXELS if max_pixels is None else max_pixels
        if w * h > limit:
            raise BadImageError(path, f"image too large ({w}x{h} = {w * h} pixels > the limit of {limit})")
        # half_size skips demosaicing (4x fewer pixels): used only when the caller shrinks far below it.
        half = max_size is not None and max(w, h) // 2 >= max_size
        rgb = raw.postprocess(use_camera_wb=True, output_bps=8, half_size=half)
    out = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return _shrink(out, max_size) if max_size is not None else out


# LibRaw's ``flip`` (0 none, 3 = 180°, 5 = 90° counter-clockwise, 6 = 90° clockwise) as an EXIF orientation.
_LIBRAW_FLIP = {0: 1, 3: 3, 5: 8, 6: 6}


def image_orientation(path: PathLike) -> int:
    """The EXIF orientation (1…8) :func:`load_image` applies to ``path``: 1 when there is none; for a raw file
    the rotation LibRaw applies. Reads the header only. Raises :class:`BadImageError` for an unreadable file."""
    path = Path(path)
    if path.suffix.lower() in RAW_EXTENSIONS:
        with _open_raw(path) as raw:
            return _LIBRAW_FLIP.get(int(raw.sizes.flip), 1)
    im = _open(path)
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # as _upright: a malformed EXIF block means no rotation
        return 1
    finally:
        im.close()
    return int(orientation) if orientation in range(1, 9) else 1


#: What each EXIF orientation does to the stored pixels to show them upright (as ``ImageOps.exif_transpose``).
ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                         6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                         8: Image.Transpose.ROTATE_90}


def orient_labels(labels: np.ndarray, orientation: int) -> np.ndarray:
    """A label map (H×W) of an image's stored pixels turned the way ``orientation`` turns the image upright
    (ids unchanged; the same PIL transposition :func:`load_image` applies)."""
    method = ORIENTATION_TRANSPOSE.get(int(orientation))
    if method is None:
        return labels
    im = Image.fromarray(labels if labels.dtype == np.uint8 else labels.astype(np.int32))
    return np.array(im.transpose(method), dtype=labels.dtype)


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation tag; the image itself when there is none (no copy)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block must not make a readable image unreadable
        return im
    if orientation in (None, 1):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:
        warnings.warn(f"{path}: ignoring unreadable EXIF orientation ({exc})", stacklevel=3)
        return im


Palette = Union[str, Dict[Tuple[int, int, int], int]]


def read_palette(source: Union[PathLike, Dict]) -> Dict[Tuple[int, int, int], int]:
    """A colour → label id palette from a JSON file or a dict: ``{"#ff0000": 1, "0,255,0": 2, ...}`` (keys
    ``#rrggbb`` or ``r,g,b``; values ids 0…65535). ``"grey"`` is accepted by :func:`load_mask` instead of a
    palette: grey RGB masks whose grey level is the id."""
    from traitlens.errors import UserError

    where = "palette"
    if not isinstance(source, dict):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"palette {where}: not a readable JSON object ({exc})") from None
        if not isinstance(source, dict):
            raise UserError(f"palette {where}: expected a JSON object {{\"#rrggbb\": id, ...}}")
    out: Dict[Tuple[int, int, int], int] = {}
    for key, value in source.items():
        text = str(key).strip()
        try:
            if text.startswith("#") and len(text) == 7:
                rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
            else:
                rgb = tuple(int(v) for v in text.replace(" ", "").split(","))
            ident = int(value)
        except (TypeError, ValueError):
            raise UserError(f"palette {where}: {key!r}: {value!r} is not a colour (#rrggbb or r,g,b) and an id") from None
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or not 0 <= ident <= 65535:
            raise UserError(f"palette {where}: {key!r}: {value!r} is not a colour (#rrggbb or r,g,b) and an id")
        if rgb in out and out[rgb] != ident:
            raise UserError(f"palette {where}: colour {key!r} is given twice")
        out[rgb] = ident
    if not out:
        raise UserError(f"palette {where}: no colours")
    return out


def load_mask(path: PathLike, max_pixels: Optional[int] = None, max_label: Optional[int] = None,
              palette: Optional[Palette] = None) -> np.ndarray:
    """Read a label map (part ids, 0 = background) keeping ids exactly: H×W uint8 (L, P, 1) or int32 (16-bit, I).

    Palette PNGs give their palette indices, never the palette colours. An RGB(A) file is a picture of a label
    map, not one: it raises :class:`BadImageError` unless ``palette`` says how to read it, either a dict
    ``{(r, g, b): id}`` (see :func:`read_palette`; a colour it lacks is an error naming the colour) or
    ``"grey"`` (R = G = B, the grey level is the id). ``max_label`` refuses ids above it
    (:class:`BadImageError`), before a caller sizes one-hot maps by them.
    """
    path = Path(path)
    labels = _read_mask(path, max_pixels, palette)
    if max_label is not None and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > max_label:
            raise BadImageError(path, f"label ids run from {lo} to {hi}; ids from 0 to {max_label} are supported")
    return labels


RGB_MASK_HINT = ("save label ids as a single-channel (L, P or 16-bit) PNG, or map its colours to ids with a "
                 "palette (traitlens data masks --palette FILE.json; API: load_mask(path, palette=...))")


def _rgb_labels(arr: np.ndarray, path: Path, palette: Optional[Palette]) -> np.ndarray:
    """H×W×3 colours → H×W ids through ``palette`` (all pixels at once: colours packed into one int)."""
    rgb = arr[..., :3]
    grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    if palette is None:
        what = "a grey RGB image" if grey else "a colour RGB image"
        levels = np.unique(rgb[..., 0]) if grey else None
        seen = f" (grey levels {', '.join(str(int(v)) for v in levels[:6])}{' ...' if len(levels) > 6 else ''})" \
            if grey else ""
        raise BadImageError(path, f"mask is {what}{seen}, not a label map; {RGB_MASK_HINT}")
    if isinstance(palette, str):
        if palette != "grey":
            raise ValueError(f"palette must be a dict or 'grey', got {palette!r}")
        if not grey:
            raise BadImageError(path, "palette 'grey' needs R = G = B; the mask has colours")
        return np.array(rgb[..., 0], dtype=np.uint8)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed.ravel(), return_inverse=True)
    keys = {(r << 16) | (g << 8) | b: ident for (r, g, b), ident in palette.items()}
    unknown = [int(c) for c in colours if int(c) not in keys]
    if unknown:
        c = unknown[0]
        raise BadImageError(path, f"{len(unknown)} colour(s) of the mask are not in the palette (first "
                                  f"#{c >> 16:02x}{(c >> 8) & 255:02x}{c & 255:02x})")
    ids = np.array([keys[int(c)] for c in colours], dtype=np.int32)
    out = ids[inverse].reshape(packed.shape)
    return out.astype(np.uint8) if out.max(initial=0) <= 255 else out


def _read_mask(path: Path, max_pixels: Optional[int], palette: Optional[Palette] = None) -> np.ndarray:
    im = _open(path, max_pixels)
    try:
        _decode(im, path)
        view = _upright(im, path)  # a mask carrying an orientation tag means the same as an image would
        mode = view.mode
        if mode in ("L", "P"):
            return np.array(view, dtype=np.uint8)
        if mode == "1":
            return np.array(view, dtype=np.uint8)
        if mode in ("LA", "PA"):
            return np.array(view.getchannel(0), dtype=np.uint8)
        if mode in _SIXTEEN_BIT or mode == "I":
            return np.array(view).astype(np.int32)
        if mode == "F":
            arr = np.asarray(view)
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise BadImageError(path, "float mask with non-integer values; save label ids as integers")
            return arr.astype(np.int32)
        if mode in ("RGB", "RGBA"):
            return _rgb_labels(np.asarray(view), path, palette)
        raise BadImageError(path, f"unsupported mask mode {mode!r}; save label ids as an L, P or 16-bit PNG")
    finally:
        im.close()


class SkippedFiles:
    """Files a bulk command skipped: ``add(path, reason)``, ``count``, ``summary()``, ``write(path)`` (JSONL)."""

    def __init__(self) -> None:
        self._items: List[Tuple[str, str]] = []

    def add(self, path: PathLike, reason: str) -> None:
        self._items.append((str(path), str(reason)))

    def add_error(self, error: BadImageError) -> None:
        self.add(error.path, error.reason)

    def extend(self, items) -> None:
        """Add ``(path, reason)`` pairs, e.g. a collated batch's ``batch["skipped"]``."""
        for path, reason in items:
            self.add(path, reason)

    @property
    def count(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return iter(list(self._items))

    def __bool__(self) -> bool:
        return bool(self._items)

    def summary(self, log_path: Optional[PathLike] = None) -> str:
        """One line for the run's log, e.g. ``skipped 2 unreadable files (first: a.jpg: truncated)``."""
        if not self._items:
            return "skipped 0 files"
        noun = "file" if len(self._items) == 1 else "files"
        first_path, first_reason = self._items[0]
        where = f"; listed in {log_path}" if log_path is not None else ""
        return f"skipped {len(self._items)} unreadable {noun} (first: {first_path}: {first_reason}){where}"

    def write(self, path: PathLike) -> Path:
        """Write one JSON object per skipped file (``{"path": ..., "reason": ...}``) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for p, reason in self._items:
                fh.write(json.dumps({"path": p, "reason": reason}) + "\n")
        return path

    @classmethod
    def read(cls, path: PathLike) -> "SkippedFiles":
        """Read back a file written by :meth:`write`."""
        out = cls()
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out.add(row["path"], row["reason"])
        return out
