"""Where traitlens keeps what it makes once and reuses: collections, pretrained tiny backbones, demo runs.

``$TRAITLENS_CACHE`` overrides the default ``~/.cache/traitlens``. Entries are keyed by a hash of the
recipe that made them, so a changed recipe never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-folder of it), created on demand."""
    root = Path(os.environ.get("TRAITLENS_CACHE") or Path.home() / ".cache" / "traitlens").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_key(recipe: Any, length: int = 12) -> str:
    """A short stable hash of a JSON-serialisable recipe."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
