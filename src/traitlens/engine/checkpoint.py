"""Checkpoints: ``model.safetensors`` + a ``model.json`` sidecar, and the training state for resume.

Nothing is pickled. A checkpoint folder holds

- ``model.safetensors``: the model's ``state_dict``;
- ``model.json``: traitlens version, method, backbone spec, ``num_classes``, ``class_names``,
  the full training config, metrics and epoch — enough for :func:`load_model` to rebuild the model
  through a method registry (:mod:`traitlens.methods`) and load the weights strictly.

The resume state lives in ``run_dir/last/``: ``state.safetensors`` (model weights, optimizer
tensors flattened as ``optim.<param index>.<name>``, RNG states as uint8 tensors) and
``state.json`` (epoch, step, optimizer param groups and scalar state, scaler, history). The folder
is replaced atomically, so an interruption while saving leaves the previous state usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import traitlens
from traitlens.errors import UserError

WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
STATE_DIR = "last"
FORMAT = "traitlens-checkpoint"


def _plain(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def backbone_spec(model: nn.Module) -> Optional[dict]:
    """``model.traitlens_spec`` of the model or of the first submodule carrying one."""
    for module in _plain(model).modules():
        spec = getattr(module, "traitlens_spec", None)
        if spec is not None:
            return spec
    return None


def _tensors(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (tied weights) and views.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def weights_record(model: nn.Module) -> Optional[dict]:
    """What the backbone's initial weights file gave (``LoadSummary.as_dict()``), if one was loaded."""
    for module in _plain(model).modules():
        summary = getattr(module, "traitlens_weights", None)
        if summary is not None and hasattr(summary, "as_dict"):
            return summary.as_dict()
    return None


def save_checkpoint(run_dir, model: nn.Module, meta: Dict[str, Any]) -> Path:
    """Write ``run_dir/model.safetensors`` and ``run_dir/model.json``; return ``run_dir``.

    ``meta`` should carry ``config`` (a dict or TrainConfig), ``class_names``, ``metrics`` and
    ``epoch``; the format, traitlens version, method, backbone spec and ``num_classes`` are filled in.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = _plain(model)
    config = meta.get("config")
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    class_names = list(meta.get("class_names") or [])
    num_classes = meta.get("num_classes") or len(class_names)
    sidecar = {
        "format": FORMAT,
        "format_version": 1,
        "traitlens_version": traitlens.__version__,
        "method": meta.get("method") or getattr(model, "traitlens_method", None)
        or (config or {}).get("method"),
        "backbone": backbone_spec(model),
        "num_classes": int(num_classes),
        "class_names": class_names,
        "config": config,
        "metrics": meta.get("metrics", {}),
        "epoch": meta.get("epoch"),
    }
    loaded = weights_record(model)
    if loaded is not None:  # what --weights gave: loaded, dropped, resampled (a run records its starting point)
        sidecar["initial_weights"] = loaded
    sidecar.update({k: v for k, v in meta.items() if k not in sidecar and k != "config"})
    tmp = run_dir / (WEIGHTS + ".tmp")
    save_file(_tensors(model.state_dict()), str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, run_dir / WEIGHTS)
    _write_json(run_dir / SIDECAR, sidecar)
    return run_dir


def resolve(path) -> Tuple[Path, Path]:
    """(weights file, sidecar file) for a checkpoint folder, its .safetensors or its .json."""
    path = Path(path)
    if path.is_dir():
        folder, stem = path, "model"
    elif path.suffix in (".safetensors", ".json"):
        folder, stem = path.parent, path.stem
    else:
        raise UserError(f"checkpoint {path} not found: give a run folder, its model.safetensors or its model.json")
    weights, sidecar = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if not sidecar.is_file():
        raise UserError(f"checkpoint {path}: {sidecar.name} not found in {folder} (is this a traitlens run folder?)")
    if not weights.is_file():
        raise UserError(f"checkpoint {path}: {weights.name} not found in {folder}")
    return weights, sidecar


def read_meta(path) -> Dict[str, Any]:
    """The sidecar of checkpoint ``path`` (folder, .safetensors or .json)."""
    _, sidecar = resolve(path)
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"checkpoint sidecar {sidecar} is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{sidecar} is not a traitlens checkpoint sidecar")
    check_meta(meta, sidecar)
    return meta


def config_from_meta(meta: Dict[str, Any]):
    """The TrainConfig stored in a sidecar (keys this version does not know are dropped)."""
    from traitlens.engine.config import TrainConfig, fields

    stored = dict(meta.get("config") or {})
    known = {k: v for k, v in stored.items() if k in fields()}
    if meta.get("method"):
        known["method"] = meta["method"]
    return TrainConfig.from_dict(known, "checkpoint config")


def check_meta(meta: Dict[str, Any], sidecar) -> None:
    """The sidecar's own consistency: ``num_classes`` a positive integer, ``class_names`` one per output."""
    n = meta.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"checkpoint sidecar {sidecar}: num_classes must be a positive integer, not {n!r}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)):
        raise UserError(f"checkpoint sidecar {sidecar}: class_names must be a list of strings")
    if names and len(names) != n:
        raise UserError(f"checkpoint sidecar {sidecar} lists {len(names)} class names for a head of {n} outputs: "
                        "give one name per class (or none)")


