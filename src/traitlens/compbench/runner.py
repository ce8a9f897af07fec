"""Running a benchmark: ask an answerer every record, keep every answer the moment it comes.

``out_dir/results.jsonl`` gets one line per answered record, appended, flushed and synced as the
answers arrive, so Ctrl-C or a crash loses nothing already answered; with ``resume=True`` records
whose id is already there are skipped. ``requests.jsonl`` notes each request when it is sent (and
when it fails), so a resumed run can say how many were in flight when the last one stopped (sent,
perhaps answered and billed, but no answer kept). Records whose image paths leave the image folder
or whose images do not decode are never sent: ``invalid_records.json`` lists them with the reason,
``missing_images.json`` the ones whose images are not there. At the end the runner writes
``summary.json`` (task, dimension and macro accuracy) and ``summary.txt``;
:func:`traitlens.report.compbench.write_pages` draws ``accuracy.png`` and ``failures.html`` (failure
cases with both images, the question, the truth and the reply).
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from traitlens.compbench.answerers.base import Answerer, AnswererError, Query
from traitlens.compbench.records import (PairRecord, check_image, find_invalid_records, find_missing_images,
                                         resolve_image, spec_for)
from traitlens.compbench.scoring import Scored, Summary, score_record, summarize
from traitlens.compbench.tasks import TaskSpec, with_wording
from traitlens.errors import BadImageError, UserError
from traitlens.progress import bar, log

RESULTS = "results.jsonl"
REQUESTS = "requests.jsonl"
INVALID = "invalid_records.json"


@dataclass
class RunResult:
    """What a run produced: the files, the summary, and what was skipped or failed."""

    out_dir: Path
    summary: Summary
    answered_now: int
    already_answered: int
    missing_images: Dict[str, List[str]] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    invalid: Dict[str, str] = field(default_factory=dict)
    in_flight_before: int = 0

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS


def read_results(path: Path) -> List[Dict[str, Any]]:
    """The answered lines of a ``results.jsonl`` (a line cut short by a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            out.append(row)
    return out


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (a crash mid-write) so the next append starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(cut)


def _query(record: PairRecord, spec: TaskSpec, root: Path) -> Query:
    prompt = spec.prompt(record.question, options=record.options, action=record.action)
    images = [resolve_image(root, p) for p in record.images]
    return Query(record=record, spec=spec, prompt=prompt, images=images)  # type: ignore[arg-type]


def _row(query: Query, scored: Scored) -> Dict[str, Any]:
    r = query.record
    row = {"id": r.id, "task": r.task, "dimension": r.dimension, "question": r.question, "prompt": query.prompt,
           "truth": r.answer, "reply": scored.reply, "parsed": scored.parsed, "status": scored.status,
           "correct": scored.correct, "images": r.images}
    if r.options is not None:
        row["options"] = r.options
    return row


class RequestLog:
    """``requests.jsonl``: a line ``{"id", "sent"}`` when a request to the model starts and
    ``{"id", "failed"}`` when it ends without an answer (answers are in ``results.jsonl``).

    A record whose last line is ``sent`` and that has no answer was in flight when a run stopped:
    the model may have answered it (and a paid API billed it) without the answer being kept.
    """

    def __init__(self, path: Path, fresh: bool):
        self.path = Path(path)
        if fresh:
            self.path.write_text("")
        else:
            _repair_tail(self.path)
        self.lock = threading.Lock()
        self.fh = open(self.path, "a", encoding="utf-8")
        self.open: set = set()  # ids sent in this run with no outcome yet

    def _write(self, row: Dict[str, Any]) -> None:
        with self.lock:
            self.fh.write(json.dumps(row) + "\n")
            self.fh.flush()  # flushed at once, so Ctrl-C or a crash leaves what was sent on disk

    def sent(self, rid: str) -> None:
        with self.lock:
            self.open.add(rid)
        self._write({"id": rid, "sent": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def done(self, rid: str) -> None:
        with self.lock:
            self.open.discard(rid)

    def failed(self, rid: str, error: str) -> None:
        self.done(rid)
        self._write({"id": rid, "failed": error})

    def close(self) -> None:
        with self.lock:
            self.fh.close()

    @staticmethod
    def in_flight(path: Path, answered: set) -> List[str]:
        """Ids whose last line is ``sent`` and that have no answer: in flight when a run stopped."""
        last: Dict[str, str] = {}
        for row in read_results(path):
            last[row["id"]] = "sent" if "sent" in row else "failed"
        return [rid for rid, what in last.items() if what == "sent" and rid not in answered]


def run(records: Sequence[PairRecord], answerer: Answerer, out_dir: Path, resume: bool = True,
        image_root: Optional[Path] = None, wording: Optional[str] = None) -> RunResult:
    """Ask ``answerer`` every record (``concurrency`` at a time) and write results as they come.

    ``image_root`` is the folder stored image paths are resolved against; records with a missing
    image are listed in ``missing_images.json`` and skipped; records whose image paths leave that
    folder, or whose images do not decode, are listed in ``invalid_records.json`` and never sent.
    ``wording`` (``left_right``, ``first_second``, ``frame``) overrides how binary prompts name the
    two images. Every request started is noted in ``requests.jsonl`` (:class:`RequestLog`), so a
    resumed run says how many requests were in flight when the last one stopped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(image_root) if image_root is not None else Path(".")
    results_path = out_dir / RESULTS
    redact = getattr(answerer, "redact", None) or (lambda text: text)
    redact_reply = getattr(answerer, "redact_reply", None) or redact  # replies: the key out, the words kept
    specs: Dict[str, TaskSpec] = {}
    for r in records:
        if r.task not in specs:
            spec = spec_for(r.task, r.raw)
            specs[r.task] = with_wording(spec, wording) if wording and spec.kind == "binary" else spec

    invalid = find_invalid_records(records, root)
    if invalid:
        log(f"compbench: {len(invalid)} of {len(records)} records name image paths outside {root} "
            f"(listed in {out_dir / INVALID}); they are skipped and nothing of them is read or sent")
    missing = find_missing_images([r for r in records if r.id not in invalid], root)
    (out_dir / "missing_images.json").write_text(json.dumps(missing, indent=1) + "\n")
    if missing:
        log(f"compbench: {len(missing)} of {len(records)} records have missing images under {root} "
            f"(listed in {out_dir / 'missing_images.json'}); they are skipped")
        if len(missing) == len(records):
            example = next(iter(missing.values()))[0]
            raise UserError(f"none of the {len(records)} records' images were found under {root} (e.g. {example}); "
                            f"give the images folder the stored image paths are relative to", option="images")

    if resume:
        _repair_tail(results_path)
        done = {row["id"] for row in read_results(results_path)}
        wanted_ids = {r.id for r in records}
        in_flight_before = [i for i in RequestLog.in_flight(out_dir / REQUESTS, done) if i in wanted_ids]
    else:
        results_path.write_text("")
        done = set()
        in_flight_before = []
    todo = [r for r in records if r.id not in done and r.id not in missing and r.id not in invalid]
    already = sum(1 for r in records if r.id in done)
    if already:
        log(f"compbench: resuming, {already} records already answered, {len(todo)} to go")
    if in_flight_before:
        log(f"compbench: {len(in_flight_before)} requests were in flight when the last run stopped (sent, no "
            f"answer kept); they are sent again now, so a paid API may bill them twice")

    failed: Dict[str, str] = {}
    answered = 0
    workers = max(1, int(getattr(answerer, "concurrency", 1)))
    progress = bar(len(todo), desc=f"compbench {getattr(answerer, 'name', 'model')}", unit="pair")
    pending: Dict[Future, Query] = {}
    it = iter(todo)
    requests = RequestLog(out_dir / REQUESTS, fresh=not resume)

    def ask(q: Query) -> str:
        # images are checked before anything is sent: a file that does not decode is never uploaded
        for p in q.images:
            try:
                check_image(p)
            except BadImageError as exc:
                raise _SkippedImage(f"{p}: {exc.reason}") from None
        requests.sent(q.record.id)
        return answerer.answer(q)

    executor = ThreadPoolExecutor(max_workers=workers)
    interrupted = False
    try:
        with open(results_path, "a", encoding="utf-8") as fh:
            def submit_next() -> bool:
                rec = next(it, None)
                if rec is None:
                    return False
                q = _query(rec, specs[rec.task], root)
                pending[executor.submit(ask, q)] = q
                return True

            # keep at most 2x workers queued, so an interrupt leaves little work in flight
            for _ in range(2 * workers):
                if not submit_next():
                    break
            while pending:
                finished, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in [f for f in pending if f in finished]:  # in submission order
                    q = pending.pop(fut)
                    rid = q.record.id
                    try:
                        reply = fut.result()
                    except _SkippedImage as exc:
                        invalid[rid] = f"bad image {redact(str(exc))}"
                        progress.update(1)
                        submit_next()
                        continue
                    except (AnswererError, BadImageError) as exc:
                        failed[rid] = redact(str(exc))
                        requests.failed(rid, failed[rid])
                        progress.update(1)
                        submit_next()
                        continue
                    scored = score_record(q.record, redact_reply(reply) if isinstance(reply, str) else reply, q.spec)
                    fh.write(json.dumps(_row(q, scored), ensure_ascii=False) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    requests.done(rid)
                    answered += 1
                    progress.update(1)
                    submit_next()
    except BaseException:
        interrupted = True
        raise
    finally:
        # on Ctrl-C, drop what has not started; answers already written stay written
        executor.shutdown(wait=False, cancel_futures=True)
        progress.close()
        if interrupted and requests.open:
            log(f"compbench: stopped with {len(requests.open)} requests in flight (noted in {out_dir / REQUESTS}); "
                f"a resumed run sends them again")
        requests.close()

    (out_dir / INVALID).write_text(json.dumps(invalid, indent=1, ensure_ascii=False) + "\n")
    bad_images = sum(1 for v in invalid.values() if v.startswith("bad image"))
    if bad_images:
        log(f"compbench: {bad_images} records have an image that does not decode (listed in {out_dir / INVALID}); "
            f"they were skipped, nothing was sent")
    if failed:
        with open(out_dir / "errors.jsonl", "w", encoding="utf-8") as fh:
            for rid, msg in failed.items():
                fh.write(json.dumps({"id": rid, "error": msg}) + "\n")
        log(f"compbench: {len(failed)} records got no answer (see {out_dir / 'errors.jsonl'}); "
            f"rerun with --resume to retry them")

    wanted = {r.id: r for r in records}
    rows = [row for row in read_results(results_path) if row["id"] in wanted]
    summary = summarize_rows(rows)
    write_summary(summary, out_dir, model=getattr(answerer, "name", "model"))
    return RunResult(out_dir=out_dir, summary=summary, answered_now=answered, already_answered=already,
                     missing_images=missing, failed=failed, invalid=invalid, in_flight_before=len(in_flight_before))


class _SkippedImage(Exception):
    """An image of a record that does not decode (the record is skipped, not failed)."""


def summarize_rows(rows: Iterable[Dict[str, Any]]) -> Summary:
    """A :class:`Summary` from ``results.jsonl`` rows (as written by :func:`run`)."""
    return summarize(Scored(id=r["id"], task=r["task"], dimension=r["dimension"], truth=r["truth"],
                            reply=r.get("reply"), parsed=r.get("parsed"), status=r["status"]) for r in rows)


def write_summary(summary: Summary, out_dir: Path, model: str = "model") -> None:
    """``summary.json`` and ``summary.txt`` (the bar plot and the failure page: :mod:`traitlens.report.compbench`)."""
    out_dir = Path(out_dir)
    payload = summary.to_json()
    payload["model"] = model
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "summary.txt").write_text(summary.format_table() + "\n")


