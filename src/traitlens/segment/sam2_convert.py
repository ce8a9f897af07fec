"""SAM 2's original ``.pt`` checkpoints (2.0 and 2.1, tiny … large) as a transformers ``Sam2VideoModel``, in process.

The file SST's README tells users to download (``sam2_hiera_tiny.pt``: ``{"model": state_dict}`` in
facebookresearch/sam2's names) is read with ``torch.load(weights_only=True)``, its keys are renamed to the
transformers layout (the renaming of transformers' ``convert_sam2_video_to_hf``, written here as rules), and the
model's config is read off the tensors: the Hiera stage sizes from the blocks, the window embedding from
``pos_embed``, 2.1's extra tensors (``no_obj_embed_spatial``, ``obj_ptr_tpos_proj``) switching on its two
options. What the tensors cannot say (attention heads per stage, the global-attention blocks) is the published
value of the size they identify. No network, no converter script.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from traitlens.errors import UserError

# Plain substring renames, applied in order (original name → transformers name).
_RENAMES: List[Tuple[str, str]] = [
    ("sam_prompt_encoder.", "prompt_encoder."), ("sam_mask_decoder.", "mask_decoder."),
    ("image_encoder.neck.", "vision_encoder.neck."), ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    ("mask_downscaling.0.", "mask_embed.conv1."), ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."), ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("memory_encoder.fuser.", "memory_encoder.memory_fuser."), (".dwconv.", ".depthwise_conv."),
    (".pwconv1.", ".pointwise_conv1."), (".pwconv2.", ".pointwise_conv2."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("no_mem_embed", "no_memory_embedding"), ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("no_obj_ptr", "no_object_pointer"), ("obj_ptr_proj.", "object_pointer_proj."),
    (".norm_final_attn.", ".layer_norm_final_attn."), (".out_proj.", ".o_proj."),
]
# Three-layer MLPs: layers 0, 1, 2 → proj_in, layers.0, proj_out.
_MLP3 = re.compile(r"(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+|object_pointer_proj)"
                   r"\.layers\.(\d)\.")
# Two-layer MLPs (Hiera blocks, the mask decoder's transformer): layers 0, 1 → proj_in, proj_out.
_MLP2 = re.compile(r"(vision_encoder\.backbone\.blocks\.\d+\.mlp|mask_decoder\.transformer\.layers\.\d+\.mlp)"
                   r"\.layers\.(\d)\.")
_NORMS = re.compile(r"\.norm(\d?)\.")


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    key = _MLP3.sub(lambda m: f"{m.group(1)}.{['proj_in', 'layers.0', 'proj_out'][int(m.group(2))]}.", key)
    key = _MLP2.sub(lambda m: f"{m.group(1)}.{['proj_in', 'proj_out'][int(m.group(2))]}.", key)
    key = re.sub(r"(vision_encoder\.neck\.convs\.\d+)\.conv\.", r"\1.", key)
    m = re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.+)$", key)
    if m:  # Sequential(conv, norm, act) × 4, then the final 1×1 conv at index 12
        i, rest = int(m.group(1)), m.group(2)
        part = "final_conv" if i == 12 else f"layers.{i // 3}." + ("conv" if i % 3 == 0 else "layer_norm")
        key = f"memory_encoder.mask_downsampler.{part}.{rest}"
    if key.startswith("memory_encoder.memory_fuser.") and key.endswith(".gamma"):
        key = key[: -len("gamma")] + "scale"
    return _NORMS.sub(lambda m: f".layer_norm{m.group(1)}.", key)


def convert_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """facebookresearch/sam2 names → transformers ``Sam2VideoModel`` names; every tensor kept.

    The four point embeddings (1×D each) become one 4×D table, and the prompt encoder's Gaussian position
    matrix is shared with the image embedding (transformers holds it twice).
    """
    if not any(k.startswith("image_encoder.trunk.") for k in state):
        raise UserError("not an original SAM 2 checkpoint: no image_encoder.trunk.* tensors")
    out = {_rename(k): v for k, v in state.items()}
    points = [out.pop(f"prompt_encoder.point_embeddings.{i}.weight", None) for i in range(4)]
    if any(p is None for p in points):
        raise UserError("SAM 2 checkpoint without its four point embeddings (sam_prompt_encoder.point_embeddings)")
    out["prompt_encoder.point_embed.weight"] = torch.cat(points, 0)
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


# Published Hiera sizes (sam2/configs/sam2*/sam2*_hiera_{t,s,b+,l}.yaml): what the tensors do not tell.
_SIZES = {
    (96, (1, 2, 7, 2)): dict(name="tiny", heads=[1, 2, 4, 8], global_blocks=[5, 7, 9], windows=[8, 4, 14, 7]),
    (96, (1, 2, 11, 2)): dict(name="small", heads=[1, 2, 4, 8], global_blocks=[7, 10, 13], windows=[8, 4, 14, 7]),
    (112, (2, 3, 16, 3)): dict(name="base_plus", heads=[2, 4, 8, 16], global_blocks=[12, 16, 20],
                               windows=[8, 4, 14, 7]),
    (144, (2, 6, 36, 4)): dict(name="large", heads=[2, 4, 8, 16], global_blocks=[23, 33, 43], windows=[8, 4, 16, 8]),
}


def hiera_geometry(state: Dict[str, torch.Tensor]) -> Tuple[int, List[int], List[int]]:
    """(hidden size, blocks per stage, width per stage) of the original checkpoint's Hiera trunk."""
    p = "image_encoder.trunk."
    hidden = int(state[p + "patch_embed.proj.weight"].shape[0])
    ids = sorted({int(m.group(1)) for k in state for m in [re.match(re.escape(p) + r"blocks\.(\d+)\.", k)] if m})
    widths = [int(state[f"{p}blocks.{i}.mlp.layers.0.weight"].shape[1]) for i in ids]
    starts = [i for i in ids if f"{p}blocks.{i}.proj.weight" in state]  # a stage opens with a projecting block
    bounds = [0] + starts + [len(ids)]
    blocks = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    dims = [widths[a] for a in bounds[:-1]]
    return hidden, blocks, dims


