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
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError
from traitlens.explain.cams import canonical_method
from traitlens.explain.engine import METHODS, explain
from traitlens.explain.metrics import (confidence_drop, deletion_insertion, diagnostic_lift, diagnostic_table,
                                       diagnostic_trait_energy, diagnostic_vs_shared, energy_in_mask,
                                       pointing_game)
from traitlens.explain.targets import model_references

METRICS = ("drop", "contrastive_drop", "pair_drop", "deletion", "insertion", "pointing", "energy", "diagnostic_energy",
           "diagnostic_lift", "diagnostic_fraction", "diagnostic_density")
HIGHER_IS_BETTER = {"drop": True, "contrastive_drop": True, "pair_drop": True, "deletion": False, "insertion": True,
                    "pointing": True, "energy": True, "diagnostic_energy": True, "diagnostic_lift": True,
                    "diagnostic_fraction": True, "diagnostic_density": True}
# Metrics that need part maps, and those that also need the trait table.
PART_METRICS = ("pointing", "energy", "diagnostic_energy", "diagnostic_lift", "diagnostic_fraction",
                "diagnostic_density")
TRAIT_METRICS = ("diagnostic_energy", "diagnostic_lift", "diagnostic_fraction", "diagnostic_density")


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
        raise UserError("no explanation method given (e.g. gradcam,finer-gradcam)", option="methods")
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
    counts: Dict[str, int] = field(default_factory=dict)  # images seen, correctly classified, scored

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
                "table": self.table(), "per_image": self.per_image, "paths": self.paths, "counts": self.counts,
                "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in self.metrics}}


def recommended_settings(model: nn.Module, input_size: Optional[Sequence[int]] = None,
                         min_cells: int = 14) -> Dict[str, object]:
    """Where to explain ``model`` when scoring explanations against small parts: ``{"target_layer": path or
    None (the engine's default), "scale": input scale factor}``.

    Two things decide whether any CAM can put its energy on a trait part a few pixels wide (measured with
    :func:`evaluate_explanations` on the demo collection's correctly classified test images, references = the
    sibling species, α = 1, with the demo classifiers of ``traitlens demo``):

    - *the layer the logits read.* A ViT that pools its patch tokens (``global_pool`` avg/max) reads the last
      block's output directly; its first norm (the default for CLS-token ViTs, whose patch tokens reach the
      logit only through that block's attention) sees the gradient smeared by one more attention layer. On
      the tiny ViT, Finer-CAM's diagnostic lift is 6.5 at the block output and 2.9 at its norm1.
    - *resolution.* With fewer than ``min_cells`` patches along the shorter side one cell spans a whole wing;
      a ViT with a dynamic image size is given a larger input (``scale``), which on the tiny ViT also raised
      the accuracy (0.72 → 0.77 at 2×). A CNN keeps its layout's last stage: on the demo's tiny CNN the 16×16
      ``layer1`` did not help Finer-Grad-CAM (diagnostic share of the specimen's energy +0.022 over Grad-CAM
      there vs +0.034 at the 8×8 ``layer4``), and a 2× input cost 17 points of accuracy.

    input_size: the (H, W) the images come in at (default: the backbone's data config).
    """
    from traitlens.backbones import data_config
    from traitlens.backbones.layout import find_backbone

    out: Dict[str, object] = {"target_layer": None, "scale": 1.0}
    try:
        from traitlens.backbones import layout
        lay = layout(model)
        short = min(input_size[-2:]) if input_size is not None else min(data_config(model)["input_size"][1:])
    except (ImportError, UserError, KeyError, TypeError, AttributeError):
        return out
    net, prefix = find_backbone(model)
    cells = short // max(lay.patch_size)
    if lay.family == "vit":
        if getattr(net, "global_pool", "token") in ("avg", "max", "avgmax") and hasattr(net, "blocks"):
            out["target_layer"] = f"{prefix}blocks.{len(net.blocks) - 1}"
        if cells < min_cells and lay.dynamic_img_size:
            out["scale"] = float(math.ceil(min_cells / max(cells, 1)))
    return out


