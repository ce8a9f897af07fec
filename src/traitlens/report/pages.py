"""The pages that `evaluate-explanations` and `calibrate` write beside their JSON: ``index.html``.

Each page says what was measured on how many images, shows the table with the better direction of every
column, one plot panel per metric, and what every heading means. The page is drawn from the JSON that the
command writes (``table.json``, ``calibration.json``), so a saved result can be redrawn later.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from traitlens.calibrate.evaluation import CALIBRATION_HEADINGS
from traitlens.report.html import Section, write_page

# What each explanation metric measures (the page's legend).
METRIC_MEANINGS = {
    "drop": "relative confidence drop (p − p*) / p after removing the map's top pixels: how much the prediction "
            "relies on what the map shows",
    "contrastive_drop": "drop of p(class) − p(most similar class) after removing the top pixels: how much the "
                        "map shows what separates the two",
    "deletion": "area under p(class) as the most important pixels are removed first (RISE)",
    "insertion": "area under p(class) as the most important pixels are put back first, from a blurred image (RISE)",
    "pointing": "fraction of images whose map maximum falls on the specimen's parts",
    "energy": "share of the map's energy on the specimen's parts",
    "diagnostic_energy": "share of the map's energy on the parts in which the species differs from the most "
                         "similar one (traits.json)",
    "diagnostic_lift": "that share over the diagnostic parts' share of the image (1 = no better than a flat map)",
    "diagnostic_fraction": "the diagnostic parts' share of the energy that falls on the specimen",
    "diagnostic_density": "energy density on the diagnostic parts over that on the parts both species share",
}

def _arrow(better: Optional[bool]) -> str:
    return "" if better is None else (" ↑" if better else " ↓")


def explanation_evaluation_page(payload: Mapping[str, Any], out: Path, figure: Optional[Path] = None) -> Path:
    """``out/index.html`` from an evaluate-explanations ``table.json`` payload (and its ``metrics.png``)."""
    out = Path(out)
    metrics = list(payload["metrics"])
    better = payload.get("higher_is_better", {})
    counts = payload.get("counts", {})
    s = Section("Explanation methods compared", intro=(
        f"Checkpoint {payload.get('checkpoint', '?')}, data {payload.get('data', '?')} (split "
        f"{payload.get('split', '?')}), maps at layer {payload.get('layer', '?')}, {payload.get('scale', 1)}× input; "
        f"Finer-CAM α = {payload.get('alpha', '?')}, references: {payload.get('references', '?')}."))
    s.text(scored_sentence(counts, payload.get("only_correct")))
    rows = []
    for row in payload["table"]:
        cells: Dict[str, Any] = {"method": row["method"]}
        for m in metrics:
            value, ci = row.get(m), row.get(f"{m}_ci95")
            cells[f"{m}{_arrow(better.get(m))}"] = _mean_ci(value, ci)
        rows.append(cells)
    s.table(rows, caption="Mean ± 95% CI over the scored images; ↑ higher is better, ↓ lower is better.")
    if figure is not None and Path(figure).exists():
        s.figure(figure, caption="One panel per metric, each on its own scale.", width=900)
    legend = Section("What the columns measure")
    legend.table([{"metric": m, "better": {True: "higher", False: "lower"}.get(better.get(m), "?"),
                   "meaning": METRIC_MEANINGS.get(m, "")} for m in metrics])
    return write_page("Explanation evaluation", [s, legend], out / "index.html")


def scored_sentence(counts: Mapping[str, int], only_correct: Optional[bool] = None) -> str:
    """"6 of 12 test images were scored (…)": how many images each figure rests on."""
    images, correct, scored = counts.get("images"), counts.get("correct"), counts.get("scored")
    if images is None or scored is None:
        return "The number of scored images was not recorded."
    why = (f"{correct} classified correctly; only those are scored" if only_correct and correct is not None
           else "every image with a map")
    return f"{scored} of {images} images were scored ({why})."


def _mean_ci(value, ci) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if ci is None or (isinstance(ci, float) and math.isnan(ci)):
        return f"{value:.3f}"
    return f"{value:.3f} ± {ci:.3f}"


def calibration_page(result: Mapping[str, Any], out: Path) -> Path:
    """``out/index.html`` from a `calibrate` result (``calibration.json``): the table, the curve, the headings."""
    out = Path(out)
    tables, gamma = result["tables"], result.get("gamma", {})
    s = Section("Calibrated fine-tuning", intro=(
        "One bias γ added to the logits of the classes absent from fine-tuning. ALG and PCV choose γ without test "
        "labels; an oracle row, when present, peeks at them (an upper bound)."))
    columns = [c for c in CALIBRATION_HEADINGS if any(c in t for t in tables.values())]
    rows = []
    for name, t in tables.items():
        row: Dict[str, Any] = {"model": name, "γ": gamma.get(name, "")}
        row.update({c: t.get(c, float("nan")) for c in columns})
        rows.append(row)
    s.table(rows, caption="Accuracy (fractions) on the test images; every column: higher is better.")
    if result.get("ausuc") is not None:
        s.text(f"Area under the seen-unseen curve (AUSUC): {result['ausuc']:.4f}.")
    for method, why in result.get("skipped", {}).items():
        s.text(f"{method}: skipped ({why}).", note=True)
    plot = result.get("plot")
    if plot and Path(plot).exists():
        s.figure(plot, caption="Each γ gives one point of the curve; the chosen γ values are marked.", width=560)
    legend = Section("What the columns mean")
    legend.table([{"column": c, "meaning": CALIBRATION_HEADINGS[c]} for c in columns])
    return write_page("Calibration", [s, legend], out / "index.html")
