"""Files in the published checkpoint formats, built from the layouts recorded from the publishers' code.

``../shared/data/real-releases/checkpoint-layouts/<file>.layout.json`` holds ``{"layout": {key: [shape, dtype]}}``
(nested for containers); :func:`build` gives the same structure with random tensors of exactly those names,
shapes and dtypes, ``argparse.Namespace`` where the publisher stored one. Tests skip when the folder is absent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

LAYOUTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-releases" / "checkpoint-layouts"
DTYPES = {"float32": torch.float32, "F32": torch.float32, "float16": torch.float16, "F16": torch.float16,
          "bfloat16": torch.bfloat16, "BF16": torch.bfloat16, "int64": torch.int64, "I64": torch.int64}


def layout(name: str) -> dict:
    path = LAYOUTS / f"{name}.layout.json"
    if not path.is_file():
        pytest.skip(f"checkpoint layouts not available ({path})")
    return json.loads(path.read_text())["layout"]


def config(name: str) -> dict:
    path = LAYOUTS / name
    if not path.is_file():
        pytest.skip(f"checkpoint layouts not available ({path})")
    return json.loads(path.read_text())


def _is_tensor(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], list) and isinstance(v[1], str)


def materialise(spec, gen: torch.Generator):
    """The layout ``spec`` with random tensors, Namespaces and placeholder scalars."""
    if _is_tensor(spec):
        shape, dtype = spec
        dt = DTYPES[dtype]
        if dt.is_floating_point:
            return torch.randn(shape, generator=gen).to(dt)
        return torch.randint(0, 10, shape, generator=gen, dtype=dt)
    if isinstance(spec, dict):
        return {k: materialise(v, gen) for k, v in spec.items()}
    if spec == "<argparse.Namespace>":
        return argparse.Namespace(lr=5e-5, lr_backbone=1e-5, epochs=140, output_dir="output", dataset="cub")
    if spec == "<builtins.int>":
        return 7
    if spec == "<builtins.list>":
        return []
    raise ValueError(f"unknown layout entry {spec!r}")


def build(name: str, seed: int = 0):
    """The checkpoint object of layout ``name`` (e.g. ``"dinov2_vitb14_pretrain.pth"``) with random values."""
    return materialise(layout(name), torch.Generator().manual_seed(seed))


_BLOCK = __import__("re").compile(r"(?:^|\.)(?:blocks|resblocks|layers)\.(\d+)\.")


def truncate(spec, depth: int = 2, prompts: bool = True):
    """The layout with the transformer blocks past ``depth`` removed (names and per-tensor shapes unchanged), so
    a test builds a 2-block ViT-B in a second instead of a 12-block one. Prompt-CAM's per-layer prompts are cut to
    ``depth`` layers with them. Only ViT blocks are cut (keys ``blocks.N.`` / ``resblocks.N.`` / ``layers.N.`` of
    the image and text towers)."""
    if isinstance(spec, dict) and not _is_tensor(spec):
        out = {}
        for k, v in spec.items():
            m = _BLOCK.search(k)
            if m and int(m.group(1)) >= depth and not k.startswith(("memory", "sam_", "mask")):
                continue
            if prompts and k == "vpt.prompt_embeddings" and _is_tensor(v):
                v = [[depth] + v[0][1:], v[1]]
            out[k] = truncate(v, depth, prompts)
        return out
    return spec


# Tensors a backbone load leaves out (text towers' token tables, DINO's 65 536-way projection head): cut to 8 rows
# in the fast tests, so building them does not dominate; their names stay, and the full-depth tests keep them whole.
LARGE_DROPPED = ("token_embedding.weight", "head.last_layer.", "dino_loss.", "center",
                 "text_model.embeddings.token_embedding.weight")


def _shrink(spec, path=""):
    if _is_tensor(spec):
        shape, dtype = spec
        if any(s in path for s in LARGE_DROPPED) and shape and shape[0] > 8:
            return [[8] + shape[1:], dtype]
        if path.endswith("center") and len(shape) == 2:
            return [[shape[0], 8], dtype]
        return spec
    if isinstance(spec, dict):
        return {k: _shrink(v, f"{path}.{k}" if path else k) for k, v in spec.items()}
    return spec


def build_truncated(name: str, depth: int = 2, seed: int = 0):
    """A 2-block file of layout ``name`` (see :func:`truncate`; large tensors that are dropped cut to 8 rows)."""
    return materialise(_shrink(truncate(layout(name), depth)), torch.Generator().manual_seed(seed))
