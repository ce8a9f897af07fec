"""Scoring replies the way the benchmark does, but without its order-dependent shortcuts.

Binary tasks: a reply is mapped to Left (``Left``, ``First``, ``Frame 1``, "the first image", ...),
Right (``Right``, ``Second``, ``Frame 2``, ...) or Same. A reply that names both sides, or none, is
*unparseable*: it counts as wrong and is reported apart. (The original scripts test ``'Right' in
reply`` before ``'Left' in reply`` in one place and the reverse in another, so a reply naming both
was scored differently per task; here it is never resolved.)

Choice tasks: reply and options are stripped, lower-cased, cleared of punctuation and articles, and
matched exactly; a reply matching no option is *invalid* (wrong, reported apart).

Accuracy is correct / all records, per task; per dimension it is pooled over the dimension's
records; the macro average is the unweighted mean of the task accuracies.
"""

from __future__ import annotations

import random
import re
import string
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from traitlens.compbench.tasks import DIMENSIONS, TaskSpec

T = TypeVar("T")

# Word patterns for each side; matched on a lower-cased reply with punctuation turned into spaces.
_LEFT = re.compile(r"\b(left|first|1st|frame 1|image 1|picture 1|photo 1|img 1|former)\b")
_RIGHT = re.compile(r"\b(right|second|2nd|frame 2|image 2|picture 2|photo 2|img 2|latter)\b")
_SAME = re.compile(r"\b(same|equal|identical)\b")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}

CORRECT, WRONG, UNPARSEABLE, INVALID = "correct", "wrong", "unparseable", "invalid"


