"""Static Segmentation by Tracking: a collection of specimens seen as a pseudo-video.

Orderings of the pseudo-video:

- ``pairwise``: [support, query] for each query — constant memory, any collection size, batched.
- ``chain``: support, then the queries in the given order; the backend's memory holds the support plus
  the most recent predictions.
- ``similarity`` (traitlens' own, not the paper's): the chain, with the queries ordered so that each
  frame follows its nearest neighbour in feature space (greedy path from the support).

``reinsert_every=N`` puts the support back into the short-term memory every N frames to limit drift.
Overlapping traits are resolved by the highest score (argmax over the soft label map).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from traitlens.errors import UserError
from traitlens.segment.propagator import Propagator, one_hot

Frame = torch.Tensor  # 3×H×W float in [0, 1]
Support = Tuple[Frame, torch.Tensor]  # (frame, H×W label ids)

ORDERS = ("pairwise", "chain", "similarity")


def prime(propagator: Propagator, supports: Sequence[Support], num_labels: Optional[int] = None) -> int:
    """Reset the backend's memory and add the support frames; returns the number of labels (K+1)."""
    if not supports:
        raise ValueError("at least one support image with its label map is needed")
    for i, (_, lbl) in enumerate(supports):
        if float(lbl.max() if lbl.dim() == 2 else lbl[1:].sum()) <= 0:
            raise UserError(f"support #{i + 1}: its label map has no trait pixels (every id is 0); "
                            "label at least one trait")
    k = num_labels or 1 + max(int(lbl.max()) for _, lbl in supports)
    propagator.reset(k)
    for image, labels in supports:
        propagator.add_support(image, labels)
    return k


def track(propagator: Propagator, supports: Sequence[Support], queries: Iterable[Tuple[str, Frame]],
          order: str = "pairwise", batch_size: int = 16, reinsert_every: Optional[int] = None,
          num_labels: Optional[int] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(query id, soft label map (K+1)×H×W)`` for every query, streaming.

    ``pairwise`` never holds more than ``batch_size`` frames; ``chain`` holds the backend's memory;
    ``similarity`` needs the queries as a sequence (it orders them first, from their features).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    k = prime(propagator, supports, num_labels)
    if order == "pairwise":
        yield from _pairwise(propagator, queries, batch_size)
        return
    if order == "similarity":
        queries = list(queries)
        path = similarity_order(_descriptor(propagator), supports, [q for _, q in queries])
        queries = [queries[i] for i in path]
    for step, (qid, frame) in enumerate(queries, start=1):
        probs = propagator.predict(frame)
        yield qid, probs
        propagator.add_memory(frame, probs.detach())
        if reinsert_every and step % reinsert_every == 0:
            for image, labels in supports:
                propagator.add_memory(image, one_hot(labels, k))


def _pairwise(propagator: Propagator, queries, batch_size: int):
    batch: List[Tuple[str, Frame]] = []
    predict_batch = getattr(propagator, "predict_batch", None)
    for item in queries:
        batch.append(item)
        if len(batch) == batch_size:
            yield from _flush(propagator, predict_batch, batch)
            batch = []
    if batch:
        yield from _flush(propagator, predict_batch, batch)


def _flush(propagator, predict_batch, batch):
    if predict_batch is not None:
        probs = predict_batch([f for _, f in batch])
    else:
        probs = [propagator.predict(f) for _, f in batch]
    for (qid, _), p in zip(batch, probs):
        yield qid, p


def _descriptor(propagator: Propagator) -> Callable[[Frame], torch.Tensor]:
    """A global descriptor per frame for the similarity ordering (mean-pooled backend features)."""
    encode = getattr(propagator, "encode", None)
    if encode is None:
        def encode(frames):  # fall back to colour statistics at a fixed size
            x = torch.nn.functional.interpolate(frames, size=(16, 16), mode="area")
            return x
    def describe(frame: Frame) -> torch.Tensor:
        with torch.no_grad():
            f = encode(frame[None])
        return torch.nn.functional.normalize(f.flatten(2).mean(-1)[0], dim=0)
    return describe


def similarity_order(describe: Callable[[Frame], torch.Tensor], supports: Sequence[Support],
                     frames: Sequence[Frame]) -> List[int]:
    """Greedy nearest-neighbour path through the frames, starting from the support(s)."""
    if not frames:
        return []
    feats = torch.stack([describe(f) for f in frames])  # N×D
    current = torch.stack([describe(img) for img, _ in supports]).mean(0)
    remaining = torch.ones(len(frames), dtype=torch.bool)
    path: List[int] = []
    for _ in range(len(frames)):
        sims = feats @ current
        sims[~remaining] = float("-inf")
        nxt = int(sims.argmax())
        path.append(nxt)
        remaining[nxt] = False
        current = feats[nxt]
    return path


def cycle_predict(propagator: Propagator, support: Support, query: Frame,
                  num_labels: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Support → query, reset, query's soft prediction → support. Returns (query probs, support probs).

    A real reverse pass: the memory is emptied between the two directions, so the support's own labels
    cannot leak into its reconstruction.
    """
    k = prime(propagator, [support], num_labels)
    forward = propagator.predict(query)
    propagator.reset(k)
    propagator.add_support(query, forward)
    backward = propagator.predict(support[0])
    return forward, backward
