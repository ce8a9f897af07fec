"""Training methods: a name -> ``"module:function"`` registry, imported only when asked for.

A method's function is ``build(config, num_classes, load_weights=True) -> (model, param_groups)``:
``model`` is an ``nn.Module`` whose forward maps images ``B×3×H×W`` to logits ``B×num_classes``,
``param_groups`` the optimizer groups (``{"params": [...], "lr": ...}``; a group may set its own
``weight_decay``). A model with trainable parameters that some forward passes leave unused sets
``model.traitlens_ddp_find_unused = True`` so DistributedDataParallel looks for them. ``load_weights=False`` is used when a checkpoint is being loaded: the weights
come from the checkpoint, so nothing is read from disk or the network. The registry stamps
``model.traitlens_method = name`` on what ``build`` returns.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterable, List, Tuple

from torch import nn

from traitlens.errors import UserError

METHODS: Dict[str, str] = {
    "linear-probe": "traitlens.engine.methods:build_linear_probe",
    "finetune": "traitlens.engine.methods:build_finetune",
    "prompt-cam": "traitlens.models.prompt_cam:build_for_training",
    "intr": "traitlens.models.intr:build_for_training",
}

BuildFn = Callable[..., Tuple[nn.Module, List[dict]]]


def register_method(name: str, target) -> None:
    """Make ``name`` a training method: ``target`` is a build function or a ``"module:function"`` string."""
    if not isinstance(target, str) and not callable(target):
        raise TypeError("target must be a 'module:function' string or a callable")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"target {target!r} must look like 'package.module:function'")
    METHODS[name] = target


def method_names() -> List[str]:
    return sorted(METHODS)


def get_method(name: str) -> BuildFn:
    """The build function registered as ``name`` (imported now)."""
    if name not in METHODS:
        raise UserError(f"unknown training method {name!r}; choose from {', '.join(method_names())}")
    target = METHODS[name]
    if callable(target):
        return target
    module_name, func_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"training method {name!r} is not available in this installation "
                            f"({module_name} is missing)") from None
        raise
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise UserError(f"training method {name!r}: {module_name} has no function {func_name}") from None


def build_model(config, num_classes: int, load_weights: bool = True) -> Tuple[nn.Module, List[dict]]:
    """Build ``config.method``'s model and optimizer groups; stamps ``model.traitlens_method``."""
    build = get_method(config.method)
    model, groups = build(config, num_classes, load_weights=load_weights)
    model.traitlens_method = config.method
    groups = [dict(g, params=list(g["params"])) for g in groups]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError(f"method {config.method!r} left no parameter to train")
    return model, groups


# ---------------------------------------------------------------------------------------------
# The two methods the engine itself provides.


def create_backbone(config, num_classes: int, load_weights: bool = True) -> nn.Module:
    """The timm classifier of ``config.backbone`` with a fresh ``num_classes`` head."""
    from traitlens import backbones

    return backbones.create(
        config.backbone,
        num_classes=num_classes,
        weights=config.weights if load_weights else None,
        pretrained=bool(config.pretrained and load_weights),
        **dict(config.backbone_options or {}),
    )


def head_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Parameters of the model's classifier head (timm's ``get_classifier``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not list(head.parameters()):
        raise UserError(f"backbone {type(model).__name__} has no classifier head to train; "
                        "create it with num_classes > 0")
    return list(head.parameters())


def decay_groups(params: Iterable[Tuple[str, nn.Parameter]], lr: float, weight_decay: float,
                 name: str) -> List[dict]:
    """Split into a decayed group and a no-decay group (biases, norms, tokens: 1-D or token params)."""
    decay, no_decay = [], []
    for pname, p in params:
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or pname.endswith(("cls_token", "pos_embed", "reg_token", "dist_token"))
        (no_decay if skip else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{name}"})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"})
    return groups


def build_linear_probe(config, num_classes: int, load_weights: bool = True):
    """Frozen backbone, trained linear head (the engine keeps frozen modules in eval mode)."""
    model = create_backbone(config, num_classes, load_weights)
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    named = [(n, p) for n, p in model.named_parameters() if id(p) in head]
    return model, decay_groups(named, config.lr, config.weight_decay, "head")


def build_finetune(config, num_classes: int, load_weights: bool = True):
    """Everything trained; the backbone at ``lr × backbone_lr_scale``, the new head at ``lr``."""
    model = create_backbone(config, num_classes, load_weights)
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(True)
    body = [(n, p) for n, p in model.named_parameters() if id(p) not in head]
    top = [(n, p) for n, p in model.named_parameters() if id(p) in head]
    return model, (decay_groups(body, config.lr * config.backbone_lr_scale, config.weight_decay, "backbone")
                   + decay_groups(top, config.lr, config.weight_decay, "head"))
