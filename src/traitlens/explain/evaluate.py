"""Methods × metrics: explain a dataset with several CAMs and score every map (mean and 95% CI).

A method name is a CAM (``gradcam``, ``layercam``, ``scorecam``, ...) optionally prefixed by ``finer-``
(``finer-gradcam``). All methods explain the same target (the true label, or the prediction) and are
scored against the same "most similar class" (the first reference of the chosen reference mode), so
the columns compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.cams import canonical_method
from traitlens.explain.engine import METHODS, _classifier_weight, _siblings, explain
from traitlens.explain.metrics import (confidence_drop, deletion_insertion, diagnostic_table,
                                       diagnostic_trait_energy, energy_in_mask, pointing_game)
from traitlens.explain.targets import select_references

METRICS = ("drop", "contrastive_drop", "deletion", "insertion", "pointing", "energy", "diagnostic_energy")
HIGHER_IS_BETTER = {"drop": True, "contrastive_drop": True, "deletion": False, "insertion": True,
                    "pointing": True, "energy": True, "diagnostic_energy": True}


@dataclass(frozen=True)
class MethodSpec:
    """A column of the table: ``finer-gradcam`` → base ``gradcam``, finer True."""

    name: str
    base: str
    finer: bool


def parse_methods(spec) -> List[MethodSpec]:
    """``"gradcam,finer-gradcam"`` or a list of names → MethodSpecs (validated)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise UserError("no explanation method given (e.g. --methods gradcam,finer-gradcam)")
    out = []
    for name in names:
        finer = name.lower().startswith("finer-")
        base = canonical_method(name[6:] if finer else name)
        if base not in METHODS and not base.startswith("pgc:"):
            raise UserError(f"unknown explanation method {name!r}; use one of {', '.join(METHODS)}, "
                            "optionally prefixed by 'finer-'")
        out.append(MethodSpec(("finer-" if finer else "") + base, base, finer))
    return out


def mean_ci(values: Sequence[float]) -> Dict[str, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval (NaNs dropped)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    ci = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": float(ci), "n": int(v.size)}


@dataclass
class EvaluationResult:
    """``per_image[method][metric]`` = list of floats (NaN where a metric does not apply)."""

    methods: List[str]
    metrics: List[str]
    per_image: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    paths: List[str] = field(default_factory=list)

    def summary(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        return {m: {k: mean_ci(self.per_image[m][k]) for k in self.metrics} for m in self.methods}

    def table(self) -> List[dict]:
        """One row per method: ``{method, <metric>, <metric>_ci95, ...}``."""
        rows = []
        for m, stats in self.summary().items():
            row = {"method": m}
            for k, s in stats.items():
                row[k] = s["mean"]
                row[f"{k}_ci95"] = s["ci95"]
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {"methods": self.methods, "metrics": self.metrics, "summary": self.summary(),
                "table": self.table(), "per_image": self.per_image, "paths": self.paths,
                "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in self.metrics}}


def evaluate_explanations(model: nn.Module, batches: Iterable[dict], methods, metrics: Optional[Sequence[str]] = None,
                          alpha: float = 1.0, references="logit-distance", k: int = 3, topk: float = 0.05,
                          baseline: str = "zero", steps: int = 20, target: str = "label", traits=None,
                          class_names: Optional[Sequence[str]] = None, target_layer=None) -> EvaluationResult:
    """Explain every batch (``{"image", "label", "mask"?, "path"?}``) with each method and score it.

    metrics: a subset of :data:`METRICS` (default: all that the data allow: the localisation metrics
    need ``mask`` part maps, ``diagnostic_energy`` also needs ``traits``). target: ``"label"`` or
    ``"predicted"``. topk: the masked fraction for the confidence drops; steps: deletion/insertion.
    """
    specs = parse_methods(methods)
    if target not in ("label", "predicted"):
        raise UserError(f"target must be 'label' or 'predicted', got {target!r}")
    chosen = list(metrics) if metrics is not None else None
    if chosen is not None:
        bad = [m for m in chosen if m not in METRICS]
        if bad:
            raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    device = next(model.parameters()).device
    table = None
    result: Optional[EvaluationResult] = None
    for batch in batches:
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        with torch.no_grad():
            model.eval()
            logits = model(images).float()
        probs = torch.softmax(logits, -1)
        num_classes = logits.shape[1]
        tgt = batch["label"].to(device) if target == "label" else logits.argmax(1)
        other = select_references(logits, tgt, references, k=1,
                                  classifier_weight=_classifier_weight(model) if references == "weight-cosine" else None,
                                  siblings=_siblings(traits, num_classes, class_names) if references == "taxonomy"
                                  else None, class_names=class_names)[:, 0]
        parts = batch.get("mask")
        if result is None:
            available = [m for m in METRICS if (m not in ("pointing", "energy", "diagnostic_energy") or parts is not None)
                         and (m != "diagnostic_energy" or traits is not None)]
            use = chosen if chosen is not None else available
            missing = [m for m in use if m not in available]
            if missing:
                raise UserError(f"metric(s) {', '.join(missing)} need part masks"
                                f"{' and traits.json' if 'diagnostic_energy' in missing else ''}")
            result = EvaluationResult([s.name for s in specs], use,
                                      {s.name: {m: [] for m in use} for s in specs})
            if "diagnostic_energy" in use:
                table = diagnostic_table(traits, class_names)
        result.paths.extend(batch.get("path", [""] * images.shape[0]))
        fg = parts.to(device) > 0 if parts is not None else None
        for spec in specs:
            e = explain(model, images, method=spec.base, finer=spec.finer, alpha=alpha, target=tgt,
                        references=references, k=k, traits=traits, class_names=class_names,
                        target_layer=target_layer)
            values: Dict[str, torch.Tensor] = {}
            if {"drop", "contrastive_drop"} & set(result.metrics):
                d = confidence_drop(model, images, e.maps, tgt, other.clamp(min=0), k=topk, baseline=baseline,
                                    probs=probs)
                values["drop"], values["contrastive_drop"] = d["relative"], d["contrastive"]
            if {"deletion", "insertion"} & set(result.metrics):
                values.update(deletion_insertion(model, images, e.maps, tgt, steps=steps, baseline=baseline))
            if "pointing" in result.metrics:
                values["pointing"] = pointing_game(e.maps, fg)
            if "energy" in result.metrics:
                values["energy"] = energy_in_mask(e.maps, fg)
            if "diagnostic_energy" in result.metrics:
                values["diagnostic_energy"] = diagnostic_trait_energy(e.maps, parts.to(device), tgt, other, table)
            for m in result.metrics:
                result.per_image[spec.name][m].extend(values[m].float().cpu().tolist())
    if result is None:
        raise UserError("no images to evaluate")
    return result


def bar_plots(result: EvaluationResult):
    """One grouped bar Figure: metric → method → mean, with 95% CI error bars."""
    from traitlens.report.plots import bar_plot

    summary = result.summary()
    values = {m: {meth: summary[meth][m]["mean"] for meth in result.methods} for m in result.metrics}
    errors = {m: {meth: (0.0 if math.isnan(summary[meth][m]["ci95"]) else summary[meth][m]["ci95"])
                  for meth in result.methods} for m in result.metrics}
    return bar_plot(values, title="Explanation metrics (mean, 95% CI)", ylabel="score", errors=errors)
