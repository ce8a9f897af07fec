"""Training configuration: one dataclass, YAML files, and ``key=value`` overrides from the command line.

A run is fully described by its :class:`TrainConfig`; the engine saves it next to every checkpoint
(``run_dir/config.yaml`` and inside ``model.json``) so any run can be repeated or resumed.

Precedence when a config is assembled: dataclass defaults < YAML file < explicit keyword values
< ``--set key=value`` overrides. Every value is type-checked against the field it sets.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import yaml

from traitlens.errors import UserError

METHOD_NAMES = ("linear-probe", "finetune", "prompt-cam", "intr")  # built in; users may register more
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    ``classes`` trains on a subset of the classes while keeping the full label space (the model
    still has one output per class found in the data; only the chosen classes' images are used for
    training and validation). ``method_options`` is free-form, read by the method's ``build``;
    ``backbone_options`` are keyword overrides passed to :func:`traitlens.backbones.create`.
    ``allow_partial``: load ``weights`` even when some tensors do not fit (by default a partial load is an error).
    Every number must be finite and in range (:meth:`validate`), so ``lr=inf`` fails before training starts.
    """

    data: str = ""
    out: str = ""
    method: str = "linear-probe"
    backbone: str = "tiny-vit"
    weights: Optional[str] = None
    allow_partial: bool = False
    pretrained: bool = False
    backbone_options: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    image_size: Optional[int] = None
    augment: bool = True
    amp: str = "auto"
    grad_clip: Optional[float] = None
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    train_split: str = "train"
    val_split: Optional[str] = "val"
    classes: Optional[List[str]] = None
    method_options: Dict[str, Any] = field(default_factory=dict)
    eval_every: int = 1
    save_every: int = 1
    eval_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges and choices; raise :class:`UserError` naming the bad field."""
        for name in fields():
            _check_type(name, getattr(self, name))
            _check_finite(name, getattr(self, name))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("amp", self.amp, AMP_MODES)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"config: device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "save_every": self.save_every, "step_size": self.step_size}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"config: {name} must be at least 1, got {value}")
        for name in ("lr", "backbone_lr_scale", "weight_decay", "warmup_epochs", "momentum", "gamma",
                     "min_lr_ratio", "label_smoothing"):
            if getattr(self, name) < 0:
                raise UserError(f"config: {name} must not be negative, got {getattr(self, name)}")
        if self.momentum >= 1:
            raise UserError(f"config: momentum must be below 1, got {self.momentum}")
        if self.min_lr_ratio > 1:
            raise UserError(f"config: min_lr_ratio must be at most 1, got {self.min_lr_ratio}")
        if self.label_smoothing >= 1:
            raise UserError(f"config: label_smoothing must be below 1, got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UserError(f"config: grad_clip must be positive (or null to turn it off), got {self.grad_clip}")
        if self.image_size is not None and self.image_size < 8:
            raise UserError(f"config: image_size must be at least 8 pixels, got {self.image_size}")
        if self.num_workers < 0:
            raise UserError(f"config: num_workers must not be negative, got {self.num_workers}")
        if self.classes is not None and len(self.classes) == 0:
            raise UserError("config: classes is an empty list; give at least one class name or null for all")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "TrainConfig":
        """Build a config from a plain dict (YAML, JSON sidecar); unknown keys are a :class:`UserError`."""
        unknown = sorted(set(values) - set(fields()))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields())}")
        coerced = {name: coerce(name, value, where) for name, value in values.items()}
        return cls(**coerced)

    def replace(self, **changes: Any) -> "TrainConfig":
        values = self.to_dict()
        values.update(changes)
        return TrainConfig.from_dict(values)


def fields() -> List[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


_HINTS = typing.get_type_hints(TrainConfig)


def _choice(name: str, value: str, choices: Iterable[str]) -> None:
    if value not in choices:
        raise UserError(f"config: {name} must be one of {', '.join(choices)}, not {value!r}")


def _base_type(hint: Any):
    """(base type, optional?) for the field annotations used above."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _base_type(inner)[0], True
    origin = typing.get_origin(hint)
    return (origin or hint), False