def evaluate_explanations(model: nn.Module, batches: Iterable[dict], methods, metrics: Optional[Sequence[str]] = None,
                          alpha: float = 1.0, references="logit-distance", k: int = 3, topk: float = 0.05,
                          baseline: str = "zero", steps: int = 20, target: str = "label", traits=None,
                          class_names: Optional[Sequence[str]] = None, target_layer=None,
                          only_correct: bool = False, scale: float = 1.0) -> EvaluationResult:
    """Explain every batch (``{"image", "label", "mask"?, "path"?}``) with each method and score it.

    metrics: a subset of :data:`METRICS` (default: all that the data allow: the localisation metrics
    need ``mask`` part maps, the diagnostic ones also need ``traits``). target: ``"label"`` or
    ``"predicted"`` (the paper explains the prediction). topk: the masked fraction for the confidence
    drops; steps: deletion/insertion. only_correct: score only the correctly classified images (a wrong
    prediction makes the drops and the diagnostic parts of the "target" meaningless). With
    ``references="taxonomy"``, images whose target class has no sibling are skipped (there is nothing to
    distinguish it from). scale: resize the images (bilinear) and part maps (nearest) by this factor
    before explaining, e.g. 2 gives a ViT with dynamic image size a twice finer patch grid.
    """
    specs = parse_methods(methods)
    if target not in ("label", "predicted"):
        raise UserError(f"target must be 'label' or 'predicted', got {target!r}")
    if not scale > 0:
        raise UserError(f"scale must be > 0, got {scale}")
    chosen = list(metrics) if metrics is not None else None
    if chosen is not None:
        bad = [m for m in chosen if m not in METRICS]
        if bad:
            raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    taxonomy = isinstance(references, str) and references == "taxonomy"
    device = next(model.parameters()).device
    table = None
    result: Optional[EvaluationResult] = None
    counts = {"images": 0, "correct": 0, "scored": 0}
    for batch in batches:
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        parts = batch.get("mask")
        parts = parts.to(device) if parts is not None else None
        paths = list(batch.get("path", [""] * images.shape[0]))
        if scale != 1.0:
            size = [int(round(s * scale)) for s in images.shape[-2:]]
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            if parts is not None:
                parts = F.interpolate(parts[:, None].float(), size=size, mode="nearest")[:, 0].long()
        with torch.no_grad():
            model.eval()
            logits = model(images).float()
        tgt = labels if target == "label" else logits.argmax(1)
        other = model_references(model, logits, tgt, references, 1, class_names, traits)[:, 0]
        correct = logits.argmax(1) == labels
        counts["images"] += int(correct.numel())
        counts["correct"] += int(correct.sum())
        keep = correct.clone() if only_correct else torch.ones_like(correct)
        if taxonomy:
            keep &= other >= 0
        if not bool(keep.any()):
            continue
        if not bool(keep.all()):
            images, logits, tgt, other = images[keep], logits[keep], tgt[keep], other[keep]
            parts = parts[keep] if parts is not None else None
            paths = [p for p, kept in zip(paths, keep.tolist()) if kept]
        probs = torch.softmax(logits, -1)
        if result is None:
            available = [m for m in METRICS if (m not in PART_METRICS or parts is not None)
                         and (m not in TRAIT_METRICS or traits is not None)]
            use = chosen if chosen is not None else available
            missing = [m for m in use if m not in available]
            if missing:
                needs_traits = any(m in TRAIT_METRICS for m in missing)
                raise UserError(f"metric(s) {', '.join(missing)} need part masks"
                                f"{' and traits.json' if needs_traits else ''}")
            result = EvaluationResult([s.name for s in specs], use,
                                      {s.name: {m: [] for m in use} for s in specs})
            if any(m in TRAIT_METRICS for m in use):
                table = diagnostic_table(traits, class_names)
        result.paths.extend(paths)
        counts["scored"] += len(paths)
        fg = parts > 0 if parts is not None else None
        for spec in specs:
            e = explain(model, images, method=spec.base, finer=spec.finer, alpha=alpha, target=tgt,
                        references=references, k=k, traits=traits, class_names=class_names,
                        target_layer=target_layer)
            values: Dict[str, torch.Tensor] = {}
            if {"drop", "contrastive_drop", "pair_drop"} & set(result.metrics):
                d = confidence_drop(model, images, e.maps, tgt, other.clamp(min=0), k=topk, baseline=baseline,
                                    probs=probs)
                values["drop"], values["contrastive_drop"], values["pair_drop"] = (d["relative"], d["contrastive"],
                                                                                   d["pair"])
            if {"deletion", "insertion"} & set(result.metrics):
                values.update(deletion_insertion(model, images, e.maps, tgt, steps=steps, baseline=baseline))
            if "pointing" in result.metrics:
                values["pointing"] = pointing_game(e.maps, fg)
            if "energy" in result.metrics:
                values["energy"] = energy_in_mask(e.maps, fg)
            if "diagnostic_energy" in result.metrics:
                values["diagnostic_energy"] = diagnostic_trait_energy(e.maps, parts, tgt, other, table)
            if "diagnostic_lift" in result.metrics:
                values["diagnostic_lift"] = diagnostic_lift(e.maps, parts, tgt, other, table)
            if {"diagnostic_fraction", "diagnostic_density"} & set(result.metrics):
                split = diagnostic_vs_shared(e.maps, parts, tgt, other, table)
                values["diagnostic_fraction"], values["diagnostic_density"] = split["fraction"], split["density_ratio"]
            for m in result.metrics:
                result.per_image[spec.name][m].extend(values[m].float().cpu().tolist())
    if result is None:
        raise UserError("no images to evaluate"
                        + (" (none left after the filters)" if only_correct or taxonomy else ""))
    result.counts = counts
    return result
