"""Backbones: one factory over timm that knows each model's token layout.

>>> from traitlens.backbones import create, layout
>>> model = create("tiny-vit", num_classes=10)          # a plain timm model
>>> lay = layout(model)                                   # TokenLayout: prefix tokens, grid, explain layer
>>> lay.grid(64, 96)
(8, 12)

``create`` never downloads anything unless ``pretrained=True``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from traitlens.backbones.layout import TokenLayout, data_config, find_backbone, get_module, layout
from traitlens.backbones.embedded import find_embedded
from traitlens.backbones.presets import PRESETS, Preset, get_preset
from traitlens.backbones.weights import LoadSummary, load_state_dict, load_weights, read_state_dict, run_folder_spec
from traitlens.backbones.reading import read_checkpoint
from traitlens.backbones.formats import identify
from traitlens.errors import UserError

__all__ = [
    "PRESETS", "Preset", "TokenLayout", "LoadSummary", "create", "create_from_spec", "layout", "data_config",
    "get_module", "find_backbone", "load_weights", "read_state_dict", "load_state_dict", "find_embedded",
    "read_checkpoint", "identify", "FILE_OPTIONS",
]

# timm options that make timm read a file or fetch weights itself. traitlens reads weights only through
# ``weights=`` (safely, every tensor accounted for), so these are refused wherever they come from: the API, a
# YAML config or a model.json sidecar someone else wrote.
FILE_OPTIONS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "cache_dir")


def _check_overrides(name: str, overrides: dict) -> None:
    bad = sorted(k for k in overrides if k in FILE_OPTIONS)
    if bad:
        raise UserError(f"backbone option {bad[0]} is not passed to timm for {name}: give a local weights file as "
                        "weights= (--weights), which traitlens reads without unpickling", option="backbone_options")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _timm_kwargs(preset: Preset | None, overrides: dict) -> tuple[dict, dict]:
    """(kwargs for timm.create_model, pretrained_cfg overlay) for a preset plus user overrides."""
    kwargs = dict(preset.kwargs) if preset else {}
    kwargs.update(overrides)
    overlay: dict[str, Any] = {}
    if preset is not None:
        size = preset.input_size
        if "img_size" in overrides:  # a different resolution for a preset: the data config follows
            s = overrides["img_size"]
            size = (3, s, s) if isinstance(s, int) else (3, int(s[0]), int(s[1]))
        overlay = {"input_size": tuple(size), "mean": tuple(preset.mean), "std": tuple(preset.std),
                   "crop_pct": preset.crop_pct}
    return kwargs, overlay


def _pretrained_error(name: str, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(
        f"could not download pretrained weights for {name}: {first[:200]} (offline?); use local weights instead",
        option="pretrained")


def _download_hub_weights(preset: Preset):
    """Fetch a preset's weights that timm does not publish (BioCLIP) from the Hugging Face hub."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise _pretrained_error(preset.name, err) from err
    last: Exception | None = None
    for filename in preset.hub["files"]:
        try:
            return hf_hub_download(preset.hub["repo"], filename)
        except Exception as err:  # any hub/network failure: try the next file, then report
            last = err
    raise _pretrained_error(preset.name, last or RuntimeError("no weight file"))


def create(name: str | None, num_classes: int = 0, weights=None, pretrained: bool = False, strict: bool = True,
           **overrides) -> nn.Module:
    """A timm model for a traitlens preset or any timm model name.

    ``num_classes=0`` gives a headless backbone (``model(x)`` returns pooled features B×D).
    ``weights``: a local .safetensors / .pth file, or a traitlens run folder / model.json; the load
    summary is at ``model.traitlens_weights``; ``strict=False`` allows a partial load (see
    :mod:`traitlens.backbones.weights`). With a run folder, ``name=None`` takes the backbone
    recorded in its model.json. ``pretrained=True`` downloads the preset's weights (the only case in
    which anything is downloaded). ``overrides`` go to ``timm.create_model`` (e.g. ``img_size=448``,
    ``drop_path_rate=0.1``). The result carries ``model.traitlens_spec`` so a checkpoint can rebuild
    it with :func:`create_from_spec`.
    """
    import timm

    if name is None:
        spec = run_folder_spec(weights) if weights is not None else None
        if spec is None or "name" not in spec:
            raise UserError("no backbone name given and no traitlens run folder to read it from")
        name = spec["name"]
        overrides = {**dict(spec.get("overrides") or {}), **overrides}
    _check_overrides(name, overrides)
    preset = get_preset(name)
    if preset is None and not timm.is_model(name.split(".", 1)[0]):
        raise UserError(f"unknown backbone '{name}': use a traitlens preset ({', '.join(PRESETS)}) or a timm model name")
    if weights is not None and pretrained:
        raise UserError("give either local weights or pretrained weights to download, not both", option="weights")
    kwargs, overlay = _timm_kwargs(preset, overrides)
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    timm_name = preset.timm_name if preset else name
    # Presets whose weights timm does not publish (BioCLIP) are built bare and loaded from their hub repo.
    from_timm_hub = pretrained and not (preset and preset.hub)
    try:
        model = timm.create_model(timm_name, pretrained=from_timm_hub, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise UserError(f"bad option for backbone {name}: {err}") from err
    except Exception as err:
        if from_timm_hub:
            raise _pretrained_error(name, err) from err
        raise
    if pretrained and preset is not None and preset.hub:
        load_weights(model, _download_hub_weights(preset), target=name)
    if weights is not None:
        load_weights(model, weights, strict=strict, target=name)
    model.traitlens_spec = {"name": name, "overrides": _jsonable(overrides), "num_classes": int(num_classes)}
    return model


def create_from_spec(spec: dict, num_classes: int | None = None, weights=None) -> nn.Module:
    """Rebuild a model from its ``traitlens_spec`` (as stored in a checkpoint's model.json)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(f"not a traitlens backbone spec: {spec!r}")
    n = spec.get("num_classes", 0) if num_classes is None else num_classes
    return create(spec["name"], num_classes=n, weights=weights, **dict(spec.get("overrides") or {}))
