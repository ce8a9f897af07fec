"""Training methods: the registry of what ``config.method`` names, and the calls that go through it.

A method is a build function ``build(config, num_classes, load_weights=True) -> (model, param_groups)``:
``model`` is an ``nn.Module`` whose forward maps images ``B×3×H×W`` to logits ``B×num_classes``, ``param_groups``
the optimizer groups (``{"params": [...], "lr": ...}``; a group may set its own ``weight_decay``). A model with
trainable parameters that some forward passes leave unused sets ``model.traitlens_ddp_find_unused = True`` so
DistributedDataParallel looks for them. ``load_weights=False`` is used when a checkpoint is being loaded: the
weights come from the checkpoint, so nothing is read from disk or the network. :func:`build_model` stamps
``model.traitlens_method = name`` on what ``build`` returns.

This module sits above :mod:`traitlens.engine` and :mod:`traitlens.models`: it imports the builders directly,
and hands the engine a built model (:func:`train` = :func:`build_model` + :func:`traitlens.engine.train.fit`).
Rebuilding a model from a run folder needs every method, so :func:`load_model` and :func:`evaluate_checkpoint`
live here too; the engine only reads and writes the checkpoint format, and is given the builder.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from torch import nn

from traitlens.engine import checkpoint
from traitlens.engine import data as engine_data
from traitlens.engine import train as engine_train
from traitlens.engine import distributed
from traitlens.engine.evaluate import evaluate_on_split
from traitlens.errors import UserError
from traitlens.models import intr, prompt_cam

BuildFn = Callable[..., Tuple[nn.Module, List[dict]]]


# ---------------------------------------------------------------------------------------------
# The two plain classifiers: a timm backbone with a fresh head.


def create_backbone(config, num_classes: int, load_weights: bool = True) -> nn.Module:
    """The timm classifier of ``config.backbone`` with a fresh ``num_classes`` head."""
    from traitlens import backbones

    return backbones.create(
        config.backbone,
        num_classes=num_classes,
        weights=config.weights if load_weights else None,
        pretrained=bool(config.pretrained and load_weights),
        strict=not config.allow_partial,
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


def finetune_groups(model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float) -> List[dict]:
    """Optimizer groups that train all of a timm classifier: the body at ``lr × backbone_lr_scale``, the head at
    ``lr``; biases, norms and tokens without weight decay. Every parameter is made trainable."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(True)
    body = [(n, p) for n, p in model.named_parameters() if id(p) not in head]
    top = [(n, p) for n, p in model.named_parameters() if id(p) in head]
    return (decay_groups(body, lr * backbone_lr_scale, weight_decay, "backbone")
            + decay_groups(top, lr, weight_decay, "head"))


def build_finetune(config, num_classes: int, load_weights: bool = True):
    """Everything trained; the backbone at ``lr × backbone_lr_scale``, the new head at ``lr``."""
    model = create_backbone(config, num_classes, load_weights)
    return model, finetune_groups(model, config.lr, config.backbone_lr_scale, config.weight_decay)


METHODS: Dict[str, BuildFn] = {
    "linear-probe": build_linear_probe,
    "finetune": build_finetune,
    "prompt-cam": prompt_cam.build_for_training,
    "intr": intr.build_for_training,
}


def register_method(name: str, build: BuildFn) -> None:
    """Make ``name`` a training method built by ``build`` (see the module docstring for its signature)."""
    if not callable(build):
        raise TypeError("build must be a callable: build(config, num_classes, load_weights=True)")
    METHODS[name] = build


def method_names() -> List[str]:
    return sorted(METHODS)


def get_method(name: str) -> BuildFn:
    """The build function registered as ``name``."""
    if name not in METHODS:
        raise UserError(f"unknown training method {name!r}; choose from {', '.join(method_names())}")
    return METHODS[name]


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


def train(config, progress: bool = True, resume: Optional[bool] = None) -> Dict[str, Any]:
    """Build ``config.method``'s model for the classes of ``config.data``'s training split and :func:`fit` it.

    The global RNGs are seeded with ``config.seed`` before the build, so the initial weights (a fresh head) are
    the same on every run and every process. Returns :func:`traitlens.engine.train.fit`'s result.
    """
    data, _ = engine_train.check_paths(config)
    class_names = engine_train.split_classes(data, config.train_split)
    engine_train.seed_everything(config.seed)
    model, groups = build_model(config, len(class_names))
    return engine_train.fit(config, model, groups, progress=progress, resume=resume)


