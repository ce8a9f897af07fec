"""Plots drawn with matplotlib's object API (no global state, safe on headless machines)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from traitlens.errors import UserError


def literal_figure(**kwargs):
    """A matplotlib Figure whose text is drawn as written: species, part and file names come from users' folders,
    and a name with two ``$`` would otherwise be parsed as mathtext (and one that does not parse ends the figure).
    Ticks made while drawing are made under the same setting."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    class LiteralFigure(Figure):
        def draw(self, renderer):
            for text in self.findobj(Text):
                text.set_parse_math(False)
            with matplotlib.rc_context({"text.parse_math": False}):
                return super().draw(renderer)

    return LiteralFigure(**kwargs)


def _figure(width: float, height: float):
    return literal_figure(figsize=(width, height), layout="constrained")


def confusion_matrix_plot(confusion: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix",
                          normalise: bool = True):
    """A C×C confusion matrix (rows: true class, columns: predicted) as a heat map Figure.

    Give ``class_names`` as people read them (display names); with up to 20 classes every cell shows its value.
    """
    cm = np.asarray(confusion, dtype=float)
    if normalise:
        cm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    n = len(class_names)
    longest = max((len(str(c)) for c in class_names), default=1)
    size = min(3.2 + 0.42 * n, 16)
    margin = min(0.075 * longest, 3.5)  # room for the labels, so they are neither cut nor squeezed
    fig = _figure(size + 1 + margin, size + margin)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=1 if normalise else None)
    fontsize = 9 if n <= 20 else 7
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticks(range(n), labels=class_names, fontsize=fontsize)
    if n <= 20:
        top = cm.max() if cm.size else 1
        for i in range(n):
            for j in range(n):
                if cm[i, j] > 0:
                    ax.text(j, i, f"{cm[i, j]:.2f}" if normalise else f"{int(cm[i, j])}", ha="center", va="center",
                            fontsize=7, color="black" if cm[i, j] > 0.6 * top else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class" if normalise else "images")
    return fig


def bar_plot(values: Mapping[str, Mapping[str, float]], title: str = "", ylabel: str = "",
             errors: Optional[Mapping[str, Mapping[str, float]]] = None):
    """Grouped bars: ``values[group][series]`` (e.g. metric → method → score), optional error bars."""
    groups = list(values)
    series = list(dict.fromkeys(k for g in groups for k in values[g]))
    width = 0.8 / max(len(series), 1)
    fig = _figure(max(4, 1.2 * len(groups) * max(1, len(series)) * 0.5 + 2), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, name in enumerate(series):
        ys = [values[g].get(name, np.nan) for g in groups]
        err = [errors[g].get(name, 0.0) for g in groups] if errors else None
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, yerr=err, label=name, capsize=2)
    ax.set_xticks(x, labels=groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def line_plot(xs: Sequence[float], curves: Mapping[str, Sequence[float]], xlabel: str = "", ylabel: str = "",
              title: str = "", marks: Optional[Mapping[str, tuple]] = None):
    """Lines ``curves[name]`` over ``xs``; ``marks[label] = (x, y)`` adds points, each with its own marker in the
    legend (labels written next to the points overlap when two points are close)."""
    fig = _figure(5.2, 3.8)
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ax.plot(xs, ys, label=name)
    for (label, (mx, my)), marker in zip((marks or {}).items(), "osD^vP*X"):
        ax.plot([mx], [my], marker, markersize=8, markeredgecolor="black", linestyle="none", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) > 1 or marks:
        ax.legend(fontsize=8, loc="best")
    return fig


def metric_panels(values: Mapping[str, Mapping[str, float]], higher_is_better: Mapping[str, bool],
                  errors: Optional[Mapping[str, Mapping[str, float]]] = None, title: str = "", columns: int = 4):
    """One small bar panel per metric (``values[metric][series]``), each on its own scale, titled with the
    direction that is better (↑ higher, ↓ lower): metrics of different ranges never share an axis."""
    metrics = list(values)
    cols = max(1, min(columns, len(metrics)))
    rows = math.ceil(len(metrics) / cols) if metrics else 1
    series = list(dict.fromkeys(k for m in metrics for k in values[m]))
    fig = _figure(2.6 * cols + 0.4, 2.4 * rows + 0.5)
    colours = [f"C{i}" for i in range(len(series))]
    for index, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, index + 1)
        ys = [values[metric].get(name, np.nan) for name in series]
        err = [errors[metric].get(name, 0.0) for name in series] if errors else None
        ax.bar(range(len(series)), ys, yerr=err, color=colours, capsize=3)
        ax.set_xticks(range(len(series)), labels=series, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        better = higher_is_better.get(metric)
        arrow = "" if better is None else (" ↑ higher is better" if better else " ↓ lower is better")
        ax.set_title(f"{metric}{arrow}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    if title:
        fig.suptitle(title)
    return fig


def seen_unseen_figure(result: Mapping[str, Any], title: str = "Seen-unseen accuracy as γ varies"):
    """The seen-unseen curve of a :func:`traitlens.calibrate.evaluation.calibration_result` with each method's γ
    marked (a Figure)."""
    curve = result.get("curve")
    if not curve:
        raise UserError("no seen-unseen curve: the test data need samples of both seen and absent classes")
    marks = {"γ=0": (result["tables"]["fine-tuned"]["u/y"], result["tables"]["fine-tuned"]["s/y"])}
    for m, g in result["gamma"].items():
        t = result["tables"][m]
        marks[f"{m} γ={g:.2f}"] = (t["u/y"], t["s/y"])
    label = f"fine-tuned (AUSUC {result['ausuc']:.3f})"
    fig = line_plot(curve["acc_unseen"], {label: curve["acc_seen"]}, xlabel="Acc u/y (absent classes)",
                    ylabel="Acc s/y (fine-tuning classes)", title=title, marks=marks)
    return fig


def metrics_bar_plot(result):
    """The panels of an explanation evaluation (``traitlens.explain.EvaluationResult``): one per metric,
    method → mean with 95% CI error bars, each titled with its better direction."""
    from traitlens.explain.evaluate import HIGHER_IS_BETTER

    summary = result.summary()
    values = {m: {meth: summary[meth][m]["mean"] for meth in result.methods} for m in result.metrics}
    errors = {m: {meth: (0.0 if math.isnan(summary[meth][m]["ci95"]) else summary[meth][m]["ci95"])
                  for meth in result.methods} for m in result.metrics}
    return metric_panels(values, {m: HIGHER_IS_BETTER.get(m) for m in result.metrics}, errors=errors,
                         title="Explanation metrics (mean, 95% CI)")
