"""A run's output folder on disk: durable artifacts, whole-line records, shard locks.

The rule that keeps every record through a hard kill: a record line is appended to ``results.jsonl`` only
after all of its artifacts are on disk (written to a temporary name, fsynced, then renamed into place), so an
id listed there always has its files, and an id not listed is redone on resume. A line is one ``os.write``
of text ending in ``\\n`` to an ``O_APPEND`` descriptor, under an exclusive ``flock`` of the results file;
before appending, a torn tail (a line a killed writer left without its ``\\n``) is cut off, so it never glues
onto the next record.

Each process holds a lock on its shard (``.lock/shard-<rank>-of-<world>``): the ranks of one torchrun job
take different shards and share the folder; a second process for a shard that is taken, or a run with
another number of processes while one is writing, is refused with :class:`~traitlens.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from traitlens.errors import UserError

RESULTS = "results.jsonl"
LOCKS = ".lock"
OPTIONS = "run.json"  # the options a run folder's records answer (see check_options)


TMP_MARK = ".tmp-"


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after a crash the file is either absent or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_records(path: Path) -> Iterator[dict]:
    """The records of a results file; a line that is not a JSON object (a torn tail) is left out."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file behind ``fd`` after its last ``\\n`` (the caller holds its lock)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, step = size, 1 << 16
    while end > 0:
        start = max(0, end - step)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


class ResultsFile:
    """Appends records to ``results.jsonl`` as whole lines; several processes may append at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        with self._locked():
            _cut_torn_tail(self._fd)

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self._locked():
            _cut_torn_tail(self._fd)  # another process may have been killed mid-line
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk: never leave a partial line behind
                _cut_torn_tail(self._fd)
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class ShardLock:
    """This process's claim on shard ``rank`` of ``world`` in ``out`` (released by :meth:`release`)."""

    def __init__(self, out: Path, rank: int, world: int):
        folder = Path(out) / LOCKS
        folder.mkdir(parents=True, exist_ok=True)
        self._fd: Optional[int] = None
        guard = os.open(folder / "guard", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one process at a time looks at the other shards
            for other in sorted(folder.glob("shard-*-of-*")):
                their_world = other.name.rsplit("-", 1)[1]
                if their_world != str(world) and _held(other):
                    raise UserError(f"{out}: another run with {their_world} process(es) is writing to this "
                                    "folder; wait for it or choose another output folder")
            fd = os.open(folder / f"shard-{rank}-of-{world}", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"{out}: another process is already writing shard {rank + 1} of {world} "
                                "here; wait for it or choose another output folder") from None
            self._fd = fd
        finally:
            os.close(guard)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporary files killed writers left in ``out`` (call only while no other process writes
    there); returns how many."""
    n = 0
    for folder, _, names in os.walk(out):
        for name in names:
            if name.startswith(".") and TMP_MARK in name:
                os.unlink(os.path.join(folder, name))
                n += 1
    return n


def _held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def done_ids(out: Path) -> set:
    """Ids that already have a record in ``out/results.jsonl``."""
    return {r["id"] for r in read_records(Path(out) / RESULTS) if "id" in r}


def run_records(out: Path) -> List[dict]:
    """The records of ``out`` sorted by id, one per id (the first written)."""
    rows: Dict[str, dict] = {}
    for r in read_records(Path(out) / RESULTS):
        if "id" in r:
            rows.setdefault(r["id"], r)
    return [rows[k] for k in sorted(rows)]


def png_bytes(array, mode: Optional[str] = None, compress_level: int = 3) -> bytes:
    """An H×W×3 uint8 image (or H×W label map, ``mode`` ``L`` / ``I;16``) encoded as PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def npy_bytes(array) -> bytes:
    """An array in ``.npy`` format (``numpy.load`` reads it back)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array))
    return buf.getvalue()


# ------------------------------------------------------------------------------------ the run's options
def file_digest(path, length: int = 16) -> Optional[str]:
    """The first ``length`` hex digits of a file's SHA-256 (None when ``path`` is None or not a file): what an
    input file contributes to a run's options, so that a changed checkpoint or support image is noticed."""
    import hashlib

    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def clear_run(out: Path, outputs=()) -> None:
    """Remove a run folder's records and outputs (``outputs``: the job's files and folders below ``out``), so a
    ``--restart`` starts afresh. A folder without records is left as it is: nothing in it is a run's."""
    import shutil

    out = Path(out)
    if not ((out / RESULTS).exists() or (out / OPTIONS).exists()):
        return
    for name in (RESULTS, OPTIONS, "skipped.jsonl", ".shards", *outputs):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_options(out: Path, options: dict, restart: bool = False, outputs=()) -> None:
    """Record ``options`` (what the records depend on, JSON values) in ``out/run.json``, or refuse a folder made
    with other ones in one line naming ``--restart``: its records would be kept as if they answered this run.

    ``restart``: clear the folder's records and ``outputs`` first (:func:`clear_run`). Call it with the shard
    lock held, on one process (rank 0); the others call it after a barrier, when the file is there.
    Every bulk job uses it through :func:`traitlens.runs.runner.run`; a job outside the runner calls it
    itself before writing anything.
    """
    out = Path(out)
    wanted = json.loads(json.dumps(options))  # as read back: tuples become lists
    path = out / OPTIONS
    if restart:
        clear_run(out, outputs)
    if path.exists():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            earlier = {}
        changed = [k for k in sorted(set(earlier) | set(wanted)) if earlier.get(k) != wanted.get(k)]
        if changed:
            k = changed[0]
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            raise UserError(f"{out} holds results made with other options ({k}: {earlier.get(k)!r} there, "
                            f"{wanted.get(k)!r} now{more}); rerun with --restart to replace them, or choose "
                            "another --out")
        return
    if (out / RESULTS).exists() and any(True for _ in read_records(out / RESULTS)):
        raise UserError(f"{out} holds results whose options were not recorded; rerun with --restart to replace "
                        "them, or choose another --out")
    write_durably(path, (json.dumps(wanted, indent=2) + "\n").encode("utf-8"))
