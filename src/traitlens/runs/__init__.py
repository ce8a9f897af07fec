"""One bulk runner for every command that works through a collection (explain, segment, traits).

>>> from traitlens.runs import discover, run
>>> items = discover([Path("photos/")])          # unique, stable ids; links, loops and FIFOs handled
>>> counts = run(job, items, Path("out/"))       # resumable, shardable, every record durable

Jobs: :class:`~traitlens.runs.explain_job.ExplainJob`, :class:`~traitlens.runs.segment_job.SegmentJob`,
:class:`~traitlens.runs.traits_job.TraitsJob`; the output folder's rules are in :mod:`traitlens.runs.store`.
"""

from traitlens.runs.inputs import Item, artifact_stem, discover, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, run
from traitlens.runs.store import done_ids, run_records

__all__ = ["Item", "discover", "artifact_stem", "flat_name", "Job", "run", "MAX_PIXELS", "done_ids", "run_records"]
