"""The published checkpoint formats traitlens knows, told apart by their keys, and their conversion to timm.

:func:`identify` names the format of a :class:`~traitlens.backbones.reading.CheckpointFile` (a
:class:`Format`: what it is, which presets it fits, whether it is a backbone at all) and :func:`to_timm`
turns a backbone format into the timm model's keys, listing every file tensor it leaves out and why
(``dropped``: the text tower of a CLIP file, DINOv2's mask token, a DINO checkpoint's student and projection
head). Trained models of the papers (Prompt-CAM ``model.pt``, INTR release checkpoints) and segmenters (SAM 2)
are recognised so that loading them as a backbone fails with a line saying what to do instead.

The formats and their key names were checked against layouts recorded from the publishers' code
(facebookresearch/dino, dinov2, detr; openai/CLIP; mlfoundations/open_clip; transformers; Imageomics/INTR,
Prompt_CAM, SST).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from traitlens.backbones.reading import CheckpointFile

TEXT_TOWER = "text tower of the image-text model (traitlens uses the image tower)"
PROJECTION = "image-text projection (kept as the head with num_classes=512)"


@dataclass(frozen=True)
class Format:
    """A checkpoint format: ``name`` (stable id, recorded in model.json), ``label`` (for people), ``presets``
    (the traitlens presets it fits), ``role`` (backbone | model | segmenter) and, for what is not a backbone,
    ``hint`` (what to do with it instead)."""

    name: str
    label: str
    presets: Tuple[str, ...] = ()
    role: str = "backbone"
    hint: str = ""


@dataclass
class Geometry:
    """The ViT shape a file describes (None where it does not say)."""

    patch: Optional[int] = None
    dim: Optional[int] = None
    depth: Optional[int] = None
    registers: int = 0
    layer_scale: bool = False

    def describe(self) -> str:
        parts = [f"patch {self.patch}" if self.patch else "", f"width {self.dim}" if self.dim else "",
                 f"{self.depth} blocks" if self.depth else "", f"{self.registers} registers" if self.registers else "",
                 "layer scale" if self.layer_scale else ""]
        return ", ".join(p for p in parts if p)


def _has(state, *prefixes) -> bool:
    return any(k.startswith(prefixes) for k in state)


def _depth(state, pattern: str) -> Optional[int]:
    ids = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(ids) + 1 if ids else None


def identify(ck: CheckpointFile) -> Format:
    """The format of ``ck`` from its keys (and container)."""
    s, top = ck.state, set(ck.top_keys)
    if "vpt.prompt_embeddings" in s:
        return Format("prompt-cam", "a trained Prompt-CAM model (model.pt)", role="model",
                      hint="turn it into a traitlens run folder with: traitlens import prompt-cam FILE --out RUN")
    if "presence_vector.weight" in s and "query_embed.weight" in s:
        return Format("intr", "an INTR release checkpoint", role="model",
                      hint="turn it into a traitlens run folder with: traitlens import intr FILE --out RUN")
    if "query_embed.weight" in s and _has(s, "class_embed.", "bbox_embed."):
        return Format("detr", "a DETR detection checkpoint", role="model",
                      hint="start INTR from it with --method intr --set method_options.detr=FILE")
    if _has(s, "image_encoder.trunk."):
        return Format("sam2", "a SAM 2 checkpoint (original .pt)", role="segmenter",
                      hint="use it with: traitlens segment --backend sam2 --checkpoint FILE")
    if _has(s, "vision_encoder.backbone.") and _has(s, "mask_decoder."):
        return Format("sam2-hf", "a SAM 2 checkpoint (transformers)", role="segmenter",
                      hint="use its folder with: traitlens segment --backend sam2 --checkpoint FOLDER")
    if "visual.class_embedding" in s:
        if ck.kind == "torchscript":
            return Format("openai-clip", "an OpenAI CLIP TorchScript archive", ("clip-vitb16",))
        return Format("open-clip", "an open_clip CLIP model (the format BioCLIP publishes)",
                      ("clip-vitb16", "bioclip-vitb16"))
    if "vision_model.embeddings.class_embedding" in s:
        return Format("hf-clip", "a transformers CLIPModel", ("clip-vitb16", "bioclip-vitb16"))
    inner = _dino_teacher(ck)
    if inner is not None:
        base = identify(CheckpointFile(ck.path, ck.kind, inner, inner))
        return Format("dino-training", f"a DINO training checkpoint (its teacher: {base.label})", base.presets)
    if "register_tokens" in s:
        return Format("dinov2-reg", "DINOv2 with registers (original .pth)", ("dinov2-vitb14-reg",))
    if "mask_token" in s and _has(s, "blocks."):
        return Format("dinov2", "DINOv2 (original .pth)", ("dinov2-vitb14",))
    run = _traitlens_run(ck)
    if run is not None:
        return run
    g = geometry(s)
    if g.patch is not None and g.layer_scale:
        if g.registers:
            return Format("timm-dinov2-reg", "DINOv2 with registers (timm format)", ("dinov2-vitb14-reg",))
        return Format("timm-dinov2", "DINOv2 (timm format)", ("dinov2-vitb14",))
    if g.patch == 16 and g.dim == 768 and "cls_token" in s and not _has(s, "norm_pre."):
        return Format("vit-b16", "a ViT-B/16 (DINO release or timm format)", ("dino-vitb16",))
    if g.patch is not None:
        return Format("vit", f"a ViT ({g.describe()})")
    return Format("state-dict", "a plain state dict")


def _traitlens_run(ck: CheckpointFile) -> Optional[Format]:
    """A traitlens run folder's weights (model.json beside them), named by its method and backbone."""
    import json

    sidecar = ck.path.with_name("model.json")
    if ck.kind != "safetensors" or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != "traitlens-checkpoint":
        return None
    spec = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    name, method = str(spec.get("name", "?")), str(meta.get("method", "?"))
    plain = method in ("linear-probe", "finetune")
    return Format("traitlens", f"a traitlens {method} run on {name}", (name,) if plain else (),
                  hint="" if plain else "its backbone is inside a larger model; give --allow-partial to take only it")


