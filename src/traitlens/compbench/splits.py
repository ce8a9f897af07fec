"""Which records a val/test figure is computed on: the published split files, or the seeded split.

CompBench publishes its split per task beside the label file (``Labeled_data/cub_label/
CUB_0_1000_rebalanced_fixed_path{_val,_test}.json``). A results file holds the same questions in
another order (and, for some models, an older version of the label file), so splitting it in its
own order (:func:`~traitlens.compbench.scoring.split_val_test`, the benchmark scripts' seeded 80/20)
gives other records than the published split. :func:`select_published` takes the published one:
a record is in the split when its image pair and question (paths compared with ``/`` separators,
whitespace collapsed) are those of a record of the split file; each split record matches at most
one record, so a pair asked twice counts twice only when the split file holds it twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from traitlens.compbench.records import PairRecord, is_split_file, load_records, normalize_path, task_for
from traitlens.compbench.scoring import split_val_test
from traitlens.errors import UserError

SPLITS = ("val", "test")
__all__ = ["SPLITS", "SplitSelection", "find_split_file", "is_split_file", "pair_key", "select_published",
           "select_seeded"]


def pair_key(record: PairRecord) -> Tuple[Tuple[str, ...], str]:
    """What identifies a question across files: its image paths (``/`` separators) and its question."""
    return tuple(normalize_path(p) for p in record.images), " ".join(str(record.question).split())


@dataclass
class SplitSelection:
    """Which split definition chose the records, and how many matched.

    ``definition``: ``"published"`` (a split file) or ``"seeded"`` (80/20 of the file's own order);
    ``split_records``: records in the split file; ``matched``: split records found among the records;
    ``selected``: records chosen.
    """

    split: str
    definition: str
    file: Optional[str] = None
    seed: Optional[int] = None
    split_records: int = 0
    matched: int = 0
    selected: int = 0

    def describe(self) -> str:
        if self.definition == "published":
            return (f"split {self.split}: the published split file {self.file}; {self.matched} of its "
                    f"{self.split_records} records matched by image pair and question "
                    f"({self.split_records - self.matched} have no record here)")
        return (f"split {self.split}: seeded 80/20 of this file's own order (seed {self.seed}), {self.selected} "
                f"records; this is not the published split: give the split file (or the label file's folder) "
                f"to score on it")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def find_split_file(label: Path, split: str, task: Optional[str] = None) -> Optional[Path]:
    """The published ``split`` file beside a label file (``X.json`` -> ``X_test.json``), or in a folder
    the one whose name is ``*_<split>.json`` of ``task``; None when there is none."""
    if split not in SPLITS:
        raise UserError(f"split {split!r}: use one of {', '.join(SPLITS)}", option="split")
    label = Path(label)
    if label.is_file():
        stem = label.stem
        for suffix in (label.suffix, ".json", ".jsonl"):
            cand = label.with_name(f"{stem}_{split}{suffix}")
            if cand.is_file():
                return cand
        return None
    if not label.is_dir():
        raise UserError(f"label file or folder {label} does not exist", option="data")
    found = sorted(p for ext in ("json", "jsonl") for p in label.glob(f"**/*_{split}.{ext}") if p.is_file())
    if task is not None:
        found = [p for p in found if task_for(p.stem[: -len(split) - 1]) == task or task_for(p.stem) == task]
    if len(found) > 1:
        raise UserError(f"{label} holds several {split} split files ({', '.join(p.name for p in found[:4])}); "
                        f"give the one to use", option="split_file")
    return found[0] if found else None


def select_published(records: Sequence[PairRecord], split_file: Path, split: str = "test",
                     task: Optional[str] = None) -> Tuple[List[PairRecord], SplitSelection]:
    """The records that are in the published split file, in the split file's order (see the module
    docstring for the matching rule)."""
    split_file = Path(split_file)
    task = task or (records[0].task if records else None)
    wanted, _ = load_records(split_file, task=task)
    if not wanted:
        raise UserError(f"split file {split_file} holds no records of task {task}", option="split_file")
    pool: Dict[Tuple, List[PairRecord]] = defaultdict(list)
    for r in records:
        pool[pair_key(r)].append(r)
    chosen: List[PairRecord] = []
    for w in wanted:
        same = pool.get(pair_key(w))
        if same:
            chosen.append(same.pop(0))
    if not chosen:
        raise UserError(f"none of the {len(wanted)} records of split file {split_file} is among the records "
                        f"scored (matched by image pair and question); is it the split of this task?",
                        option="split_file")
    return chosen, SplitSelection(split=split, definition="published", file=str(split_file),
                                  split_records=len(wanted), matched=len(chosen), selected=len(chosen))


def select_seeded(records: Sequence[PairRecord], split: str = "test", seed: int = 30
                  ) -> Tuple[List[PairRecord], SplitSelection]:
    """The benchmark scripts' split: per task, shuffle with ``seed``, first 80% test, the rest val."""
    if split not in SPLITS:
        raise UserError(f"split {split!r}: use one of {', '.join(SPLITS)}", option="split")
    by_task: Dict[str, List[PairRecord]] = {}
    for r in records:
        by_task.setdefault(r.task, []).append(r)
    chosen: List[PairRecord] = []
    for recs in by_task.values():
        val, test = split_val_test(recs, seed=seed)
        chosen += val if split == "val" else test
    return chosen, SplitSelection(split=split, definition="seeded", seed=seed, selected=len(chosen))