def load_weights(model: nn.Module, path, meta: Dict[str, Any]) -> nn.Module:
    """Load checkpoint ``path``'s weights into ``model`` strictly (a :class:`UserError` when they do not fit).

    A damaged safetensors file (a header that lies about its offsets) and NaN/inf weights are refused in one line.
    """
    from traitlens.backbones.reading import check_finite, read_safetensors

    weights, _ = resolve(path)
    state = read_safetensors(weights)
    check_finite(state, weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        config = meta.get("config") or {}
        raise UserError(f"checkpoint {weights} does not fit the {meta.get('method')} / {config.get('backbone')} "
                        f"model it describes: {first}") from None
    model.traitlens_meta = meta
    return model


def load_model(path, device="cpu", build: Optional[Callable[..., Tuple[nn.Module, list]]] = None,
               ) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of checkpoint ``path`` with ``build`` and load its weights strictly.

    ``build``: a method registry's ``build_model(config, num_classes, load_weights=False)``; the engine knows no
    method itself (``traitlens.methods.load_model`` passes its registry). Returns (model in eval mode on
    ``device``, the sidecar's meta).
    """
    if build is None:
        raise RuntimeError("no method registry to rebuild the model with: use traitlens.methods.load_model")
    meta = read_meta(path)
    model, _ = build(config_from_meta(meta), int(meta["num_classes"]), load_weights=False)
    return load_weights(model, path, meta).to(device).eval(), meta


# ---------------------------------------------------------------------------------------------
# Training state for resume.


def _rng_state() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    info = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, info


def _set_rng_state(tensors: Dict[str, torch.Tensor], info: Dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_training_state(run_dir, model: nn.Module, optimizer: torch.optim.Optimizer,
                        info: Dict[str, Any], scaler: Optional[Any] = None) -> Path:
    """Write ``run_dir/last/`` (atomically): weights, optimizer, RNG and ``info`` (epoch, step, ...)."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / STATE_DIR, run_dir / (STATE_DIR + ".tmp"), run_dir / (STATE_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v for k, v in _tensors(_plain(model).state_dict()).items()}
    opt = optimizer.state_dict()
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, pstate in opt["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    rng_tensors, rng_info = _rng_state()
    tensors.update(rng_tensors)
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": FORMAT + "-state"})
    payload = dict(info)
    payload.update({
        "format": FORMAT + "-state",
        "traitlens_version": traitlens.__version__,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_info,
    })
    _write_json(tmp / "state.json", payload)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def state_folder(run_dir) -> Optional[Path]:
    """``run_dir/last`` if a complete training state is there (or its previous copy), else None."""
    run_dir = Path(run_dir)
    for folder in (run_dir / STATE_DIR, run_dir / (STATE_DIR + ".old")):
        if (folder / "state.json").is_file() and (folder / "state.safetensors").is_file():
            return folder
    return None


def load_training_state(run_dir, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Optional[Any] = None, restore_rng: bool = True) -> Dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; return its ``info`` (epoch, step, history...)."""
    folder = state_folder(run_dir)
    if folder is None:
        raise UserError(f"nothing to resume in {run_dir}: no {STATE_DIR}/state.json (start afresh instead)",
                        option="resume")
    info = json.loads((folder / "state.json").read_text())
    from traitlens.backbones.reading import read_safetensors

    tensors = read_safetensors(folder / "state.safetensors")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _plain(model).load_state_dict(weights, strict=True)
    opt_info = info["optimizer"]
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in opt_info["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = optimizer.state_dict()["param_groups"]
    if len(groups) != len(opt_info["param_groups"]) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, opt_info["param_groups"])):
        raise UserError(f"cannot resume {run_dir}: its optimizer state does not fit this model "
                        "(was the method or backbone changed?)")
    saved_groups = [dict(g, **{k: tuple(v) for k, v in g.items() if k == "betas" and isinstance(v, list)})
                    for g in opt_info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": saved_groups})
    if scaler is not None and info.get("scaler"):
        scaler.load_state_dict(info["scaler"])
    if restore_rng:
        _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, info["rng"])
    return info