def _dino_teacher(ck: CheckpointFile) -> Optional[Dict[str, torch.Tensor]]:
    """A DINO training checkpoint's teacher backbone (``backbone.`` stripped), or None for another format."""
    if ck.nest[:1] != ["teacher"] or not _has(ck.state, "backbone."):
        return None
    return {k[len("backbone."):]: v for k, v in ck.state.items() if k.startswith("backbone.")}


def geometry(state: Dict[str, torch.Tensor]) -> Geometry:
    """The ViT geometry of a state dict in DINO/DINOv2/timm, open_clip or transformers key style."""
    for key in ("patch_embed.proj.weight", "visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"):
        if key in state and state[key].dim() == 4:
            w = state[key]
            pattern = {"patch_embed.proj.weight": r"blocks\.(\d+)\.",
                       "visual.conv1.weight": r"visual\.transformer\.resblocks\.(\d+)\.",
                       "vision_model.embeddings.patch_embedding.weight": r"vision_model\.encoder\.layers\.(\d+)\."}[key]
            reg = state.get("register_tokens", state.get("reg_token"))
            return Geometry(patch=int(w.shape[-1]), dim=int(w.shape[0]), depth=_depth(state, pattern),
                            registers=int(reg.shape[1]) if reg is not None and reg.dim() == 3 else 0,
                            layer_scale=any(k.endswith("ls1.gamma") for k in state))
    return Geometry()


def model_geometry(model: nn.Module) -> Geometry:
    """The ViT geometry of a timm VisionTransformer (an empty Geometry for other models)."""
    pe = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if pe is None or blocks is None or not hasattr(pe, "proj"):
        return Geometry()
    p = pe.patch_size
    ls = getattr(blocks[0], "ls1", None)
    return Geometry(patch=int(p[-1] if isinstance(p, (tuple, list)) else p), dim=int(pe.proj.weight.shape[0]),
                    depth=len(blocks), registers=int(getattr(model, "num_reg_tokens", 0) or 0),
                    layer_scale=ls is not None and hasattr(ls, "gamma"))


def geometry_conflict(file: Geometry, model: Geometry) -> List[str]:
    """What differs between the file's and the model's ViT geometry (empty when they agree or are unknown)."""
    if file.patch is None or model.patch is None:
        return []
    out = []
    for name in ("patch", "dim", "depth", "registers"):
        a, b = getattr(file, name), getattr(model, name)
        if a is not None and b is not None and a != b:
            out.append(f"{name} {a} in the file vs {b} in the model")
    if file.layer_scale and not model.layer_scale:
        out.append("the file has layer scales the model lacks")
    return out


# ---------------------------------------------------------------------------------------------
# Conversion to timm keys.


