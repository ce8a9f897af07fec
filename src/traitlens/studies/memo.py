"""One memo cache for every study: a result is reused only for the same recipe made by the same code.

A study's key is a hash of its recipe (a frozen dataclass or plain JSON) *and* of the source of the
packages that compute results (:data:`COMPUTING`), so a changed recipe or a changed method, engine or
study never reuses a stale entry and nobody bumps a version by hand. Drawing code (``report``, ``cli``,
``runs``) is left out: redrawing a report does not retrain anything.

    >>> from traitlens.studies.memo import memo_json
    >>> result = memo_json(folder, "compare", recipe, lambda: expensive(recipe))   # doctest: +SKIP

Entries are written atomically (a temporary file renamed into place), so an interrupted study leaves
either the whole entry or none. Force a fresh run by pointing ``$TRAITLENS_CACHE`` at an empty folder
or removing the entry's folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

from traitlens.cache import recipe_key

# The packages whose code decides a study's numbers (relative to the traitlens package folder).
COMPUTING = ("data", "backbones", "models", "engine", "explain", "segment", "calibrate", "compbench", "studies",
             "cache.py", "methods.py", "configs")
# What training a model from a recipe depends on: the key of every trained run (the embedded pretraining, the
# demo's classifiers, the claims' models, the synthetic collections they train on). No explanation,
# segmentation, calibration or benchmark code runs there, so changing those re-scores a model without training
# it again; the recipe's values are in the key itself, so the file that lists the recipes is not.
TRAINING = ("data", "backbones", "models", "engine", "cache.py", "methods.py", "configs", "studies/embedded.py")


@functools.lru_cache(maxsize=None)
def source_digest(entries: Tuple[str, ...] = COMPUTING) -> str:
    """A hash of the source files of ``entries`` (paths and bytes), computed once a process."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in entries:
        path = root / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                     and p.suffix in (".py", ".yaml", ".json"))
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(f.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def plain(recipe: Any) -> Any:
    """A recipe as JSON-able data: dataclasses become dicts (recursively), tuples lists, paths strings."""
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        return {f.name: plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    if isinstance(recipe, dict):
        return {str(k): plain(v) for k, v in recipe.items()}
    if isinstance(recipe, (list, tuple)):
        return [plain(v) for v in recipe]
    if isinstance(recipe, Path):
        return str(recipe)
    return recipe


def memo_key(recipe: Any, code: Tuple[str, ...] = COMPUTING) -> str:
    """The cache key of ``recipe``: its content and the :func:`source_digest` of the ``code`` that makes it."""
    return recipe_key({"recipe": plain(recipe), "source": source_digest(tuple(code))})


def memo_path(folder: Path, name: str, recipe: Any, suffix: str = "", code: Tuple[str, ...] = COMPUTING) -> Path:
    """``folder/<name>-<memo key><suffix>``: where the result of ``recipe`` lives (a run folder or a file)."""
    return Path(folder) / f"{name}-{memo_key(recipe, code)}{suffix}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def computing(path: Path) -> Iterator[None]:
    """Hold the lock of the entry ``path`` while it is computed: a second process asking for the same entry
    waits, then reads it, instead of training the same model into the same folder (no-op without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(Path(path).with_name(f".{Path(path).name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> Tuple[bool, Any]:
    if path.is_file():
        try:
            return True, json.loads(path.read_text(encoding="utf-8"))["result"]
        except (ValueError, KeyError):
            pass  # a file that is not ours, or from before this format: compute again
    return False, None


def memo_json(folder: Path, name: str, recipe: Any, compute: Callable[[], Any]) -> Any:
    """The JSON result of ``recipe``: read from ``folder`` when made before by the same code, else computed,
    stored (atomically, with the recipe beside it) and returned. Processes asking for one entry at once compute
    it once (:func:`computing`)."""
    path = memo_path(folder, name, recipe, ".json")
    found, result = _read(path)
    if found:
        return result
    with computing(path):
        found, result = _read(path)  # another process may have made it while this one waited
        if found:
            return result
        result = compute()
        write_atomic(path, json.dumps({"recipe": plain(recipe), "source": source_digest(), "result": result},
                                      indent=1) + "\n")
    return json.loads(json.dumps(result))  # the same types a later read gives (tuples → lists)
