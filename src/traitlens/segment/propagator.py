"""The :class:`Propagator` interface: what a segmentation-by-tracking backend must do.

A propagator holds a *memory* of annotated frames (the support specimens with their trait label maps,
plus recent predictions) and predicts soft label maps for new frames. The SST logic (orderings,
re-inserting the support, cycles, retrieval) lives in :mod:`traitlens.segment.tracking` and never
depends on which backend runs: label propagation (:mod:`traitlens.segment.labelprop`) or SAM 2
(:mod:`traitlens.segment.sam2`).

Frames are float tensors ``3×H×W`` in [0, 1]; label maps are ``LongTensor H×W`` with 0 = background and
``k`` = trait ``k``; soft label maps are ``(K+1)×H×W`` probabilities. Frames may differ in size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from traitlens.errors import UserError


class BackendOptionError(UserError):
    """A backend option that cannot be used: ``option`` is the :func:`~traitlens.segment.backends.build_propagator`
    argument (``features``, ``backbone``, ``checkpoint``, ``download``, …), ``value`` what was given."""

    def __init__(self, option: str, value, problem: str):
        super().__init__(f"{option} {value}: {problem}" if value is not None else f"{option}: {problem}",
                         option=option)
        self.value, self.problem = value, problem


class Propagator(ABC):
    """A video-object-segmentation backend seen as "memory in, label map out"."""

    #: number of labels including background (K + 1); set by :meth:`reset`.
    num_labels: int = 0

    @abstractmethod
    def reset(self, num_labels: int) -> None:
        """Forget every frame in memory; the next frames carry ``num_labels`` labels (background included)."""

    @abstractmethod
    def add_support(self, image: torch.Tensor, labels: torch.Tensor) -> None:
        """Add an annotated frame that stays in memory until :meth:`reset` (``labels``: H×W ids or (K+1)×H×W)."""

    @abstractmethod
    def add_memory(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        """Add a predicted frame to the short-term memory (the backend keeps only the most recent ones)."""

    @abstractmethod
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Soft label map ``(K+1)×H×W`` (probabilities) for ``image`` at its own resolution."""

    def differentiable(self) -> bool:
        """Whether :meth:`predict` keeps the autograd graph (needed for cycle-consistent fine-tuning)."""
        return False


def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``H×W`` ids → ``num_labels×H×W`` float one-hot (ids ≥ num_labels are an error)."""
    if labels.dim() == 3:
        return labels.float()
    if int(labels.max()) >= num_labels:
        raise ValueError(f"label id {int(labels.max())} is outside 0..{num_labels - 1}")
    return torch.nn.functional.one_hot(labels.long(), num_labels).permute(2, 0, 1).float()
