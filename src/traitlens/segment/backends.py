"""Build a :class:`Propagator` by name: ``labelprop`` (colour/position or backbone features) or ``sam2``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from traitlens.segment.propagator import BackendOptionError
from traitlens.segment.features import BackboneFeatures, ColourPositionFeatures, ConcatFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions

BACKENDS = ("labelprop", "sam2")
FEATURES = ("colour", "backbone", "backbone+colour")


def colour_features() -> ColourPositionFeatures:
    return ColourPositionFeatures(stride=1)


def build_features(kind: str = "colour", backbone: Union[str, Path, None] = None, device: str = "cpu",
                   backbone_size: Optional[Tuple[int, int]] = None):
    """``colour`` (no weights needed), ``backbone`` (a traitlens checkpoint folder) or ``backbone+colour``."""
    if kind not in FEATURES:
        raise BackendOptionError("features", kind, f"choose one of {', '.join(FEATURES)}")
    if kind == "colour":
        return colour_features()
    if backbone is None:
        raise BackendOptionError("backbone", None, f"the {kind} features need a traitlens checkpoint folder")
    from traitlens.methods import load_model

    try:
        model, _ = load_model(backbone)
    except FileNotFoundError:
        raise BackendOptionError("backbone", backbone, "no checkpoint there") from None
    net = getattr(model, "backbone", model).to(device)
    feats = BackboneFeatures(net, input_size=backbone_size)
    return feats if kind == "backbone" else ConcatFeatures([(feats, 0.5), (colour_features(), 0.5)])


def build_propagator(backend: str = "labelprop", device: Union[str, torch.device] = "cpu",
                     work_size: Union[int, str] = 128, features: str = "colour", backbone=None, local: int = 3,
                     projection: Union[str, Path, None] = None, checkpoint=None, download: bool = False,
                     offload_video: bool = False, offload_state: bool = False, differentiable: bool = False,
                     memory: int = 3, mirror_pairs=(), pose: str = "any"):
    """The backend behind ``traitlens segment``/``retrieve``/``segment finetune``.

    ``work_size``: label propagation's working side in pixels, or ``"auto"``: chosen from the support's
    thinnest trait (:func:`traitlens.segment.support.work_side`, 128-256 px). ``mirror_pairs``: left/right
    label ids that swap in a mirror image. ``pose``: ``"any"`` (any rotation or mirror; SAM 2 then turns each
    query onto the support's pose) or ``"upright"``.
    """
    if backend not in BACKENDS:
        raise BackendOptionError("backend", backend, f"choose one of {', '.join(BACKENDS)}")
    if backend == "sam2":
        from traitlens.segment.sam2 import Sam2Propagator, load_sam2

        model = load_sam2(checkpoint, download=download)
        return Sam2Propagator(model, device=device, offload_video=offload_video, offload_state=offload_state,
                              differentiable=differentiable, pose=pose, mirror_pairs=mirror_pairs)
    feats = build_features(features, backbone, str(device))
    proj = None
    if projection is not None:
        proj = load_projection(projection)
    elif differentiable:
        from traitlens.segment.finetune import FeatureProjection

        dim = feats(torch.zeros(1, 3, 16, 16)).shape[1]
        proj = FeatureProjection(dim)
    if proj is not None:
        proj = proj.to(device)
    from traitlens.segment.support import WORK_BOUNDS

    auto = isinstance(work_size, str)
    if auto and work_size != "auto":
        raise BackendOptionError("work_size", work_size, "give a side in pixels or 'auto'")
    side = WORK_BOUNDS[0] if auto else int(work_size)
    options = LabelPropOptions(work_size=(side, side), align=True, local=local, memory=memory, pose=pose,
                               mirror_pairs=tuple(mirror_pairs), auto_work=WORK_BOUNDS if auto else None)
    return LabelPropagation(feats, options, projection=proj, device=device)


def load_projection(path: Union[str, Path]):
    """A :class:`~traitlens.segment.finetune.FeatureProjection` saved by ``traitlens segment finetune``."""
    from safetensors.torch import load_file

    from traitlens.segment.finetune import FeatureProjection

    path = Path(path)
    if path.is_dir():
        path = path / "projection.safetensors"
    if not path.exists():
        raise BackendOptionError("projection", path, "file not found")
    state = load_file(str(path))
    weight = state["proj.weight"]
    proj = FeatureProjection(weight.shape[1], weight.shape[0])
    proj.load_state_dict(state)
    return proj.eval()
