"""The pages of a CompBench run: the accuracy bar plot and the failure cases side by side.

:func:`traitlens.compbench.runner.run` writes the answers and the summary; :func:`write_pages` draws them into
``out_dir/accuracy.png`` and ``out_dir/failures.html`` (``traitlens compbench run`` calls both).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from traitlens.compbench.records import PairRecord, resolve_image
from traitlens.compbench.runner import RunResult, read_results
from traitlens.compbench.scoring import Summary
from traitlens.report.html import Section, image_tag, write_page
from traitlens.report.plots import bar_plot


def write_pages(result: RunResult, records: Sequence[PairRecord], image_root: Path, model: str = "model",
                failure_examples: int = 24) -> Path:
    """``accuracy.png`` and ``failures.html`` (up to ``failure_examples`` cases) of a finished run; returns the page."""
    out_dir = Path(result.out_dir)
    wanted = {r.id: r for r in records}
    rows = [row for row in read_results(result.results_path) if row["id"] in wanted]
    write_accuracy_plot(result.summary, out_dir, model)
    return write_failures(rows, wanted, Path(image_root), out_dir / "failures.html", result.summary,
                          limit=failure_examples, model=model)


def write_accuracy_plot(summary: Summary, out_dir: Path, model: str = "model") -> None:
    """``out_dir/accuracy.png``: accuracy per task (nothing when no task was answered)."""
    if not summary.tasks:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = bar_plot({t: {model: s.accuracy} for t, s in summary.tasks.items()},
                   title=f"CompBench accuracy per task ({model})", ylabel="accuracy")
    fig.axes[0].set_ylim(0, 1)
    for label in fig.axes[0].get_xticklabels():
        label.set_rotation(30)
        label.set_ha("right")
    fig.savefig(Path(out_dir) / "accuracy.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


#: Failure cases show each image at its own size, up to this many pixels on its longest side (a 64 px
#: specimen is drawn at 64 px, not stretched across half the page).
SHOWN_MAX = 256


def _thumb(root: Path, stored: str, size: int = SHOWN_MAX):
    """The image at its own size (at most ``size`` px a side), or None when it is missing, refused or unreadable."""
    import numpy as np

    from traitlens.data.imageio import load_image
    from traitlens.errors import BadImageError

    path = resolve_image(root, stored)  # None for a missing image and for a path outside ``root``
    if path is None:
        return None
    try:
        return np.asarray(load_image(path, max_size=size))
    except BadImageError:
        return None


def native_size_figures(items: Sequence[Tuple[Any, str]]) -> str:
    """HTML for ``(H×W×3 uint8 array or None, caption)`` items side by side, each image drawn at its own
    pixel size (:func:`~traitlens.report.html.image_tag`) with its size in the caption; None draws a grey
    placeholder."""
    cells = []
    for arr, name in items:
        if arr is None:
            cells.append(f'<figure class="cb-case"><div style="width:64px;height:64px;background:#ccc"></div>'
                         f"<figcaption>{html.escape(name)} (not shown: missing or unreadable)</figcaption></figure>")
            continue
        h, w = arr.shape[:2]
        cells.append(f'<figure class="cb-case">{image_tag(arr, name)}'
                     f"<figcaption>{html.escape(name)} ({w}×{h} px)</figcaption></figure>")
    return f'<div class="cb-pair">{"".join(cells)}</div>'


def write_failures(rows: List[Dict[str, Any]], records: Dict[str, PairRecord], root: Path, path: Path,
                   summary: Summary, limit: int = 24, model: str = "model") -> Path:
    """An HTML page: the summary tables, the bar plot and up to ``limit`` failure cases side by side."""
    head = Section("Summary", intro=f"Model {model}: accuracy per task and per dimension; unparseable and "
                                    f"invalid replies count as wrong.")
    head.table(summary.task_rows(), caption="tasks")
    head.table(summary.dimension_rows() + [{"dimension": "macro (tasks)", "accuracy": summary.macro}],
               columns=["dimension", "n", "accuracy", "unparseable", "invalid"], caption="dimensions")
    plot = path.parent / "accuracy.png"
    if plot.is_file():
        head.figure(plot, caption="accuracy per task")
    fails = [r for r in rows if r["status"] != "correct"]
    # spread the examples over tasks, in a stable order
    by_task: Dict[str, List[Dict[str, Any]]] = {}
    for r in sorted(fails, key=lambda r: (r["task"], r["id"])):
        by_task.setdefault(r["task"], []).append(r)
    chosen: List[Dict[str, Any]] = []
    while len(chosen) < limit and any(by_task.values()):
        for t in list(by_task):
            if by_task[t] and len(chosen) < limit:
                chosen.append(by_task[t].pop(0))
    cases = Section("Failure cases", intro=f"{len(fails)} of {len(rows)} answered records are wrong; "
                                           f"{len(chosen)} shown.")
    for r in chosen:
        imgs = r.get("images") or []
        names = ["first image", "second image"] if len(imgs) == 2 else ["merged pair"]
        cases.html(native_size_figures([(_thumb(root, p), n) for p, n in zip(imgs, names)]))
        cases.table([{"task": r["task"], "question": r["question"], "truth": r["truth"],
                      "reply": str(r.get("reply")), "status": r["status"]}])
    return write_page(f"CompBench: {model}", [head, cases], path)
