"""The atlas page: one card per species pair (the report draws; :mod:`traitlens.atlas` computes).

A card shows the ranked parts as bars with their 95% intervals (Finer-CAM energy share against the part's
area share and Grad-CAM's; the intervention's drop against the random region's), the representative
specimens of A and B side by side with the top part outlined and the Finer-CAM overlay, and the sentence.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from traitlens.report.html import Section, image_tag, write_page

#: What a card needs of one representative specimen: the picture H×W×3 uint8, the top part's mask H×W bool
#: and the Finer-CAM map H×W in [0, 1].
Specimen = Tuple[np.ndarray, np.ndarray, np.ndarray]

SOURCE_LABELS = {"finer": "Finer-CAM", "gradcam": "Grad-CAM (control)", "heads": "heads", "intervention":
                 "intervention", "combined": "combined"}


def emphasis(text: str) -> str:
    """The atlas sentence's ``*species*`` and ``**part**`` as HTML (everything else escaped)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", out)


def outlined(picture: np.ndarray, mask: np.ndarray, colour=(255, 0, 255), scale: int = 4) -> np.ndarray:
    """The picture enlarged ``scale``× (nearest) with the mask's outline drawn one enlarged pixel wide."""
    big = np.kron(picture, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else picture.copy()
    m = np.kron(mask.astype(np.uint8), np.ones((scale, scale), dtype=np.uint8)).astype(bool) if scale > 1 else mask
    pad = np.pad(m, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    edge = m & ~inner
    grown = edge.copy()  # two pixels wide, so it shows on the enlarged picture
    grown[1:] |= edge[:-1]
    grown[:, 1:] |= edge[:, :-1]
    big[grown] = colour
    return big


def pair_figure(pair, figures: Sequence[str] = ("finer", "drop"), top: int = 6):
    """Two bar panels for the pair's ``top`` ranked parts: energy shares and the intervention, with intervals."""
    from traitlens.report.plots import literal_figure

    parts = pair.parts[:top]
    names = [p.name.replace("_", " ") for p in parts][::-1]
    y = np.arange(len(parts))
    fig = literal_figure(figsize=(7.2, 0.42 * len(parts) + 1.1), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)

    def series(ax, key, offset, colour, label):
        mean = np.array([p.figures[key].mean for p in parts][::-1])
        lo = np.array([p.figures[key].lo for p in parts][::-1])
        hi = np.array([p.figures[key].hi for p in parts][::-1])
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)]).clip(min=0)
        ax.barh(y + offset, np.nan_to_num(mean), 0.38, xerr=err, color=colour, label=label, capsize=2)

    series(ax1, "finer", 0.2, "#c0392b", "Finer-CAM share")
    series(ax1, "gradcam", -0.2, "#95a5a6", "Grad-CAM share")
    ax1.scatter([p.figures["area"].mean for p in parts][::-1], y, marker="|", s=120, color="black", zorder=3,
                label="area share")
    ax1.set_xlabel("share of the map's energy")
    ax1.set_yticks(y, labels=names)
    ax1.legend(fontsize=7, loc="lower right")
    series(ax2, "drop", 0.2, "#2c7fb8", "part removed")
    series(ax2, "random", -0.2, "#bdbdbd", "random region, same area")
    ax2.axvline(0, color="black", lw=0.6)
    ax2.set_xlabel("drop of p(own) − p(other)")
    ax2.legend(fontsize=7, loc="lower right")
    return fig


