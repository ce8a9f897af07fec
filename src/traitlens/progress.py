"""Progress bars: one place decides whether and where they are drawn.

Bars go to stderr, only on rank 0 of a distributed run, and never when ``TRAITLENS_QUIET=1``.
Library code that loops over a collection wraps its iterable in :func:`progress`; models never print.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _enabled() -> bool:
    if os.environ.get("TRAITLENS_QUIET", "0") not in ("", "0"):
        return False
    return int(os.environ.get("RANK", "0")) == 0


def progress(iterable: Iterable[T], desc: str = "", total: Optional[int] = None, unit: str = "it",
             leave: bool = True, **kwargs) -> Iterable[T]:
    """Wrap ``iterable`` in a progress bar (or return it unchanged when bars are off)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not _enabled(),
                file=sys.stderr, dynamic_ncols=True, **kwargs)


def bar(total: Optional[int], desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A manually updated progress bar (``.update(n)``, ``.set_postfix(...)``, ``.close()``)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not _enabled(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)


def log(message: str) -> None:
    """One line of progress text on stderr (rank 0 only, silent when quiet)."""
    if _enabled():
        tqdm.write(message, file=sys.stderr)
