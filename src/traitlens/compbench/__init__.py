"""CompBench: comparative-reasoning evaluation of multimodal models, and building such benchmarks.

>>> from traitlens.compbench import load_benchmark, make_answerer, run
>>> records, report = load_benchmark("compbench_data/")
>>> result = run(records, make_answerer("scripted:oracle"), "runs/oracle", image_root="compbench_data/")
>>> print(result.summary.format_table())
"""

from traitlens.compbench.records import LoadReport, PairRecord, load_benchmark, load_records
from traitlens.compbench.scoring import Summary, parse_binary, parse_choice, score_reply, score_stored, split_val_test
from traitlens.compbench.splits import SplitSelection, find_split_file, select_published, select_seeded
from traitlens.compbench.tasks import DIMENSIONS, TASKS, TaskSpec, get_task, select_tasks

__all__ = [
    "DIMENSIONS", "TASKS", "TaskSpec", "get_task", "select_tasks",
    "PairRecord", "LoadReport", "load_records", "load_benchmark",
    "Summary", "parse_binary", "parse_choice", "score_reply", "score_stored", "split_val_test",
    "SplitSelection", "find_split_file", "select_published", "select_seeded",
    "make_answerer", "run", "build_benchmark", "export_lmms_eval",
]


def __getattr__(name):
    # the runner, builder and answerers pull in matplotlib / torch / HTTP code: import them when asked
    if name == "run":
        from traitlens.compbench.runner import run
        return run
    if name == "make_answerer":
        from traitlens.compbench.answerers import make_answerer
        return make_answerer
    if name == "build_benchmark":
        from traitlens.compbench.build import build_benchmark
        return build_benchmark
    if name == "export_lmms_eval":
        from traitlens.compbench.lmms_eval import export_lmms_eval
        return export_lmms_eval
    raise AttributeError(f"module 'traitlens.compbench' has no attribute {name!r}")