def config_for(state: Dict[str, torch.Tensor]):
    """The ``Sam2VideoConfig`` of an original checkpoint (size from its tensors; 2.0 or 2.1 from its keys)."""
    from transformers import (Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoMaskDecoderConfig,
                              Sam2VideoPromptEncoderConfig, Sam2VisionConfig)

    hidden, blocks, dims = hiera_geometry(state)
    size = _SIZES.get((hidden, tuple(blocks)))
    if size is None:
        raise UserError(f"SAM 2 checkpoint with a Hiera trunk of width {hidden} and blocks {blocks}: not one of the "
                        "published sizes (tiny, small, base_plus, large)")
    background = tuple(int(s) for s in state["image_encoder.trunk.pos_embed"].shape[-2:])
    backbone = Sam2HieraDetConfig(hidden_size=hidden, embed_dim_per_stage=dims, blocks_per_stage=blocks,
                                  num_attention_heads_per_stage=size["heads"], global_attention_blocks=size["global_blocks"],
                                  window_size_per_stage=size["windows"],
                                  window_positional_embedding_background_size=list(background))
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=list(reversed(dims)))
    v21 = "no_obj_embed_spatial" in state or any(k.startswith("obj_ptr_tpos_proj.") for k in state)
    return Sam2VideoConfig(vision_config=vision, prompt_encoder_config=Sam2VideoPromptEncoderConfig(),
                           mask_decoder_config=Sam2VideoMaskDecoderConfig(),
                           enable_temporal_pos_encoding_for_object_pointers=v21,
                           enable_occlusion_spatial_embedding=v21), size["name"], ("2.1" if v21 else "2.0")


def read_original(path) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of an original SAM 2 ``.pt`` (read without unpickling objects; NaN/inf refused)."""
    from traitlens.backbones.reading import check_finite, read_checkpoint

    ck = read_checkpoint(Path(path))
    if not any(k.startswith("image_encoder.trunk.") for k in ck.state):
        raise UserError(f"{path} is not a SAM 2 checkpoint (no image_encoder.trunk.* tensors): give sam2_hiera_*.pt / "
                        "sam2.1_hiera_*.pt or a transformers folder with config.json and model.safetensors")
    check_finite(ck.state, path)
    return ck.state


def load_original(path, dtype: torch.dtype = torch.float32):
    """An original SAM 2 checkpoint file as an eval-mode ``Sam2VideoModel`` (every tensor loaded, strictly).

    The model carries ``traitlens_source = {"path", "size", "version", "tensors"}``.
    """
    from transformers import Sam2VideoModel

    state = read_original(path)
    config, size, version = config_for(state)
    converted = convert_state(state)
    model = Sam2VideoModel(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    extra = sorted(set(converted) - set(own))
    bad = [k for k in converted if k in own and tuple(own[k].shape) != tuple(converted[k].shape)]
    if missing or extra or bad:
        first = (bad + extra + missing)[0]
        raise UserError(f"SAM 2 checkpoint {path} ({size}, {version}) does not convert cleanly: {len(missing)} missing, "
                        f"{len(extra)} unused, {len(bad)} of another shape (e.g. {first})")
    model.load_state_dict(converted, strict=True)
    model.traitlens_source = {"path": str(path), "size": size, "version": version, "tensors": len(state)}
    return model.to(dtype).eval()
