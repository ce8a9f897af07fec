"""Reading CompBench records: every published schema into one :class:`PairRecord`.

The benchmark's annotation files come in several shapes:

* ``{image_1, image_2, question, answer}``: answer ``Left``/``Right`` (``Same`` for counting);
  CompCars has no ``question`` (it is the same for every pair);
* ``{image_1, image_2, question, options, answer}``: the newer multiple-choice schema;
* SoccerNet: ``{left, right, action, answer}``;
* MagicBrush: ``{path_input, path_output, Modified_option, Answeer}`` (sic), options as one
  comma-separated string;
* Q-Bench2: one pre-merged ``image`` with ``option`` (a list).

Files are a JSON list, JSON lines, or a JSON object of lists (SoccerNet groups by match). Empty ``{}``
records are skipped and counted; Windows separators in paths are accepted; images are resolved
against a root folder, and the ones that are missing are listed up front instead of failing mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from traitlens.compbench.tasks import SPLIT_SOURCES, TASKS, TaskSpec, check_task_name, custom_task, get_task, lookup
from traitlens.errors import UserError

BINARY_TRUTHS = {"left": "Left", "right": "Right", "same": "Same", "first": "Left", "second": "Right"}


@dataclass
class PairRecord:
    """One question about a pair of images, whatever schema it came from.

    ``answer`` is ``Left``/``Right``/``Same`` for binary tasks, the correct option for choice tasks.
    ``image_1``/``image_2`` (or ``image`` for a pre-merged pair) are the paths as stored, with ``/``
    separators; :func:`resolve_image` finds them on disk. ``raw`` is the record as read (stored
    replies such as ``gpt_answer`` live there).
    """

    id: str
    task: str
    dimension: str
    question: str
    answer: str
    image_1: Optional[str] = None
    image_2: Optional[str] = None
    image: Optional[str] = None
    options: Optional[List[str]] = None
    action: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return "choice" if self.options is not None else "binary"

    @property
    def images(self) -> List[str]:
        """The stored image paths: two for a pair, one for a pre-merged pair."""
        return [self.image] if self.image else [p for p in (self.image_1, self.image_2) if p]

    def to_json(self) -> Dict[str, Any]:
        """The record in the benchmark's newer schema plus traitlens' ``id``/``task``/``dimension``."""
        d = {k: v for k, v in asdict(self).items() if k != "raw" and v is not None}
        return d


@dataclass
class LoadReport:
    """What loading skipped: empty ``{}`` records, records whose answer could not be read, lines of a
    file that are not JSON (``bad_lines``: ``"file:line: why"``) and records that are not valid
    (``invalid``: a task name that is not a plain name, a record that is not an object, one whose image
    paths or options do not fit its schema)."""

    files: List[str] = field(default_factory=list)
    records: int = 0
    empty: int = 0
    bad_answer: int = 0
    bad_lines: List[str] = field(default_factory=list)
    invalid: List[str] = field(default_factory=list)

    def add(self, other: "LoadReport") -> None:
        self.files += other.files
        self.records += other.records
        self.empty += other.empty
        self.bad_answer += other.bad_answer
        self.bad_lines += other.bad_lines
        self.invalid += other.invalid

    def summary(self) -> str:
        text = (f"{self.records} records from {len(self.files)} file(s); skipped {self.empty} empty "
                f"record(s) and {self.bad_answer} with an unreadable answer")
        if self.bad_lines:
            shown = "; ".join(self.bad_lines[:3]) + ("; ..." if len(self.bad_lines) > 3 else "")
            text += f"; {len(self.bad_lines)} unreadable line(s) skipped ({shown})"
        if self.invalid:
            shown = "; ".join(self.invalid[:3]) + ("; ..." if len(self.invalid) > 3 else "")
            text += f"; {len(self.invalid)} invalid record(s) skipped ({shown})"
        return text


def normalize_path(path: str) -> str:
    """A stored path with Windows separators turned into ``/``."""
    return str(path).replace("\\", "/")


def read_json_records(path: Path, report: Optional[LoadReport] = None) -> List[Any]:
    """The raw records of a ``.json`` (a list, or an object of lists) or ``.jsonl`` file.

    In a ``.jsonl`` file a line that is not JSON (or not UTF-8) is skipped and noted in
    ``report.bad_lines`` as ``file:line: why``; a ``.json`` file is one document, so an error in it
    names the file and line and stops.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark file {path} does not exist; pass an existing .json or .jsonl file")
    data_bytes = path.read_bytes()
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(data_bytes.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line.decode("utf-8")))
            except UnicodeDecodeError:
                why = "not UTF-8 text"
            except json.JSONDecodeError as exc:
                why = f"not JSON ({exc.msg})"
            else:
                continue
            if report is not None:
                report.bad_lines.append(f"{path}:{n}: {why}")
        return out
    try:
        text = data_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data_bytes[: exc.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (line {line}); give a .json or .jsonl file of records") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or remove the file") from exc
    if isinstance(data, dict):
        if all(isinstance(v, list) for v in data.values()):  # grouped, e.g. SoccerNet results by match
            return [r for v in data.values() for r in v]
        return [data]
    if not isinstance(data, list):
        raise UserError(f"{path} holds a JSON {type(data).__name__}; expected a list of records")
    return data


