"""The bulk runner: stream a collection through a job, one durable record per image, resumable and shardable.

A job (:class:`Job`) says how to turn decoded images into records and artifacts; the runner does the rest
for every job alike: each process of a torchrun job takes its :func:`~traitlens.engine.distributed.shard`
of the items and locks it (:class:`~traitlens.runs.store.ShardLock`), items already in ``results.jsonl``
are skipped, images are decoded by a DataLoader (never more than its prefetch in memory; the pixel count is
checked from the header before decoding), a file that cannot be read is listed in ``skipped.jsonl`` and the
run goes on, and each finished record is written only after its artifacts
(:mod:`traitlens.runs.store`). Rank 0 then calls the job's :meth:`Job.finish` over all records
(gallery, merged tables).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from traitlens.data.imageio import SkippedFiles, load_image
from traitlens.errors import BadImageError, UserError
from traitlens.runs.inputs import Item
from traitlens.runs.store import (RESULTS, ResultsFile, ShardLock, check_options, clear_run, done_ids, remove_stale_temporaries,
                                  run_records, write_durably)

#: Largest image a bulk run decodes (pixels, from the file's header): 64 M pixels is 192 MB as RGB,
#: larger than any specimen photograph, far below what would exhaust a worker's memory.
MAX_PIXELS = 64 * 1024 * 1024

#: ``(item, record, artifacts)``: the record's fields (its ``id`` is added) and ``{path below out: bytes}``.
Output = Tuple[Item, dict, Dict[str, bytes]]


class Job:
    """What a bulk command computes. Subclasses set ``name`` and implement the three steps."""

    name = "run"
    #: Files and folders below the output folder this job writes besides the records (removed by ``--restart``).
    outputs: Tuple[str, ...] = ("index.html",)

    def settings(self) -> dict:
        """What the records depend on (JSON values): a rerun into the same folder must ask for the same."""
        return {}

    def prepare(self, image, item: Item) -> Any:
        """A decoded RGB ``PIL.Image`` → this job's sample (runs in DataLoader workers; keep it picklable)."""
        raise NotImplementedError

    def process(self, samples: Iterator[Tuple[Item, Any]]) -> Iterator[Output]:
        """Consume ``(item, sample)`` pairs (batching them as the job likes), yield one output per item."""
        raise NotImplementedError

    def finish(self, out: Path, records: List[dict]) -> dict:
        """Rank 0, after every shard is done: whole-run outputs (gallery, tables); returns summary fields."""
        return {}


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], job: Job, max_pixels: int):
        self.items, self.job, self.max_pixels = list(items), job, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            return item, self.job.prepare(load_image(item.path, max_pixels=self.max_pixels), item), None
        except BadImageError as exc:
            return item, None, exc.reason
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # what else a strange file can raise
            return item, None, f"cannot be read ({type(exc).__name__}: {exc})"


def batched(samples: Iterator[Tuple[Item, Any]], size: int) -> Iterator[List[Tuple[Item, Any]]]:
    """Group a job's stream of ``(item, sample)`` pairs into lists of ``size`` (the last may be shorter)."""
    batch: List[Tuple[Item, Any]] = []
    for pair in samples:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_is(sample):
    return sample


def run(job: Job, items: Sequence[Item], out: Path, workers: int = 0, max_pixels: int = MAX_PIXELS,
        skipped: Optional[SkippedFiles] = None, options: Optional[dict] = None, restart: bool = False) -> dict:
    """Run ``job`` over ``items`` into ``out``; ``skipped`` holds what input discovery left out.

    The folder's ``run.json`` records the job's :meth:`Job.settings` and ``options`` (what the caller knows the
    records depend on, e.g. the checkpoint's digest): a rerun with the same resumes, one with others is refused
    unless ``restart``, which replaces the folder's records and the job's :attr:`Job.outputs`.

    Returns ``{"done": n, "resumed": n, "skipped": n, "seconds": s, "out": str}`` for this process; on rank 0
    ``skipped`` counts every process's, and the fields of :meth:`Job.finish` join in.
    """
    from traitlens.engine import distributed
    from traitlens.progress import bar, log

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.rank(), distributed.world_size()
    lock = ShardLock(out, rank, world)
    shard_skipped = SkippedFiles()
    start = time.time()
    try:
        wanted = {"job": job.name, **job.settings(), **(options or {})}
        if restart:
            if rank == 0:
                clear_run(out, job.outputs)
            distributed.barrier()  # no rank reads the folder before rank 0 has cleared it
        check_options(out, wanted)  # every rank: a refusal is the same line on each
        if world == 1:  # the lock says no other process writes here: any temporary is a killed writer's
            remove_stale_temporaries(out)
        done = done_ids(out)
        # Shard the full list first, then leave out what is done: every rank gets the same share whenever it
        # reads results.jsonl, so ranks that start at different moments never miss or repeat an item.
        mine = [it for it in distributed.shard(list(items), rank, world) if it.id not in done]
        resumed = sum(it.id in done for it in items)
        results = ResultsFile(out / RESULTS)
        progress = bar(len(mine), desc=job.name, unit="img")
        loader = torch.utils.data.DataLoader(_Decoded(mine, job, max_pixels), batch_size=None,
                                             num_workers=workers, collate_fn=_as_is)

        def samples() -> Iterator[Tuple[Item, Any]]:
            for item, sample, error in loader:
                if error is not None:
                    shard_skipped.add(item.path, error)
                    progress.update(1)
                    continue
                yield item, sample

        n = 0
        try:
            for item, record, artifacts in job.process(samples()):
                for rel, data in artifacts.items():
                    write_durably(out / rel, data)
                results.append({"id": item.id, **record})
                n += 1
                progress.update(1)
        finally:
            results.close()
            progress.close()
        shard_skipped.write(_shard_skipped(out, rank, world))
    finally:
        lock.release()
    counts = {"done": n, "resumed": resumed, "skipped": len(shard_skipped), "seconds": time.time() - start,
              "out": str(out)}
    distributed.barrier()
    if not distributed.is_main():
        return counts
    everything = _merge_skipped(out, world, skipped)
    if everything:
        everything.write(out / "skipped.jsonl")
        log(everything.summary(out / "skipped.jsonl"))
    elif (out / "skipped.jsonl").exists():
        (out / "skipped.jsonl").unlink()  # listed by an earlier run, read now
    records = run_records(out)
    counts["skipped"] = len(everything)
    counts.update(job.finish(out, records))
    return counts


def _shard_skipped(out: Path, rank: int, world: int) -> Path:
    return out / ".shards" / f"skipped-{rank}-of-{world}.jsonl"


def _merge_skipped(out: Path, world: int, found: Optional[SkippedFiles]) -> SkippedFiles:
    merged = SkippedFiles()
    merged.extend(found or [])
    for r in range(world):
        path = _shard_skipped(out, r, world)
        if path.exists():
            merged.extend(SkippedFiles.read(path))
    return merged
