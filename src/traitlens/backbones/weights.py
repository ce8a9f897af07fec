"""Load a local weights file into a timm model, safely and forgivingly.

Accepted: ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` read with
``torch.load(weights_only=True)`` (a file that needs full unpickling is refused); a traitlens run
folder or its ``model.json`` (its ``model.safetensors`` is used). Common nestings are unwrapped
(``{"model": ...}``, ``{"state_dict": ...}``, DINO's ``{"teacher": ...}``, ``module.`` /
``backbone.`` prefixes) and foreign key styles (open_clip / OpenAI CLIP, DINOv2 originals) are
converted with timm's own checkpoint filter for the architecture. A classifier head whose shape does
not fit is dropped; what did not load is reported in a :class:`LoadSummary`, never printed.
"""

from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from traitlens.errors import UserError

PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Nestings seen in the wild, outermost first. DINO checkpoints hold "student" and "teacher": the
# teacher is the one the paper evaluates.
_NEST_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "teacher", "module", "net", "student")
_STRIP_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "teacher.", "student.", "_orig_mod.")
# Below this share of the model's tensors matching, the file is for another architecture.
MIN_MATCH_FRACTION = 0.5


@dataclass
class LoadSummary:
    """What happened when a weights file was loaded into a model."""

    path: str
    matched: int
    total: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # present in both, shapes differ (not the head)
    dropped_head: list[str] = field(default_factory=list)  # classifier tensors whose shape did not fit

    def as_dict(self) -> dict:
        return {
            "path": self.path, "matched": self.matched, "total": self.total, "missing": self.missing,
            "unexpected": self.unexpected, "mismatched": self.mismatched, "dropped_head": self.dropped_head,
        }

    def __str__(self) -> str:
        return (
            f"loaded {self.matched}/{self.total} tensors from {self.path} "
            f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.dropped_head)} head tensors dropped)"
        )


def resolve_weights_path(path) -> Path:
    """The tensor file behind ``path``: the file itself, or a run folder's / model.json's model.safetensors."""
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix == ".json":
        folder = p if p.is_dir() else p.parent
        target = folder / "model.safetensors"
        if not target.is_file():
            raise UserError(f"no model.safetensors in {folder}: expected a traitlens run folder")
        return target
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    return p


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict stored in a weights file, unwrapped from common nestings."""
    p = resolve_weights_path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"cannot read {p} as safetensors: {err}") from err
    elif suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "global" not in str(err).lower():  # not a refused class: the file is not a checkpoint at all
                raise UserError(f"cannot read weights file {p}: not a PyTorch checkpoint") from err
            raise UserError(
                f"{p} holds pickled Python objects besides tensors, which traitlens does not unpickle; "
                "convert it to a plain state dict (e.g. safetensors.torch.save_file(state_dict, 'w.safetensors'))"
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            raise UserError(f"cannot read weights file {p}: {str(err).splitlines()[0]}") from err
    else:
        raise UserError(f"unsupported weights file {p}: use .safetensors, .pth, .pt, .bin or .ckpt")
    state = _unwrap(obj)
    if not state:
        raise UserError(f"no tensors found in weights file {p}")
    return state


def _unwrap(obj) -> dict[str, torch.Tensor]:
    for _ in range(4):
        if not isinstance(obj, dict):
            return {}
        if any(isinstance(v, torch.Tensor) for v in obj.values()) and sum(
            isinstance(v, torch.Tensor) for v in obj.values()
        ) >= len(obj) // 2:
            break
        inner = next((obj[k] for k in _NEST_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return {}
        obj = inner
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (timm's get_classifier), if it has parameters."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    for name, module in model.named_modules():
        if module is head and name:
            return {f"{name}.{k}" for k in head.state_dict()}
    return set()


def _timm_filter(model: nn.Module):
    """timm's checkpoint converter for this architecture (open_clip / DINOv2 keys, pos-embed resampling)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _candidates(state: dict[str, torch.Tensor], model: nn.Module):
    """Ways to read ``state`` as this model's keys: prefixes stripped, then timm's converter."""
    seen = []
    todo = [state]
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
            todo.append(stripped)
            if prefix == "module.":  # DDP wrapping around another nesting
                for inner in _STRIP_PREFIXES[1:]:
                    if any(k.startswith(inner) for k in stripped):
                        todo.append({k[len(inner):]: v for k, v in stripped.items() if k.startswith(inner)})
    fn = _timm_filter(model)
    for sd in todo:
        seen.append(sd)
        if fn is not None:
            try:
                converted = fn(dict(sd), model)
            except Exception:  # a converter that does not apply to this dict is simply not a candidate
                converted = None
            if isinstance(converted, dict) and converted:
                seen.append(converted)
    return seen


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "<state dict>") -> LoadSummary:
    """Load ``state`` into ``model`` as well as it fits and say what did not.

    Raises UserError when less than half of the model's (non-head) tensors found a match of the
    right shape: the file is for another architecture.
    """
    target = model.state_dict()
    head = _head_keys(model)
    body = [k for k in target if k not in head]

    def score(sd):
        return sum(1 for k in body if k in sd and tuple(sd[k].shape) == tuple(target[k].shape))

    best = max(_candidates(state, model), key=score)
    matched_body = score(best)
    if not body or matched_body < MIN_MATCH_FRACTION * len(body):
        unmatched = [k for k in body if k not in best][:3]
        raise UserError(
            f"weights {source} do not fit {type(model).__name__}: only {matched_body} of {len(body)} tensors "
            f"matched (e.g. missing {', '.join(unmatched) or 'none'}); are they weights of this backbone?",
            option="weights")
    load, mismatched, dropped = {}, [], []
    for k, v in best.items():
        if k not in target:
            continue
        if tuple(v.shape) == tuple(target[k].shape):
            load[k] = v
        elif k in head:
            dropped.append(k)
        else:
            mismatched.append(k)
    result = model.load_state_dict(load, strict=False)
    summary = LoadSummary(
        path=source,
        matched=len(load),
        total=len(target),
        missing=sorted(result.missing_keys),
        unexpected=sorted(k for k in best if k not in target),
        mismatched=sorted(mismatched),
        dropped_head=sorted(dropped),
    )
    model.traitlens_weights = summary
    return summary


def load_weights(model: nn.Module, path) -> LoadSummary:
    """Load a local weights file (or traitlens run folder / model.json) into ``model``."""
    p = resolve_weights_path(path)
    return load_state_dict(model, read_state_dict(p), source=str(p))


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