def load_model(path, device="cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of checkpoint ``path`` (run folder, .safetensors or .json) and load its weights strictly.

    Returns (model in eval mode on ``device``, the sidecar's meta); ``model.traitlens_transform`` is its eval
    transform (photo → normalised 3×H×W tensor: ``model.traitlens_transform(pil)[0]``).
    """
    model, meta = checkpoint.load_model(path, device=device, build=build_model)
    # What a notebook needs to preprocess a photo as the checkpoint was trained (explain() uses it too).
    model.traitlens_transform = engine_data.eval_transform(model, checkpoint.config_from_meta(meta))
    return model, meta


def evaluate_checkpoint(path, data, split: str = "test", device: str = "auto", batch_size: int = 64,
                        num_workers: int = 0, return_logits: bool = False,
                        show_progress: bool = True) -> Dict[str, Any]:
    """Load checkpoint ``path`` and score it on ``data/<split>``: top-1/top-5, per-class accuracy, confusion.

    Classes are matched by name (see :func:`traitlens.engine.evaluate.evaluate_on_split`); the result also
    names ``checkpoint``, ``data`` and ``split``.
    """
    dev = distributed.resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    model, meta = load_model(path, device=dev)
    out = evaluate_on_split(model, meta, data, split, dev, batch_size=batch_size, num_workers=num_workers,
                            return_logits=return_logits, show_progress=show_progress)
    out.update(checkpoint=str(path), data=str(data), split=split)
    return out


# ---------------------------------------------------------------------------------------------
# The papers' released models as traitlens run folders.

IMPORT_KINDS = ("intr", "prompt-cam")


def _class_names(class_names, n: int, source) -> List[str]:
    if class_names is None:
        width = len(str(n - 1))
        return [f"class_{i:0{width}d}" for i in range(n)]
    names = [str(c) for c in class_names]
    if len(names) != n:
        raise UserError(f"{source} has {n} classes but {len(names)} class names were given: give one name per "
                        "class, in the order the model was trained on", option="class_names")
    return names


def _prompt_cam_backbone(state) -> Tuple[str, dict]:
    """The preset (and overrides) a Prompt-CAM reference backbone is, from its ViT geometry."""
    from traitlens.backbones.formats import geometry

    g = geometry(state)
    if g.patch == 14:
        name = "dinov2-vitb14-reg" if g.registers else "dinov2-vitb14"
    elif g.patch == 16:
        name = "clip-vitb16" if "norm_pre.weight" in state else "dino-vitb16"
    else:
        raise UserError(f"Prompt-CAM model with a ViT of patch {g.patch}: no traitlens preset fits it")
    overrides = {"depth": g.depth} if g.depth and g.depth != 12 else {}
    return name, overrides


def import_trained(path, out, kind: Optional[str] = None, class_names: Optional[List[str]] = None,
                   image_size: Optional[int] = None) -> Dict[str, Any]:
    """Turn a released trained model into a traitlens run folder that ``traits``, ``explain`` and ``evaluate`` read.

    ``kind``: ``intr`` (an Imageomics/INTR release checkpoint: ``model``/``optimizer``/``lr_scheduler``/``epoch``/
    ``args``) or ``prompt-cam`` (a Prompt_CAM ``model.pt``: ``{"model_state_dict": ...}``); found from the keys when
    None. ``class_names``: one per class in training order (default ``class_000`` ...). Every tensor of the file is
    loaded (strictly; NaN/inf refused) and the run records where it came from. Returns ``{"run_dir", "method",
    "backbone", "num_classes", "tensors", "dropped"}``.
    """
    from pathlib import Path

    from traitlens.backbones import identify, read_checkpoint
    from traitlens.backbones.reading import check_finite
    from traitlens.engine.config import load_config

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    ck = read_checkpoint(path)
    check_finite(ck.state, path)
    fmt = identify(ck)
    found = fmt.name if fmt.name in IMPORT_KINDS else None
    kind = kind or found
    if kind not in IMPORT_KINDS or found != kind:
        raise UserError(f"{path} is {fmt.label}, not {'an INTR release checkpoint or a Prompt-CAM model.pt' if kind is None else kind}"
                        + (f": {fmt.hint}" if fmt.hint and fmt.role != "model" else ""))
    dropped: Dict[str, str] = {}
    if kind == "intr":
        state = intr.intr_release_state(ck.state)
        num_classes = int(state["query_embed.weight"].shape[0])
        args = ck.container.get("args") if isinstance(ck.container, dict) else None
        preset = dict(intr.TRAINING_PRESETS["detr-r50"])
        options = {**preset.pop("method_options"), **intr.release_config(args)}
        values = {**preset, "method_options": options}
        for key in ("optimizer", "lr_scheduler"):
            if isinstance(ck.container, dict) and key in ck.container:
                dropped[key] = "training state (optimizer / scheduler), not weights"
    else:
        state, mode = prompt_cam.reference_state(ck.state)
        num_classes = int(state["prompts.tokens"].shape[1])
        backbone, overrides = _prompt_cam_backbone(ck.state)
        values = {**{k: v for k, v in prompt_cam.TRAINING_PRESETS["dinov2"].items() if k != "backbone"},
                  "backbone": backbone, "backbone_options": overrides,
                  "method_options": {"mode": mode, "normalization": "inception", "prompt_dropout": 0.0}}
    if image_size is not None:
        values["image_size"] = int(image_size)
    values["pretrained"] = False
    config = load_config(None, **values)
    model, _ = build_model(config, num_classes, load_weights=False)
    own = model.state_dict()
    extra = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if extra or missing or bad:
        first = (bad + [f"{k} not in the model" for k in extra] + [f"{k} not in the file" for k in missing])[0]
        raise UserError(f"{path} ({fmt.label}) does not fit traitlens's {kind} with {config.backbone}: "
                        f"{len(bad)} shapes differ, {len(extra)} tensors unused, {len(missing)} missing (e.g. {first})")
    model.load_state_dict(state, strict=False)
    names = _class_names(class_names, num_classes, path)
    epoch = ck.container.get("epoch") if isinstance(ck.container, dict) else None
    meta = {"method": kind, "class_names": names, "num_classes": num_classes, "config": config.to_dict(),
            "metrics": {}, "epoch": epoch if isinstance(epoch, int) else None, "complete": True,
            "imported_from": {"path": str(path), "format": fmt.name, "label": fmt.label, "tensors": len(ck.state),
                              "dropped": dropped}}
    run_dir = checkpoint.save_checkpoint(out, model, meta)
    return {"run_dir": str(run_dir), "method": kind, "backbone": config.backbone, "num_classes": num_classes,
            "tensors": len(ck.state), "dropped": dropped}
