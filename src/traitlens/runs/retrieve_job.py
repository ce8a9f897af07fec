"""The retrieve job: rank a collection by whether each image carries a support's trait (``traitlens retrieve``).

Each image's record holds its cycle score (:func:`traitlens.segment.retrieval.cycle_score`); at the end the
records are ranked, best first, into ``ranking.csv``, ``ranking.jsonl`` and ``index.html``. Resume,
sharding, locks and skipped files are the runner's.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from traitlens.data.imageio import SkippedFiles
from traitlens.runs.inputs import Item
from traitlens.runs.runner import MAX_PIXELS, Job, Output, run
from traitlens.runs.store import write_durably
from traitlens.segment.propagator import Propagator
from traitlens.segment.retrieval import cycle_score
from traitlens.segment.support import to_frame
from traitlens.segment.tracking import Support


class RetrieveJob(Job):
    """Score every image by the IoU of ``trait`` after support → image → support."""

    name = "retrieve"
    outputs = ("ranking.csv", "ranking.jsonl", "index.html")

    def __init__(self, propagator: Propagator, support: Support, trait: int, top: int = 30,
                 trait_name: Optional[str] = None):
        self.propagator, self.support, self.trait, self.top = propagator, support, trait, top
        self.trait_name = trait_name
        self.k = 1 + int(support[1].max())

    def settings(self) -> dict:
        return {"trait": self.trait, "labels": self.k}

    def prepare(self, image, item: Item) -> np.ndarray:
        return np.asarray(image)  # H×W×3 uint8

    def process(self, samples: Iterator[Tuple[Item, np.ndarray]]) -> Iterator[Output]:
        for item, image in samples:
            score = cycle_score(self.propagator, self.support, to_frame(image), self.trait, self.k)
            yield item, {"path": item.id, "file": str(item.path), "score": score}, {}

    def finish(self, out: Path, records: List[dict]) -> dict:
        from traitlens.report import Section, write_page

        ranked = sorted(records, key=lambda r: -r["score"])  # stable: ties keep the id order
        table = io.StringIO(newline="")
        w = csv.writer(table)
        w.writerow(["rank", "path", "score"])
        lines = []
        for i, r in enumerate(ranked, 1):
            w.writerow([i, r["path"], f"{r['score']:.6f}"])
            lines.append(json.dumps({"rank": i, "path": r["path"], "score": r["score"]}) + "\n")
        write_durably(out / "ranking.csv", table.getvalue().encode("utf-8"))
        write_durably(out / "ranking.jsonl", "".join(lines).encode("utf-8"))
        named = f"{self.trait_name} ({self.trait})" if self.trait_name else str(self.trait)
        section = Section(f"Images ranked by trait {named}",
                          intro="Score: IoU of the support's trait after support → image → support.")
        section.gallery([(r["file"], f"{i}. {r['path']} · {r['score']:.2f}")
                         for i, r in enumerate(ranked[:self.top], 1)])
        write_page("traitlens retrieve", [section], out / "index.html")
        return {"ranking": [{"path": r["path"], "score": r["score"]} for r in ranked]}


def retrieve_collection(propagator: Propagator, support: Support, trait: int, items: Sequence[Item], out: Path,
                        top: int = 30, workers: int = 0, max_pixels: int = MAX_PIXELS,
                        skipped: Optional[SkippedFiles] = None, trait_name: Optional[str] = None,
                        run_options: Optional[dict] = None, restart: bool = False) -> dict:
    """Rank ``items`` by ``trait`` into ``out``; returns the runner's counts and ``ranking`` (best first).
    ``run_options``/``restart``: as :func:`traitlens.runs.runner.run`'s ``options``/``restart``."""
    return run(RetrieveJob(propagator, support, trait, top, trait_name=trait_name), items, out, workers=workers,
               max_pixels=max_pixels, skipped=skipped, options=run_options, restart=restart)
