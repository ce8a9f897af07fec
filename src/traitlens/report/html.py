"""Self-contained HTML pages: every image is embedded, so a page opens offline and can be mailed.

A page is a list of :class:`Section`; a section is a list of blocks (text, tables, figures,
galleries). Everything shown is escaped; nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image", "matplotlib.figure.Figure"]  # noqa: F821

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2327;background:#fafafa}
header{background:#23403a;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:1.6em} header p{margin:4px 0 0;opacity:.8}
nav{padding:8px 32px;background:#e8efe9;font-size:.95em} nav a{margin-right:16px;color:#23403a}
main{padding:8px 32px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde3de;border-radius:8px;padding:12px 24px 20px;margin:20px 0}
h2{color:#23403a;border-bottom:2px solid #e8efe9;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0;font-size:.92em}
th,td{border:1px solid #ccd5cf;padding:4px 10px;text-align:right}
th{background:#eef3ef} td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;font-size:.85em;color:#555;padding-top:4px;text-align:left}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #ccd5cf}
img.px{image-rendering:pixelated}
figcaption{font-size:.82em;color:#444;max-width:420px}
.gallery{display:grid;gap:10px}
.gallery figure{margin:0;min-width:0}
.note{color:#555;font-size:.9em}
.scroll{overflow-x:auto;max-width:100%}
.swatch{display:inline-block;width:1.1em;height:1.1em;border:1px solid #555;vertical-align:middle;margin-right:6px}
td.differs{background:#fde8b0;font-weight:600}
.better{color:#23403a;font-size:.85em;font-weight:400}
@media (max-width:1100px){main{padding:8px 12px 30px}section{padding:10px 12px 16px}}
"""


#: Images up to this many pixels a side are drawn with ``image-rendering: pixelated`` (tiny synthetic specimens
#: stay crisp on a high-density screen); larger ones, and plots, are resampled smoothly when they shrink.
PIXELATED_MAX = 256


def png_data_uri(image: ImageLike, scale: int = 1) -> str:
    """Encode a PNG path, an H×W×3 / H×W uint8 array, a PIL image or a matplotlib figure as a data URI."""
    return _data_uri(_png_bytes(image, scale))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_tag(image: ImageLike, alt: str = "", scale: int = 1, width: Optional[int] = None) -> str:
    """An embedded ``<img>`` drawn at its own pixel size (``width``/``height`` set; the page's style lets it
    shrink to its cell, never stretch), or ``width`` px wide when given. ``scale``: enlarge the pixels first
    (nearest neighbour), for tiny images meant to be seen. Small or enlarged images are drawn pixelated."""
    data = _png_bytes(image, scale)
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the PNG's IHDR
    crisp = max(w, h) <= PIXELATED_MAX or (width is not None and int(width) > w)
    # the sizing is inline, so the tag keeps its shape where the page's style sheet is absent (the app's panels)
    style = (f"width:{int(width)}px;" if width else "") + "max-width:100%;height:auto" + (
        ";image-rendering:pixelated" if crisp else "")
    cls = ' class="px"' if crisp else ""
    return f'<img src="{_data_uri(data)}" width="{w}" height="{h}"{cls} style="{style}" alt="{html.escape(alt)}">'


def _png_bytes(image: ImageLike, scale: int = 1) -> bytes:
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if scale == 1 and path.suffix.lower() == ".png":
            return path.read_bytes()
        image = Image.open(path).convert("RGB")
    if hasattr(image, "savefig"):  # a matplotlib Figure
        buf = io.BytesIO()
        image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(image)
        return buf.getvalue()
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class Markup(str):
    """Text that is already HTML (a table cell with a colour swatch, a highlighted value): shown as is."""


def swatch(rgb: Sequence[int], label: str = "") -> Markup:
    """A colour swatch (a small filled square) followed by ``label``, for table cells."""
    r, g, b = (int(c) for c in rgb[:3])
    return Markup(f'<span class="swatch" style="background:rgb({r},{g},{b})" title="rgb({r}, {g}, {b})"></span>'
                  f"{html.escape(label)}")


def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, Markup):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return html.escape(str(value))


@dataclass
class Section:
    """One titled part of a page, built block by block."""

    title: str
    intro: str = ""
    blocks: List[str] = field(default_factory=list)

    def text(self, paragraph: str, note: bool = False) -> "Section":
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(paragraph)}</p>")
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None,
              caption: str = "", floatfmt: str = ".3f",
              highlight: Optional[Iterable[Tuple[int, str]]] = None) -> "Section":
        """A table of ``rows`` (dicts); ``columns`` picks and orders the keys (default: first row's).

        ``highlight``: (row index, column) cells to mark (e.g. the trait values in which siblings differ). A
        wide table scrolls inside its section instead of widening the page.
        """
        rows = list(rows)
        if not rows:
            self.blocks.append(f'<p class="note">(no rows{": " + html.escape(caption) if caption else ""})</p>')
            return self
        columns = list(columns or rows[0].keys())
        marked = set(highlight or ())
        head = "".join(f"<th>{_fmt(c, floatfmt)}</th>" for c in columns)
        mark = ' class="differs"'
        body = "".join(
            "<tr>" + "".join(f"<td{mark if (i, c) in marked else ''}>{_fmt(row.get(c, ''), floatfmt)}</td>"
                             for c in columns) + "</tr>"
            for i, row in enumerate(rows)
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                           "</table></div>")
        return self

    def figure(self, image: ImageLike, caption: str = "", width: Optional[int] = None, scale: int = 1) -> "Section":
        """A matplotlib figure, an image array or a PNG path, embedded at its own size (``width`` px when given)."""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f"<figure>{image_tag(image, caption, scale, width)}{cap}</figure>")
        return self

    def gallery(self, items: Iterable[Tuple[ImageLike, str]], columns: int = 6, scale: int = 1) -> "Section":
        """A grid of (image, caption) pairs, each image at most its own size (a small one is not stretched to
        its cell: pass ``scale`` to enlarge it)."""
        cells = [
            f"<figure>{image_tag(img, cap, scale)}<figcaption>{html.escape(cap)}</figcaption></figure>"
            for img, cap in items
        ]
        self.blocks.append(
            f'<div class="gallery" style="grid-template-columns:repeat({int(columns)},1fr)">{"".join(cells)}</div>'
        )
        return self

    def html(self, raw: str) -> "Section":
        """Raw HTML, for callers that build their own markup (escape what you put in it)."""
        self.blocks.append(raw)
        return self

    def render(self, anchor: str) -> str:
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        return f'<section id="{anchor}"><h2>{html.escape(self.title)}</h2>{intro}{"".join(self.blocks)}</section>'


def write_page(title: str, sections: Sequence[Section], path: Union[str, Path], subtitle: str = "") -> Path:
    """Write a self-contained HTML page with a table of contents; returns its path."""
    from traitlens import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="#{a}">{html.escape(s.title)}</a>' for a, s in zip(anchors, sections))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = html.escape(subtitle or f"traitlens {__version__} · {stamp}")
    body = "".join(s.render(a) for a, s in zip(anchors, sections))
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
        f"<body><header><h1>{html.escape(title)}</h1><p>{sub}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
