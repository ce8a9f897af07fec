"""The app's Atlas tab: the pair cards of a `traitlens atlas` folder, one at a time (read back, never recomputed)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple, Union

from traitlens.errors import UserError


class AtlasView:
    """The cards of the atlas in ``folder`` (``atlas.json``, and ``cards.npz`` for the specimens when present)."""

    def __init__(self, folder: Union[str, Path]):
        from traitlens.atlas.result import load_atlas
        from traitlens.runs.atlas_job import CARDS, load_cards

        self.folder = Path(folder)
        self.atlas = load_atlas(self.folder)  # one clear line when the folder holds no atlas
        root = self.folder if self.folder.is_dir() else self.folder.parent
        self.specimens = load_cards(root / CARDS)

    def choices(self, query: str = "") -> List[Tuple[str, str]]:
        """(label, pair key) of every pair whose species names contain ``query``, localised traits first."""
        q = query.strip().lower()
        pairs = [p for p in self.atlas.pairs if not q or q in f"{p.a_name} {p.b_name} {p.a} {p.b}".lower()]
        pairs.sort(key=lambda p: (not p.localised, p.a_name, p.b_name))
        return [(f"{p.a_name} vs {p.b_name}" + ("" if p.localised else " (no localised trait)"), p.key) for p in pairs]

    def card(self, key: str) -> str:
        """The pair's card (sentence, ranked parts with intervals, the specimens) as HTML."""
        from traitlens.report.atlas import card_html

        found = [p for p in self.atlas.pairs if p.key == key]
        if not found:
            raise UserError(f"the atlas in {self.folder} has no pair {key!r}")
        return card_html(found[0], self.specimens.get(key))

    def summary(self) -> str:
        n, localised = len(self.atlas.pairs), sum(p.localised for p in self.atlas.pairs)
        skipped = f"; {len(self.atlas.skipped)} skipped (see {self.folder}/atlas.json)" if self.atlas.skipped else ""
        return f"{n} pairs, {localised} with a localised trait{skipped}. Atlas: `{self.folder}`."