def _check_finite(name: str, value: Any, where: str = "config") -> None:
    """Numbers (also inside mappings such as ``method_options``) must be finite: NaN and inf are refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{name}.{k}", v, where)
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(name, v, where)


def _check_type(name: str, value: Any) -> None:
    base, optional = _base_type(_HINTS[name])
    if value is None:
        if optional:
            return
        raise UserError(f"config: {name} must not be null")
    ok = isinstance(value, base)
    if base is int or base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if base is int and isinstance(value, float):
            ok = value.is_integer()
    if not ok:
        raise UserError(f"config: {name} must be {_type_name(base)}, got {value!r}")


def _type_name(base) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list", dict: "a mapping"}.get(base, base.__name__)


def coerce(name: str, value: Any, where: str = "config") -> Any:
    """Convert ``value`` to the type of field ``name`` (YAML already typed it); raise on a mismatch."""
    if name not in _HINTS:
        raise UserError(f"{where}: unknown key {name!r}; known keys: {', '.join(fields())}")
    base, optional = _base_type(_HINTS[name])
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: {name} must not be null")
    if base in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as text
            number = float(value)
            value = int(number) if base is int and number.is_integer() and "." not in value else number
        except ValueError:
            pass
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a split or class named "2023"
    if base is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if base is list and isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if not ok:
        raise UserError(f"{where}: {name} must be {_type_name(base)}, got {value!r}")
    return value


def parse_override(text: str) -> tuple:
    """``"key=value"`` -> (key, typed value). ``method_options.k=v`` sets one entry of a mapping field."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not key=value (e.g. lr=0.01)", option="overrides")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    top = key.split(".", 1)[0]
    if top not in _HINTS:
        raise UserError(f"override {text!r}: unknown key {top!r}; known keys: {', '.join(fields())}")
    if "." in key:
        base, _ = _base_type(_HINTS[top])
        if base is not dict:
            raise UserError(f"override {text!r}: {top} is not a mapping, so {key!r} cannot be set")
    elif _base_type(_HINTS[top])[0] is str and not isinstance(value, str) and value is not None:
        value = raw.strip()  # a string field keeps what was typed ("1e-3" stays text, "007" too)
    return key, value


def apply_overrides(values: Dict[str, Any], overrides: Iterable[str], where: str = "--set") -> Dict[str, Any]:
    """Apply ``key=value`` strings to a plain dict of config values (in place, and returned)."""
    for text in overrides or []:
        key, value = parse_override(text)
        if "." in key:
            top, sub = key.split(".", 1)
            target = dict(values.get(top) or {})
            target[sub] = value
            values[top] = target
        else:
            values[key] = coerce(key, value, f"{where} {text!r}")
    return values


def preset_path(name: str) -> Optional[Path]:
    """The packaged preset ``name`` (``"tiny-cpu"`` or ``"tiny-cpu.yaml"``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" in stem or "\\" in stem:
        return None
    candidate = resources.files("traitlens") / "configs" / f"{stem}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def presets() -> List[str]:
    """Names of the packaged config presets."""
    folder = resources.files("traitlens") / "configs"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path) -> Dict[str, Any]:
    """The mapping stored in a YAML config file (a path or a packaged preset name)."""
    file = Path(path)
    if not file.is_file():
        packaged = preset_path(str(path))
        if packaged is None:
            raise UserError(f"config file {path} not found (packaged presets: {', '.join(presets()) or 'none'})")
        file = packaged
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {file} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {file} must hold a mapping of key: value, not {type(values).__name__}")
    return values


def load_config(yaml_path=None, overrides: Optional[List[str]] = None, **values: Any) -> TrainConfig:
    """Assemble a :class:`TrainConfig`: defaults < YAML file < ``values`` < ``overrides`` (``key=value``).

    ``yaml_path`` may be a file or the name of a packaged preset (see :func:`presets`).
    """
    merged: Dict[str, Any] = {}
    where = "config"
    if yaml_path is not None:
        merged.update(read_yaml(yaml_path))
        where = f"config {yaml_path}"
    unknown = sorted(set(merged) - set(fields()))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields())}")
    merged = {k: coerce(k, v, where) for k, v in merged.items()}
    for key, value in values.items():
        if value is not None:
            merged[key] = coerce(key, value, "option")
    apply_overrides(merged, overrides or [])
    return TrainConfig.from_dict(merged, where)


def save_config(config: TrainConfig, path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
