"""What every answerer gets and gives: a :class:`Query` in, the model's reply text out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Protocol, runtime_checkable

from PIL import Image

from traitlens.compbench.merge import merge_pair
from traitlens.compbench.records import PairRecord
from traitlens.compbench.tasks import TaskSpec


class AnswererError(RuntimeError):
    """A query that could not be answered (after the retries an answerer makes)."""


@dataclass
class Query:
    """One question to a model: the record, its task, the prompt text and the image files on disk
    (two for a pair, one for a pair the benchmark ships merged)."""

    record: PairRecord
    spec: TaskSpec
    prompt: str
    images: List[Path]

    def load_images(self, merged: bool = False) -> List[Image.Image]:
        """The images as RGB PIL images; ``merged=True`` joins a pair into one (see :mod:`..merge`)."""
        from traitlens.data.imageio import load_image

        ims = [load_image(p) for p in self.images]
        if merged and len(ims) == 2:
            return [merge_pair(ims[0], ims[1])]
        return ims


@runtime_checkable
class Answerer(Protocol):
    """A model under test. ``concurrency`` is how many queries may run at once (threads)."""

    name: str
    concurrency: int

    def answer(self, query: Query) -> str:  # pragma: no cover - protocol
        ...
