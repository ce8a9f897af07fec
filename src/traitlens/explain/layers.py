"""Where an explanation looks: the hooked layer and how its output becomes a B×C×h×w map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from traitlens.errors import UserError


@dataclass
class LayerSpec:
    """Where to explain: the module whose output is hooked and how that output becomes B×C×h×w.

    ``to_map(activation, height, width)`` turns the hooked output (B×C×h×w, or B×N×D tokens) of an
    input of height×width pixels into a B×C×h×w map, dropping every prefix token.
    """

    module: nn.Module
    to_map: Callable[[torch.Tensor, int, int], torch.Tensor]
    name: str = ""


def resolve_layer(model: nn.Module, target_layer=None) -> LayerSpec:
    """The explanation layer: the backbone layout's default (CNN last stage, ViT last block's norm1),
    a dotted module path, a module, or a ready :class:`LayerSpec`."""
    if isinstance(target_layer, LayerSpec):
        return target_layer
    lay = model_layout(model)
    if target_layer is None:
        if lay is None:
            raise UserError(f"cannot choose a target layer for {type(model).__name__} automatically; "
                            "pass target_layer='<module path>'")
        target_layer = lay.explain_layer
    if isinstance(target_layer, str):
        try:
            module = model.get_submodule(target_layer)
        except AttributeError as err:
            raise UserError(f"model {type(model).__name__} has no layer '{target_layer}'") from err
        name = target_layer
    elif isinstance(target_layer, nn.Module):
        module = target_layer
        name = next((n for n, m in model.named_modules() if m is module), type(module).__name__)
    else:
        raise UserError(f"target_layer must be a module path or a module, not {type(target_layer).__name__}")

    def to_map(act: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if act.dim() == 4:
            return act
        if act.dim() == 3 and lay is not None:
            return lay.tokens_to_map(act, height, width)
        raise UserError(f"layer '{name}' outputs shape {tuple(act.shape)}; expected B×C×h×w or ViT tokens")

    return LayerSpec(module, to_map, name)


def model_layout(model: nn.Module):
    try:
        from traitlens.backbones import layout
    except ImportError:  # the backbones package is optional for models that bring a LayerSpec
        return None
    try:
        return layout(model)
    except UserError:
        return None