def card_html(pair, specimens: Optional[Mapping[str, Specimen]] = None, scale: Optional[int] = None) -> str:
    """One pair's card as HTML. ``scale``: how much the specimens' pixels are enlarged (default: up to 3×, so
    that tiles are about 256 px at most; a 224 px input is shown as it is)."""
    from traitlens.report.overlay import overlay

    tiles = []
    part = pair.top.name.replace("_", " ") if pair.top else "top part"
    for side, name in (("a", pair.a_name), ("b", pair.b_name)):
        spec = (specimens or {}).get(side)
        if spec is None:
            continue
        picture, mask, heat = spec
        scale = scale or max(1, min(3, 256 // max(picture.shape[:2])))
        shown = f"{name}: top part outlined" if mask.any() else f"{name}: has no {part}"
        for img, cap in ((outlined(picture, mask, scale=scale), shown),
                         (np.kron(overlay(picture, heat), np.ones((scale, scale, 1), dtype=np.uint8)),
                          f"{name}: Finer-CAM vs the other")):
            tiles.append(f"<figure>{image_tag(img, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>")
    status = "" if pair.localised else ' <span class="note">(no localised trait found)</span>'
    counts = f"{_count(pair.images, 'a')} + {_count(pair.images, 'b')} correctly classified images"
    chart = (f"<figure>{image_tag(pair_figure(pair), 'ranked parts', width=620)}"
             f"<figcaption>Ranked parts (best at the top), means with 95% bootstrap intervals over {counts}."
             "</figcaption></figure>") if pair.parts else ""
    return (f'<div class="card" style="border-top:1px solid #dde3de;padding-top:8px;margin-top:12px">'
            f"<h3><em>{html.escape(pair.a_name)}</em> vs <em>{html.escape(pair.b_name)}</em>{status}</h3>"
            f"<p>{emphasis(pair.sentence)}</p>{chart}"
            f'<div class="gallery" style="grid-template-columns:repeat(4,1fr);max-width:900px">{"".join(tiles)}</div>'
            "</div>")


def _count(images: Mapping, side: str) -> str:
    """A card's image count as a number (an atlas.json is a file anyone may have edited: never markup)."""
    try:
        return str(int(images.get(side, 0)))
    except (TypeError, ValueError):
        return "?"


def precision_rows(table: Mapping[str, Mapping[str, float]], label: str = "") -> list:
    """Rows of a precision table (:func:`traitlens.atlas.precision_table`) for :meth:`Section.table`."""
    rows = []
    for source, r in table.items():
        row = {"evidence": SOURCE_LABELS.get(source, source)}
        if label:
            row = {"model": label, **row}
        row.update({"precision@1": r["precision_at_1"], "MRR": r["mrr"], "pairs": r["pairs"]})
        rows.append(row)
    return rows


def atlas_section(atlas, specimens: Optional[Mapping[str, Mapping[str, Specimen]]] = None,
                  precision=None, title: str = "Trait atlas", max_cards: Optional[int] = None,
                  note: str = "") -> Section:
    """The atlas as a report section: a summary table, the precision table (a table or rows made with
    :func:`precision_rows`, when given), a note, then one card per pair (the first ``max_cards``)."""
    s = Section(title, intro="For each species pair, the parts that tell the two apart, ranked by the combined "
                             "evidence: Finer-CAM's share of the contrastive evidence against the part's area, "
                             "and how much removing the part lowers p(own species) − p(other) against a random "
                             "region of the same area (Grad-CAM is shown as the control). Intervals: bootstrap "
                             "95% over the correctly classified images of both species.")
    s.table([{"pair": f"{p.a_name} vs {p.b_name}", "top part": p.top.name if p.top else "-",
              "Finer-CAM share": p.top.figures["finer"].mean if p.top else math.nan,
              "area share": p.top.figures["area"].mean if p.top else math.nan,
              "drop": p.top.figures["drop"].mean if p.top else math.nan,
              "random region": p.top.figures["random"].mean if p.top else math.nan,
              "localised": "yes" if p.localised else "no localised trait found"} for p in atlas.pairs],
            caption="The top part of every pair")
    if precision:  # a precision table, or rows already made (several models)
        rows = precision if isinstance(precision, list) else precision_rows(precision)
        s.table(rows, caption="Against the pair table's diagnostic parts: precision@1 (the "
                                                   "top-ranked part is diagnostic) and mean reciprocal rank")
    if atlas.skipped:
        s.table([{"left out": k.get("pair") or k.get("image", ""), "reason": k.get("reason", "")}
                 for k in atlas.skipped], caption="Pairs and images left out")
    if note:
        s.text(note, note=True)
    cards = atlas.pairs if max_cards is None else atlas.pairs[:max_cards]
    s.html("".join(card_html(p, (specimens or {}).get(p.key)) for p in cards))
    return s


#: The pairs an atlas page draws a card for (the first ones; every pair is in atlas.json and atlas.csv): the
#: page and the cards' pictures stay bounded when ``--pairs all`` asks for thousands of pairs.
MAX_CARDS = 200


def write_atlas_page(atlas, path, specimens=None, precision=None, subtitle: str = "",
                     max_cards: int = MAX_CARDS) -> Path:
    """``index.html`` of an atlas folder: every pair in the tables, cards for the first ``max_cards``."""
    note = (f"Cards for the first {max_cards} of {len(atlas.pairs)} pairs; every pair is in atlas.csv and "
            "atlas.json." if len(atlas.pairs) > max_cards else "")
    return write_page("traitlens atlas", [atlas_section(atlas, specimens, precision, max_cards=max_cards, note=note)],
                      Path(path), subtitle=subtitle)