def _answer_of(raw: Dict[str, Any]) -> Any:
    for key in ("answer", "Answer", "Answeer"):
        if key in raw:
            return raw[key]
    return None


class MalformedRecord(ValueError):
    """A record whose fields do not fit its schema (a path without its pair, options that are a number):
    the loader names it in :attr:`LoadReport.invalid` and goes on."""


def _options_of(raw: Dict[str, Any]) -> Optional[List[str]]:
    for key in ("options", "option", "Modified_option", "GPT_option"):
        if key in raw and raw[key] is not None:
            value = raw[key]
            if isinstance(value, str):
                return [o.strip() for o in value.split(",") if o.strip()]
            if not isinstance(value, list):
                raise MalformedRecord(f"{key!r} is a JSON {type(value).__name__}, not a list or a "
                                      f"comma-separated string")
            return [str(o).strip() for o in value]
    return None


def _image_paths(raw: Dict[str, Any]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """``(image, image_1, image_2)`` of whichever schema ``raw`` follows, separators normalised."""
    if "image" in raw and "image_1" not in raw:
        keys: Tuple[str, ...] = ("image",)
    elif "path_input" in raw:
        keys = ("path_input", "path_output")
    elif "left" in raw and "image_1" not in raw:
        keys = ("left", "right")
    elif "image_1" in raw or "image_2" in raw:
        keys = ("image_1", "image_2")
    else:
        raise MalformedRecord("no image path (image_1/image_2, left/right, path_input/path_output or image)")
    paths = []
    for key in keys:
        if key not in raw:
            raise MalformedRecord(f"{' and '.join(repr(k) for k in keys if k in raw)} without {key!r}")
        if not isinstance(raw[key], str):
            raise MalformedRecord(f"{key!r} is a JSON {type(raw[key]).__name__}, not an image path")
        paths.append(normalize_path(raw[key]))
    return (paths[0], None, None) if len(paths) == 1 else (None, paths[0], paths[1])


def record_id(task: str, raw: Dict[str, Any]) -> str:
    """A stable id from the record's content (so resuming does not depend on file order)."""
    if raw.get("id") is not None:
        return str(raw["id"])
    keys = ("image_1", "image_2", "left", "right", "path_input", "path_output", "image", "question", "action")
    content = [task] + [normalize_path(raw[k]) if k in raw and isinstance(raw[k], str) else str(raw.get(k))
                        for k in keys] + [str(_answer_of(raw))]
    return hashlib.sha1("\x1f".join(content).encode()).hexdigest()[:16]


def task_for(name: str, raw: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The registry task a file/folder/record name stands for (``st``/``vaw`` split by record ``type``)."""
    key = name.strip().lower().replace("-", "_")
    for cand in (key, key.split("_")[0]):
        if cand in SPLIT_SOURCES:
            attribute_task, state_task = SPLIT_SOURCES[cand]
            if raw is not None and str(raw.get("type", "")).lower() == "state":
                return state_task
            return attribute_task
        found = lookup(cand)
        if found:
            return found
    return None


def parse_record(raw: Dict[str, Any], spec: TaskSpec) -> Optional[PairRecord]:
    """Turn one raw record into a :class:`PairRecord` (None when its answer is unreadable); a record
    whose images or options do not fit its schema raises :class:`MalformedRecord`."""
    truth = _answer_of(raw)
    options = _options_of(raw) if spec.kind == "choice" else None
    if spec.kind == "binary":
        canon = BINARY_TRUTHS.get(str(truth).strip().lower()) if truth is not None else None
        if canon is None:
            return None
        truth = canon
    else:
        if truth is None or options is None:
            return None
        truth = str(truth)
    image, image_1, image_2 = _image_paths(raw)
    question = raw.get("question") or spec.fixed_question or ""
    if not question and spec.kind == "choice" and not spec.merged:
        question = "What is the most obvious difference between the two images? Choose from the following options."
    return PairRecord(id=record_id(spec.name, raw), task=spec.name, dimension=spec.dimension,
                      question=str(question), answer=truth, image_1=image_1, image_2=image_2, image=image,
                      options=options, action=raw.get("action"), raw=raw)


def spec_for(task: str, raw: Optional[Dict[str, Any]] = None) -> TaskSpec:
    """The spec of a registered task, or a custom one when the record names its own dimension."""
    found = task_for(task, raw)
    if found is not None:
        return TASKS[found]
    if raw is not None and raw.get("dimension"):
        return custom_task(task, dimension=str(raw["dimension"]), same_allowed=bool(raw.get("same_allowed")),
                           wording=str(raw.get("wording", "left_right")),
                           kind="choice" if raw.get("options") is not None else "binary")
    return get_task(task)  # raises a UserError naming the known tasks


def load_records(path: Path, task: Optional[str] = None) -> Tuple[List[PairRecord], LoadReport]:
    """Load one benchmark file. ``task`` defaults to the record's ``task`` field, else the file's name,
    else its folder's name (``results/cub/0_1000_gpt.json`` is a ``cub`` file). A given ``task`` must
    be a registry name or alias, or the name the records give themselves (a built benchmark)."""
    path = Path(path)
    report = LoadReport(files=[str(path)])
    seen: Dict[str, int] = {}
    out: List[PairRecord] = []
    raws = read_json_records(path, report)
    if task is not None:
        check_task_name(task)
        own = {str(r.get("task")) for r in raws if isinstance(r, dict) and r.get("dimension")}
        if lookup(task) is None and task not in own:
            get_task(task)  # raises, naming the known tasks
    for k, raw in enumerate(raws):
        if isinstance(raw, dict) and not raw:
            report.empty += 1
            continue
        if not isinstance(raw, dict):
            report.invalid.append(f"{path} record {k + 1}: a JSON {type(raw).__name__}, not an object")
            continue
        name = task or raw.get("task") or _task_from_path(path)
        if name is None:
            raise UserError(f"cannot tell which CompBench task {path} holds; name the file after the task "
                            f"(e.g. cub.json) or pass the task explicitly")
        try:
            spec = spec_for(str(name), raw)
        except UserError as exc:
            if task is not None or raw.get("task") is None:
                raise
            report.invalid.append(f"{path} record {k + 1}: {exc}")  # one record naming a bad task
            continue
        try:
            rec = parse_record(raw, spec)
        except MalformedRecord as exc:
            report.invalid.append(f"{path} record {k + 1}: {exc}")
            continue
        if rec is None:
            report.bad_answer += 1
            continue
        # the same pair asked twice (it happens in the published files) keeps two distinct ids
        n = seen.get(rec.id, 0)
        seen[rec.id] = n + 1
        if n:
            rec.id = f"{rec.id}-{n}"
        out.append(rec)
    report.records = len(out)
    return out, report


def _task_from_path(path: Path) -> Optional[str]:
    for name in (path.stem, path.parent.name):
        if task_for(name):
            return name
    return None


def find_benchmark_files(data: Path) -> List[Path]:
    """The ``.json``/``.jsonl`` benchmark files in ``data`` (a file, or a folder searched two levels)."""
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise UserError(f"benchmark folder {data} does not exist; it should hold the benchmark's .json/.jsonl files",
                        option="data")
    files = sorted(p for pattern in ("*.json", "*.jsonl", "*/*.json", "*/*.jsonl") for p in data.glob(pattern)
                   if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.name not in ("summary.json", "missing_images.json", "benchmark_info.json",
                                                "invalid_records.json") and not is_split_file(p)]
    if not files:
        raise UserError(f"no .json or .jsonl benchmark files in {data}; pass the folder holding them")
    return files


def is_split_file(path: Path) -> bool:
    """``X_val.json`` / ``X_test.json`` beside an ``X.json``: a published split definition (see
    :mod:`traitlens.compbench.splits`), not more records."""
    path = Path(path)
    for split in ("val", "test"):
        if path.stem.endswith(f"_{split}"):
            base = path.stem[: -len(split) - 1]
            if any(path.with_name(base + ext).is_file() for ext in (".json", ".jsonl")):
                return True
    return False


def load_benchmark(data: Path, tasks: Optional[Sequence[str]] = None) -> Tuple[List[PairRecord], LoadReport]:
    """Load every benchmark file under ``data``, keeping only ``tasks`` (registry names) when given."""
    records: List[PairRecord] = []
    report = LoadReport()
    for f in find_benchmark_files(Path(data)):
        recs, rep = load_records(f)
        report.add(rep)
        records += recs
    if tasks is not None:
        wanted = set(tasks)
        records = [r for r in records if r.task in wanted]
    report.records = len(records)
    return records, report


_DRIVE = re.compile(r"^[A-Za-z]:/")


def path_problem(stored: str) -> Optional[str]:
    """Why a stored image path may not be used (absolute, ``..``, a NUL), or None when it is a plain
    relative path. Benchmark files are not trusted: their paths must stay inside the data folder."""
    if not isinstance(stored, str) or not stored.strip():
        return "an empty image path"
    norm = normalize_path(stored)
    if "\x00" in norm:
        return "an image path holding a NUL character"
    if norm.startswith("/") or _DRIVE.match(norm):
        return f"an absolute image path ({norm[:120]}); paths must be relative to the data folder"
    if ".." in norm.split("/"):
        return f"an image path with '..' ({norm[:120]}); paths must stay inside the data folder"
    return None


def inside_folder(path: Path, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def locate_image(root: Path, stored: str) -> Tuple[Optional[Path], Optional[str]]:
    """``(file, None)`` for a stored image path found under ``root``; ``(None, why)`` otherwise, where
    ``why`` is ``"missing"`` or the reason the path is refused (outside ``root``, also through a link).

    Stored paths are relative to the benchmark's dataset folder (``cub_200_2011/att_cls_images/...``);
    when ``root`` already is that folder, the leading components are dropped one at a time.
    """
    problem = path_problem(stored)
    if problem:
        return None, problem
    parts = Path(normalize_path(stored)).parts
    root_real = os.path.realpath(root)
    for i in range(len(parts)):
        cand = Path(root).joinpath(*parts[i:])
        try:
            found = cand.is_file()
        except (OSError, ValueError):  # a name too long for the file system
            found = False
        if found:
            if not inside_folder(cand, root_real):
                return None, (f"image {normalize_path(stored)[:120]} is a link to a file outside the data "
                              f"folder {root}")
            return cand, None
    return None, "missing"


def resolve_image(root: Path, stored: str) -> Optional[Path]:
    """The file a stored image path names under ``root``, or None when it is not there or refused
    (see :func:`locate_image`)."""
    return locate_image(root, stored)[0]


def find_missing_images(records: Iterable[PairRecord], root: Path) -> Dict[str, List[str]]:
    """``{record id: [stored paths not found under root]}`` for every record with a missing image
    (paths refused as outside the folder are in :func:`find_invalid_records`, not here)."""
    missing: Dict[str, List[str]] = {}
    for r in records:
        gone = [p for p in r.images if locate_image(root, p)[1] == "missing"]
        if gone:
            missing[r.id] = gone
    return missing


def find_invalid_records(records: Iterable[PairRecord], root: Path) -> Dict[str, str]:
    """``{record id: why}`` for records naming an image path that is refused (absolute, ``..``, a link
    out of ``root``): these are never read, shown or sent anywhere."""
    invalid: Dict[str, str] = {}
    for r in records:
        for p in r.images:
            why = locate_image(root, p)[1]
            if why is not None and why != "missing":
                invalid[r.id] = why
                break
    return invalid


def check_image(path: Path) -> str:
    """Decode ``path`` whole and return its format (PIL's name: ``PNG``, ``JPEG``, ...); a 0-byte,
    truncated, too large or non-image file raises :class:`~traitlens.errors.BadImageError`."""
    from PIL import Image

    from traitlens.data.imageio import load_image
    from traitlens.errors import BadImageError

    load_image(path)
    try:
        with Image.open(path) as im:
            return str(im.format or "")
    except (OSError, ValueError) as exc:  # it decoded a moment ago: the file changed under us
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None