def _clean(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def parse_binary(reply: Any) -> Optional[str]:
    """``"Left"``, ``"Right"``, ``"Same"``, or None when the reply names both sides or none.

    >>> parse_binary(" Second"), parse_binary("Right."), parse_binary("Frame 1"), parse_binary("Left or Right")
    ('Right', 'Right', 'Left', None)
    """
    if not isinstance(reply, str):
        return None
    text = _clean(reply)
    found = [side for side, pat in (("Left", _LEFT), ("Right", _RIGHT), ("Same", _SAME)) if pat.search(text)]
    return found[0] if len(found) == 1 else None


def normalize_option(text: Any) -> str:
    """Strip, lower-case, drop punctuation and the articles a/an/the: ``" The Hat."`` -> ``"hat"``."""
    if not isinstance(text, str):
        return ""
    words = _PUNCT.sub("", text.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def parse_choice(reply: Any, options: Sequence[str]) -> Optional[str]:
    """The normalised option the reply names exactly, or None (invalid)."""
    norm = normalize_option(reply)
    valid = {normalize_option(o) for o in options}
    valid.discard("")
    return norm if norm in valid else None


@dataclass
class Scored:
    """One scored reply. ``parsed`` is the side or normalised option read from the reply (None when
    unparseable/invalid); ``status`` is correct, wrong, unparseable or invalid."""

    id: str
    task: str
    dimension: str
    truth: str
    reply: Any
    parsed: Optional[str]
    status: str

    @property
    def correct(self) -> bool:
        return self.status == CORRECT


def score_reply(spec: TaskSpec, truth: str, reply: Any, options: Optional[Sequence[str]] = None,
                id: str = "", dimension: Optional[str] = None) -> Scored:
    """Score one reply against the truth of a record of task ``spec``."""
    dim = dimension or spec.dimension
    if spec.kind == "choice" or options is not None:
        parsed = parse_choice(reply, spec.choice_options(options or []))
        if parsed is None:
            status = INVALID
        else:
            status = CORRECT if parsed == normalize_option(truth) else WRONG
    else:
        parsed = parse_binary(reply)
        if parsed is None:
            status = UNPARSEABLE
        else:
            status = CORRECT if parsed == truth else WRONG
    return Scored(id=id, task=spec.name, dimension=dim, truth=truth, reply=reply, parsed=parsed, status=status)


def score_record(record, reply: Any, spec: TaskSpec) -> Scored:
    """Score ``reply`` to a :class:`~traitlens.compbench.records.PairRecord`."""
    return score_reply(spec, record.answer, reply, record.options, id=record.id, dimension=record.dimension)


@dataclass
class TaskScore:
    """Counts and accuracy of one task (or one dimension)."""

    name: str
    dimension: str
    n: int = 0
    correct: int = 0
    wrong: int = 0
    unparseable: int = 0
    invalid: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def add(self, status: str) -> None:
        self.n += 1
        setattr(self, status, getattr(self, status) + 1)

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = self.accuracy
        return d


@dataclass
class Summary:
    """Accuracy per task, per dimension and the macro average over tasks."""

    tasks: "OrderedDict[str, TaskScore]" = field(default_factory=OrderedDict)
    dimensions: "OrderedDict[str, TaskScore]" = field(default_factory=OrderedDict)

    @property
    def macro(self) -> float:
        accs = [t.accuracy for t in self.tasks.values() if t.n]
        return sum(accs) / len(accs) if accs else float("nan")

    def to_json(self) -> Dict[str, Any]:
        return {"tasks": {k: v.to_json() for k, v in self.tasks.items()},
                "dimensions": {k: v.to_json() for k, v in self.dimensions.items()},
                "macro_accuracy": self.macro,
                "n": sum(t.n for t in self.tasks.values())}

    def task_rows(self) -> List[Dict[str, Any]]:
        """One row a task: task, dimension, n, accuracy, unparseable, invalid."""
        return [{"task": t.name, "dimension": t.dimension, "n": t.n, "accuracy": t.accuracy,
                 "unparseable": t.unparseable, "invalid": t.invalid} for t in self.tasks.values()]

    def dimension_rows(self) -> List[Dict[str, Any]]:
        return [{"dimension": d.name, "n": d.n, "accuracy": d.accuracy, "unparseable": d.unparseable,
                 "invalid": d.invalid} for d in self.dimensions.values()]

    def format_table(self) -> str:
        """The task and dimension tables as plain text (for a terminal)."""
        lines = [f"{'task':<16} {'dimension':<12} {'n':>6} {'accuracy':>8} {'unparse':>7} {'invalid':>7}"]
        for t in self.tasks.values():
            lines.append(f"{t.name:<16} {t.dimension:<12} {t.n:>6} {t.accuracy:>8.3f} {t.unparseable:>7} {t.invalid:>7}")
        lines.append("")
        lines.append(f"{'dimension':<16} {'':<12} {'n':>6} {'accuracy':>8}")
        for d in self.dimensions.values():
            lines.append(f"{d.name:<16} {'':<12} {d.n:>6} {d.accuracy:>8.3f}")
        lines.append(f"{'macro (tasks)':<16} {'':<12} {'':>6} {self.macro:>8.3f}")
        return "\n".join(lines)


def summarize(scored: Iterable[Scored]) -> Summary:
    """Aggregate scored replies into a :class:`Summary` (dimensions in the benchmark's order)."""
    tasks: Dict[str, TaskScore] = {}
    dims: Dict[str, TaskScore] = {}
    for s in scored:
        tasks.setdefault(s.task, TaskScore(s.task, s.dimension)).add(s.status)
        dims.setdefault(s.dimension, TaskScore(s.dimension, s.dimension)).add(s.status)
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    summary = Summary()
    for name in sorted(tasks, key=lambda n: (order.get(tasks[n].dimension, 99), n)):
        summary.tasks[name] = tasks[name]
    for name in sorted(dims, key=lambda d: (order.get(d, 99), d)):
        summary.dimensions[name] = dims[name]
    return summary


def split_val_test(items: Sequence[T], seed: int = 30, test_fraction: float = 0.8) -> Tuple[List[T], List[T]]:
    """The benchmark's split: shuffle with ``random.Random(seed)``, first 80% test, the rest val.

    Returns ``(val, test)``; the same items in the same order always give the same split.
    """
    items = list(items)
    random.Random(seed).shuffle(items)
    cut = int(len(items) * test_fraction)
    return items[cut:], items[:cut]


def score_stored(records, answer_key: str, spec_of, split: Optional[str] = None, seed: int = 30) -> Tuple[Summary, List[Scored]]:
    """Score replies already stored in the records under ``answer_key`` (e.g. ``gpt_answer``).

    ``spec_of(record)`` gives the record's :class:`TaskSpec`; ``split`` is None (all), ``"val"`` or
    ``"test"`` (per task, :func:`split_val_test`). A record without the key counts as unparseable/invalid.
    """
    records = list(records)
    if split is not None:
        by_task: Dict[str, list] = OrderedDict()
        for r in records:
            by_task.setdefault(r.task, []).append(r)
        chosen = []
        for recs in by_task.values():
            val, test = split_val_test(recs, seed=seed)
            chosen += val if split == "val" else test
        records = chosen
    scored = [score_record(r, r.raw.get(answer_key), spec_of(r)) for r in records]
    return summarize(scored), scored
