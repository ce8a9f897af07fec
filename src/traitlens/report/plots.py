"""Plots drawn with matplotlib's object API (no global state, safe on headless machines)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from traitlens.errors import UserError


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def confusion_matrix_plot(confusion: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix",
                          normalise: bool = True):
    """A C×C confusion matrix (rows: true class, columns: predicted) as a heat map Figure."""
    cm = np.asarray(confusion, dtype=float)
    if normalise:
        cm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    n = len(class_names)
    size = min(3 + 0.35 * n, 14)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=1 if normalise else None)
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
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
    """Lines ``curves[name]`` over ``xs``; ``marks[label] = (x, y)`` adds labelled points."""
    fig = _figure(4.5, 3.5)
    ax = fig.add_subplot()
    for name, ys in curves.items():
        ax.plot(xs, ys, label=name)
    for label, (mx, my) in (marks or {}).items():
        ax.plot([mx], [my], "o")
        ax.annotate(label, (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=8)
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
    """One grouped bar Figure of an explanation evaluation (``traitlens.explain.EvaluationResult``):
    metric → method → mean, with 95% CI error bars."""
    summary = result.summary()
    values = {m: {meth: summary[meth][m]["mean"] for meth in result.methods} for m in result.metrics}
    errors = {m: {meth: (0.0 if math.isnan(summary[meth][m]["ci95"]) else summary[meth][m]["ci95"])
                  for meth in result.methods} for m in result.metrics}
    return bar_plot(values, title="Explanation metrics (mean, 95% CI)", ylabel="score", errors=errors)
