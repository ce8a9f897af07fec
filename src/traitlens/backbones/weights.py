"""Load a local weights file into a timm model: every tensor accounted for, or one line saying why not.

Accepted: ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` read with
``torch.load(weights_only=True)`` and a short allowlist of plain classes (``argparse.Namespace``; see
:mod:`traitlens.backbones.reading`); TorchScript archives (OpenAI CLIP) read as data, never run; a traitlens
run folder or its ``model.json`` (its ``model.safetensors`` is used). The format is recognised from the keys
(:func:`traitlens.backbones.formats.identify`) and converted to the timm model's keys.

Strict by default: a load in which a model tensor stays unset, a file tensor finds no place (other than the
documented drops: a CLIP file's text tower, DINOv2's mask token, a DINO checkpoint's student), a shape differs,
or the file's ViT geometry (patch size, registers, width, depth) is not the model's, is a :class:`UserError`
naming the format found and the preset it fits. ``strict=False`` loads what fits and reports the rest. A
classifier head whose shape does not fit the model's classes is left fresh (that is what fine-tuning wants),
and the position embedding is resampled to the model's grid (DINOv2 is published at 518 px; the preset runs
at 224). What was loaded, dropped and resampled is returned as a :class:`LoadSummary`, never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from traitlens.backbones import formats
from traitlens.backbones.reading import PICKLE_SUFFIXES, CheckpointFile, check_finite, read_checkpoint  # noqa: F401
from traitlens.errors import UserError

# Below this share of the model's tensors matching, the file is for another architecture (even when partial
# loads are allowed).
MIN_MATCH_FRACTION = 0.5


@dataclass
class LoadSummary:
    """What happened when a weights file was loaded into a model.

    ``matched``/``total``: model tensors set from the file / in the model. ``missing``: model tensors not set
    (a fresh head among them); ``unexpected``: file tensors with no place in the model; ``mismatched``: in both
    with another shape (not the head); ``dropped_head``: the file's classifier, whose shape did not fit;
    ``dropped``: file tensors left out on purpose, with the reason; ``resampled``: tensors interpolated to the
    model's grid (``{"pos_embed": "37×37 → 16×16"}``); ``partial``: whether anything but the documented drops,
    resampling and a fresh head is missing or left over.
    """

    path: str
    matched: int
    total: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)
    dropped_head: List[str] = field(default_factory=list)
    format: str = "state-dict"
    label: str = ""
    dropped: Dict[str, str] = field(default_factory=dict)
    resampled: Dict[str, str] = field(default_factory=dict)
    fresh_head: List[str] = field(default_factory=list)
    partial: bool = False
    conflicts: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        reasons: Dict[str, List[str]] = {}
        for key, why in self.dropped.items():
            reasons.setdefault(why, []).append(key)
        return {
            "path": self.path, "format": self.format, "label": self.label, "matched": self.matched,
            "total": self.total, "partial": self.partial, "missing": self.missing, "unexpected": self.unexpected,
            "mismatched": self.mismatched, "dropped_head": self.dropped_head, "fresh_head": self.fresh_head,
            "resampled": self.resampled, "conflicts": self.conflicts,
            "dropped": {why: {"count": len(keys), "keys": keys[:8] + ([f"... {len(keys) - 8} more"]
                                                                   if len(keys) > 8 else [])}
                        for why, keys in reasons.items()},
        }

    def __str__(self) -> str:
        line = f"loaded {self.matched}/{self.total} tensors from {self.path}"
        if self.label:
            line += f" ({self.label})"
        parts = []
        if self.resampled:
            parts.append("resampled " + ", ".join(f"{k} {v}" for k, v in self.resampled.items()))
        if self.dropped:
            reasons: Dict[str, int] = {}
            for why in self.dropped.values():
                reasons[why] = reasons.get(why, 0) + 1
            parts.append("dropped " + "; ".join(f"{n} ({why})" for why, n in reasons.items()))
        if self.fresh_head:
            parts.append(f"fresh head ({len(self.fresh_head)} tensors)")
        if self.partial:
            parts.append(f"PARTIAL: {len(self.missing) - len(self.fresh_head)} missing, {len(self.unexpected)} "
                         f"unexpected, {len(self.mismatched)} mismatched")
        return line + (": " + "; ".join(parts) if parts else "")


def resolve_weights_path(path) -> Path:
    """The tensor file behind ``path``: the file itself, or a run folder's / model.json's model.safetensors."""
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix == ".json":
        folder = p if p.is_dir() else p.parent
        # a traitlens run folder or a transformers save_pretrained folder (model.safetensors, or an older
        # pytorch_model.bin)
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (folder / name).is_file():
                return folder / name
        raise UserError(f"no model.safetensors in {folder}: expected a traitlens run folder or a transformers model "
                        "folder")
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    return p


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The flat {name: tensor} dict stored in a weights file, unwrapped from common nestings; NaN/inf refused."""
    p = resolve_weights_path(path)
    ck = read_checkpoint(p)
    check_finite(ck.state, p)
    return ck.state


