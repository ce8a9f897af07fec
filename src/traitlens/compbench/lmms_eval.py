"""Export a benchmark as lmms-eval tasks, so users of that harness can run it there.

Written to OUT::

    compbench.yaml              the group (every exported task)
    compbench_<task>.yaml       one task each: local JSON lines, greedy decoding, 128 new tokens
    compbench_<task>.jsonl      the records: prompt, answer, options, wording, absolute image paths
    utils.py                    doc_to_visual / doc_to_text / process_results

``utils.py`` scores with :mod:`traitlens.compbench.scoring`, so a reply is judged exactly as
``traitlens compbench run`` judges it; the environment running lmms-eval needs traitlens installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from traitlens.compbench.records import PairRecord, check_image, locate_image, spec_for
from traitlens.compbench.tasks import check_task_name
from traitlens.errors import BadImageError, UserError

_UTILS = '''"""lmms-eval hooks for CompBench tasks exported by traitlens (scoring: traitlens.compbench.scoring)."""

from PIL import Image

from traitlens.compbench.scoring import score_reply
from traitlens.compbench.tasks import TASKS, custom_task


def _spec(doc):
    if doc["task"] in TASKS:
        return TASKS[doc["task"]]
    return custom_task(doc["task"], dimension=doc["dimension"], same_allowed=bool(doc.get("same_allowed")),
                       wording=doc.get("wording", "left_right"), kind=doc["kind"])


def compbench_doc_to_visual(doc):
    return [Image.open(p).convert("RGB") for p in doc["images"]]


def compbench_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['prompt']}{kw.get('post_prompt', '')}"


def compbench_process_results(doc, results):
    options = doc.get("options") if doc["kind"] == "choice" else None
    scored = score_reply(_spec(doc), doc["answer"], results[0], options)
    not_read = scored.status in ("unparseable", "invalid")
    return {"accuracy": float(scored.correct), "not_understood": float(not_read)}
'''


class _Function(str):
    """A ``!function module.name`` value of an lmms-eval YAML file."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", str(v)))


def _task_config(name: str, data_file: Path) -> Dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_visual": _Function("utils.compbench_doc_to_visual"),
        "doc_to_text": _Function("utils.compbench_doc_to_text"),
        "doc_to_target": "answer",
        "generation_kwargs": {"max_new_tokens": 128, "temperature": 0, "do_sample": False},
        "process_results": _Function("utils.compbench_process_results"),
        "metric_list": [
            {"metric": "accuracy", "aggregation": "mean", "higher_is_better": True},
            {"metric": "not_understood", "aggregation": "mean", "higher_is_better": False},
        ],
        "lmms_eval_specific_kwargs": {"default": {"pre_prompt": "", "post_prompt": ""}},
        "metadata": {"version": 1.0, "source": "traitlens compbench export-lmms-eval"},
    }


def dump_yaml(config: Dict[str, Any]) -> str:
    """``config`` as YAML written by a serializer (never by string formatting: a name holding a newline
    or a colon stays one scalar), with ``!function`` tags for the hooks."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


def export_lmms_eval(records: Sequence[PairRecord], out: Path, image_root: Path) -> List[Path]:
    """Write the lmms-eval task files for ``records`` (grouped by task); returns the paths written.

    Records whose images are missing, refused (a path outside ``image_root``) or do not decode are
    left out and counted.
    """
    if not records:
        raise UserError("no records to export: the benchmark folder holds none of the chosen tasks", option="tasks")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    by_task: Dict[str, List[PairRecord]] = {}
    for r in records:
        by_task.setdefault(check_task_name(r.task), []).append(r)
    written: List[Path] = []
    names = []
    skipped = {"missing": 0, "refused": 0, "bad image": 0}
    checked: Dict[Path, bool] = {}
    for task, recs in by_task.items():
        spec = spec_for(task, recs[0].raw)
        name = f"compbench_{task}"
        data_file = out / f"{name}.jsonl"
        with open(data_file, "w", encoding="utf-8") as fh:
            for r in recs:
                found = [locate_image(Path(image_root), p) for p in r.images]
                whys = [why for _, why in found if why is not None]
                if whys:
                    skipped["missing" if all(w == "missing" for w in whys) else "refused"] += 1
                    continue
                images = [p for p, _ in found]
                if not all(_decodes(p, checked) for p in images):
                    skipped["bad image"] += 1
                    continue
                fh.write(json.dumps({
                    "id": r.id, "task": r.task, "dimension": r.dimension, "kind": r.kind,
                    "same_allowed": spec.same_allowed, "wording": spec.wording, "question": r.question,
                    "prompt": spec.prompt(r.question, options=r.options, action=r.action),
                    "answer": r.answer, "options": r.options or [],
                    "images": [str(Path(p).resolve()) for p in images],
                }) + "\n")
        yaml_path = out / f"{name}.yaml"
        yaml_path.write_text(dump_yaml(_task_config(name, data_file)), encoding="utf-8")
        written += [yaml_path, data_file]
        names.append(name)
    group = out / "compbench.yaml"
    group.write_text(dump_yaml({"group": "compbench", "task": names}), encoding="utf-8")
    utils = out / "utils.py"
    utils.write_text(_UTILS)
    if any(skipped.values()):
        from traitlens.progress import log

        log(f"compbench export: left out {sum(skipped.values())} records under {image_root}: "
            f"{skipped['missing']} with a missing image, {skipped['refused']} with an image path outside the "
            f"folder, {skipped['bad image']} with an image that does not decode")
    return [group, utils] + written


def _decodes(path: Path, checked: Dict[Path, bool]) -> bool:
    if path not in checked:
        try:
            check_image(path)
            checked[path] = True
        except BadImageError:
            checked[path] = False
    return checked[path]
