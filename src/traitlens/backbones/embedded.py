"""Find the embedded tiny backbones in the cache (they are made by :mod:`traitlens.studies.embedded`).

The backbones layer creates, describes and loads models; it never trains. The embedded pretraining is a
study: when it publishes a backbone it also writes a small pointer ``<cache>/backbones/<name>.json``
(``name`` is ``embedded-vit``, ``embedded-cnn-broad``, ...) naming the run folder, and this module only
reads that pointer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from traitlens.cache import cache_dir as cache_root
from traitlens.errors import UserError

KINDS = ("vit", "cnn")
BREADTHS = ("standard", "broad", "tiny")  # tiny: seconds, for tests of the machinery
RECORD = "embedded.json"


def check(kind: str, breadth: str = "standard") -> None:
    """UserError unless ``kind`` and ``breadth`` name an embedded backbone."""
    if kind not in KINDS:
        raise UserError(f"embedded backbone kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if breadth not in BREADTHS:
        raise UserError(f"embedded backbone breadth must be one of {', '.join(BREADTHS)}, not {breadth!r}")


def backbone_name(kind: str, breadth: str = "standard") -> str:
    """The name of an embedded backbone: its run folder is ``<name>-<recipe key>``."""
    check(kind, breadth)
    return f"embedded-{kind}" if breadth == "standard" else f"embedded-{kind}-{breadth}"


def backbones_dir(cache_dir: Optional[Path] = None) -> Path:
    """``cache_dir`` if given (created), else ``$TRAITLENS_CACHE/backbones`` (``~/.cache/traitlens/backbones``)."""
    if cache_dir is not None:
        path = Path(cache_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_root("backbones")


def is_complete(run: Path) -> bool:
    """A published embedded backbone has its weights, its checkpoint sidecar and its record."""
    run = Path(run)
    return (run / "model.safetensors").is_file() and (run / "model.json").is_file() and (run / RECORD).is_file()


def find_embedded(kind: str = "vit", breadth: str = "standard", cache_dir: Optional[Path] = None) -> Path:
    """The run folder of the last published embedded ``kind`` backbone of ``breadth``; UserError when there is
    none (pretrain it with :func:`traitlens.studies.embedded.embedded_backbone`)."""
    root = backbones_dir(cache_dir)
    name = backbone_name(kind, breadth)
    pointer = root / f"{name}.json"
    run = None
    if pointer.is_file():
        try:
            run = root / json.loads(pointer.read_text())["run"]
        except (ValueError, KeyError, TypeError):
            run = None
    if run is None or not is_complete(run):
        raise UserError(f"no embedded tiny {kind.upper()} backbone ({breadth}) in {root}: pretrain it first "
                        f"(traitlens.studies.embedded.embedded_backbone({kind!r}, breadth={breadth!r}))")
    return run