def _head_keys(model: nn.Module) -> set:
    """State-dict keys of the model's classifier (timm's get_classifier), if it has parameters."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    for name, module in model.named_modules():
        if module is head and name:
            return {f"{name}.{k}" for k in head.state_dict()}
    return set()


_CLASSIFIER_NAMES = ("head.", "fc.", "classifier.", "head.fc.")


def _grid(shape, prefix: int) -> str:
    n = int(shape[1]) - prefix if len(shape) == 3 else int(shape[0]) - prefix
    side = int(round(n ** 0.5))
    return f"{side}×{side}" if side * side == n else f"{n} positions"


def _account(model: nn.Module, state: Dict[str, torch.Tensor], source: str, fmt: formats.Format,
             dropped: Dict[str, str], before: Dict[str, tuple], conflicts: List[str], strict: bool,
             target: Optional[str]) -> LoadSummary:
    own = model.state_dict()
    head = _head_keys(model)
    body = [k for k in own if k not in head]
    load, mismatched, dropped_head, unexpected = {}, [], [], []
    for k, v in state.items():
        if k in own:
            if tuple(v.shape) == tuple(own[k].shape):
                load[k] = v
            elif k in head:
                dropped_head.append(k)
            else:
                mismatched.append(k)
        elif not head and k.startswith(_CLASSIFIER_NAMES):
            dropped[k] = formats.PROJECTION if fmt.name in ("open-clip", "openai-clip", "hf-clip") else \
                "classifier head (the model is built without one)"
        else:
            unexpected.append(k)
    matched_body = sum(1 for k in body if k in load)
    name = target or type(model).__name__
    if not body or matched_body < MIN_MATCH_FRACTION * len(body):
        unmatched = [k for k in body if k not in load][:3]
        raise UserError(
            f"weights {source} ({fmt.label}) do not fit {name}: only {matched_body} of {len(body)} tensors "
            f"matched (e.g. missing {', '.join(unmatched) or 'none'}); are they weights of this backbone?"
            + (f" They fit preset {', '.join(fmt.presets)}." if fmt.presets else ""), option="weights")
    resampled = {}
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1) or 0)
    for key, shape in before.items():
        if key in load and tuple(shape) != tuple(load[key].shape):
            if key == "pos_embed":
                file_prefix = prefix + (1 if fmt.name in ("dinov2-reg",) else 0)
                resampled[key] = f"{_grid(shape, file_prefix)} → {_grid(tuple(load[key].shape), prefix)} grid"
            else:
                resampled[key] = f"{tuple(shape)} → {tuple(load[key].shape)}"
    body_missing = [k for k in body if k not in load and not k.endswith("num_batches_tracked")]
    partial = bool(body_missing or mismatched or unexpected or conflicts
                   or any(k != "pos_embed" for k in resampled))
    if partial and strict:
        what = []
        if conflicts:
            what.append(conflicts[0])
        if body_missing:
            what.append(f"{len(body_missing)} model tensor(s) not in the file (e.g. {', '.join(body_missing[:2])})")
        if unexpected:
            what.append(f"{len(unexpected)} file tensor(s) with no place in the model (e.g. "
                        f"{', '.join(sorted(unexpected)[:2])})")
        if mismatched:
            what.append(f"{len(mismatched)} of another shape (e.g. {mismatched[0]})")
        fits = [p for p in fmt.presets if p != target]
        hint = f"it fits preset {' or '.join(fits)}; " if fits else ""
        raise UserError(f"weights {source} are {fmt.label} and do not fully fit {name}: {'; '.join(what)}; "
                        f"{hint}pass --allow-partial (API: strict=False) to load only what fits", option="weights")
    result = model.load_state_dict(load, strict=False)
    summary = LoadSummary(
        path=source, matched=len(load), total=len(own), missing=sorted(result.missing_keys),
        unexpected=sorted(unexpected), mismatched=sorted(mismatched), dropped_head=sorted(dropped_head),
        format=fmt.name, label=fmt.label, dropped=dict(sorted(dropped.items())), resampled=resampled,
        fresh_head=sorted(k for k in head if k not in load), partial=partial, conflicts=list(conflicts))
    model.traitlens_weights = summary
    return summary


def load_checkpoint_file(model: nn.Module, ck: CheckpointFile, strict: bool = True,
                         target: Optional[str] = None) -> LoadSummary:
    """Load a read checkpoint into a timm ``model`` (see the module docstring); ``target``: the preset name."""
    source = str(ck.path)
    fmt = formats.identify(ck)
    if fmt.role != "backbone" and strict:
        raise UserError(f"{source} is {fmt.label}, not backbone weights: {fmt.hint}", option="weights")
    teacher = formats._dino_teacher(ck) if fmt.name == "dino-training" else None
    file_geo = formats.geometry(teacher if teacher is not None else ck.state)
    conflicts = formats.geometry_conflict(file_geo, formats.model_geometry(model))
    if conflicts and strict:
        fits = [p for p in fmt.presets if p != target]
        hint = f"it fits preset {' or '.join(fits)}" if fits else "build the backbone it was trained as"
        raise UserError(f"weights {source} are {fmt.label} ({file_geo.describe()}) and do not fit "
                        f"{target or type(model).__name__} ({conflicts[0]}): {hint}; pass --allow-partial "
                        "(API: strict=False) to load it resampled anyway", option="weights")
    if fmt.name in ("state-dict", "vit", "vit-b16", "traitlens") or fmt.role != "backbone":
        own = model.state_dict()
        head = _head_keys(model)
        body = [k for k in own if k not in head]

        def score(sd):
            return sum(1 for k in body if k in sd and tuple(sd[k].shape) == tuple(own[k].shape))

        state = max(formats.candidates(ck.state, model), key=score)
        before = {k: tuple(ck.state[k].shape) for k in ("pos_embed", "patch_embed.proj.weight") if k in ck.state}
        dropped: Dict[str, str] = {}
    else:
        state, dropped, before = formats.to_timm(fmt, ck, model)
    return _account(model, state, source, fmt, dropped, before, conflicts, strict, target)


def load_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], source: str = "<state dict>",
                    strict: bool = True, target: Optional[str] = None) -> LoadSummary:
    """Load a flat ``state`` dict into ``model`` (see the module docstring for ``strict``)."""
    check_finite(state, source)
    ck = CheckpointFile(Path(source), "state", state, dict(state))
    return load_checkpoint_file(model, ck, strict=strict, target=target)


def load_weights(model: nn.Module, path, strict: bool = True, target: Optional[str] = None) -> LoadSummary:
    """Load a local weights file (or traitlens run folder / model.json) into ``model``."""
    p = resolve_weights_path(path)
    ck = read_checkpoint(p)
    check_finite(ck.state, p)
    return load_checkpoint_file(model, ck, strict=strict, target=target)


def run_folder_spec(path) -> dict | None:
    """The backbone spec recorded in a traitlens run folder's model.json, if ``path`` is one."""
    p = Path(path).expanduser()
    meta = p / "model.json" if p.is_dir() else (p if p.suffix == ".json" else p.with_name("model.json"))
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    spec = data.get("backbone") if isinstance(data, dict) else None
    return spec if isinstance(spec, dict) else None