def _timm_filter(model: nn.Module):
    """timm's checkpoint converter for this architecture (open_clip / DINOv2 keys, pos-embed resampling)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _hf_clip_to_timm(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """transformers ``CLIPModel`` keys → timm ``vit_*_clip_*`` keys (q, k, v joined into qkv)."""
    out, dropped = {}, {}
    v = "vision_model."
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for k, t in state.items():
        if not k.startswith(v):
            dropped[k] = PROJECTION if k == "visual_projection.weight" else TEXT_TOWER
            continue
        rest = k[len(v):]
        if rest == "embeddings.class_embedding":
            out["cls_token"] = t.reshape(1, 1, -1)
        elif rest == "embeddings.patch_embedding.weight":
            out["patch_embed.proj.weight"] = t
        elif rest == "embeddings.position_embedding.weight":
            out["pos_embed"] = t[None]
        elif rest == "embeddings.position_ids":
            dropped[k] = "position index buffer (0..N-1, rebuilt by the model)"
        elif rest.startswith(("pre_layrnorm.", "post_layernorm.")):
            out[("norm_pre." if rest.startswith("pre") else "norm.") + rest.split(".", 1)[1]] = t
        else:
            m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if m is None:
                out[k] = t  # left as it is: reported as unexpected
                continue
            i, name, p = m.groups()
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if name == "self_attn.q_proj":
                    parts = [state.get(f"{v}encoder.layers.{i}.self_attn.{x}_proj.{p}") for x in "qkv"]
                    if all(x is not None for x in parts):
                        out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, 0)
            elif name in names:
                out[f"blocks.{i}.{names[name]}.{p}"] = t
            else:
                out[k] = t
    if "visual_projection.weight" in state:
        proj = state["visual_projection.weight"]  # D_out×D, already Linear's layout
        out["head.weight"], out["head.bias"] = proj, torch.zeros(proj.shape[0], dtype=proj.dtype)
        dropped.pop("visual_projection.weight", None)
    return out, dropped


def to_timm(fmt: Format, ck: CheckpointFile, model: nn.Module
            ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str], Dict[str, Tuple[int, ...]]]:
    """``(state in the model's keys, {file key: why it was left out}, {model key: shape in the file})``.

    The last dict gives the shapes of tensors before timm's resampling (``pos_embed``, ``patch_embed``), so the
    caller can tell what was resampled.
    """
    state = dict(ck.state)
    dropped: Dict[str, str] = {}
    before: Dict[str, Tuple[int, ...]] = {}
    if fmt.name == "dino-training":
        for k in state:
            if not k.startswith("backbone."):
                dropped[f"teacher.{k}"] = "DINO projection head (self-supervision only)"
        for name, other in ck.extra.items():
            for k in other:
                dropped[f"{name}.{k}"] = ("student network (DINO evaluates the teacher)" if name == "student"
                                          else "training state")
        state = _dino_teacher(ck) or {}
    if fmt.name in ("open-clip", "openai-clip"):
        for k in list(state):
            if not k.startswith("visual."):
                dropped[k] = TEXT_TOWER
                del state[k]
    if "mask_token" in state:
        dropped["mask_token"] = "DINOv2's masked-image-modelling token (training only)"
    if fmt.name == "hf-clip":
        state, more = _hf_clip_to_timm(state)
        dropped.update(more)
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key in state:
            before[key] = tuple(state[key].shape)
    if fmt.name in ("open-clip", "openai-clip"):
        before["pos_embed"] = (1,) + tuple(state["visual.positional_embedding"].shape)
        before["patch_embed.proj.weight"] = tuple(state["visual.conv1.weight"].shape)
    fn = _timm_filter(model)
    if fn is not None and fmt.name != "state-dict":
        try:
            state = dict(fn(dict(state), model))
        except Exception:  # noqa: BLE001 - only reached for a file of another token layout (a partial load)
            # timm cannot resample this position embedding to the model's token layout (registers vs none):
            # convert the rest, and leave the model's own position embedding (reported as missing).
            if "pos_embed" in state:
                dropped["pos_embed"] = "position embedding of another token layout (not resampled)"
            state = {("reg_token" if k == "register_tokens" else k): v for k, v in state.items()
                     if k not in ("pos_embed", "mask_token")}
    return state, dropped, before


_STRIP_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "teacher.", "student.", "_orig_mod.")


def candidates(state: Dict[str, torch.Tensor], model: nn.Module) -> List[Dict[str, torch.Tensor]]:
    """Ways to read a plain state dict as this model's keys: as it is, prefixes stripped, timm's converter."""
    todo = [state]
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
            todo.append(stripped)
            if prefix == "module.":  # DDP wrapping around another nesting
                for inner in _STRIP_PREFIXES[1:]:
                    if any(k.startswith(inner) for k in stripped):
                        todo.append({k[len(inner):] if k.startswith(inner) else k: v for k, v in stripped.items()})
    fn = _timm_filter(model)
    seen = []
    for sd in todo:
        seen.append(sd)
        if fn is not None:
            try:
                converted = fn(dict(sd), model)
            except Exception:  # a converter that does not apply to this dict is simply not a candidate
                converted = None
            if isinstance(converted, dict) and converted:
                seen.append(dict(converted))
    return seen
