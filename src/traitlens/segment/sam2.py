"""SAM 2 as a :class:`Propagator`, through the Hugging Face ``transformers`` video model.

Frames stay in memory (the streaming API of ``Sam2VideoModel``: no JPEG folder). Each trait is one SAM 2
object; the support's label map gives one mask input per trait on the support frame(s). A query is
streamed as the next frame; its prediction is *forgotten* again unless the tracker adds it to the memory
(:meth:`Sam2Propagator.add_memory`), so ``pairwise`` keeps the memory at [support] and ``chain`` keeps
SAM 2's own memory of recent frames. Overlapping traits are resolved by the highest probability.

Rotation and mirror images (``pose="any"``, the default): SAM 2's memory attention matches a query with
the support at corresponding positions, so a query photographed upside down would be matched head to tail.
Each query is therefore first registered onto the first support (colour label propagation's pose-free
registration on a 64 px grid, :meth:`~traitlens.segment.labelprop.LabelPropagation.poses`), turned onto
the support's pose before it enters the pseudo-video, and its prediction turned back (``mirror_pairs``
swap when the registration is a mirror image).

Install with ``pip install traitlens[sam2]`` (it needs ``transformers`` ≥ 4.56). Weights come from a local
folder (``save_pretrained`` layout) or, only when asked for with ``download=True``, from the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from traitlens.errors import UserError
from traitlens.segment.align import invert, is_mirrored, swap_pairs, warp
from traitlens.segment.propagator import BackendOptionError, Propagator, one_hot

# SAM 2 normalises frames with the ImageNet statistics.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_CHECKPOINT = "facebook/sam2.1-hiera-tiny"


def _transformers_sam2():
    try:
        from transformers import Sam2VideoModel
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("the SAM 2 backend needs transformers >= 4.56: pip install 'traitlens[sam2]'") from exc
    return Sam2VideoModel, Sam2VideoInferenceSession


def load_sam2(checkpoint: Union[str, Path, None] = None, download: bool = False,
              dtype: torch.dtype = torch.float32):
    """A ``Sam2VideoModel`` from a local folder, or from the hub when ``download=True``.

    ``checkpoint``: an original SAM 2 ``.pt`` (``sam2_hiera_tiny.pt``, ``sam2.1_hiera_large.pt``, ...: converted in
    process, :mod:`traitlens.segment.sam2_convert`), a folder written by ``save_pretrained`` (config.json +
    model.safetensors), or a hub id
    (default ``facebook/sam2.1-hiera-tiny``) that is only fetched with ``download=True``.
    """
    Sam2VideoModel, _ = _transformers_sam2()
    name = str(checkpoint or DEFAULT_CHECKPOINT)
    if Path(name).is_dir():
        return Sam2VideoModel.from_pretrained(name, local_files_only=True, dtype=dtype).eval()
    if Path(name).is_file() and Path(name).suffix.lower() in (".pt", ".pth", ".ckpt"):
        # An original facebookresearch/sam2 checkpoint (2.0 / 2.1, any size): converted here, in process.
        from traitlens.segment.sam2_convert import load_original

        return load_original(name, dtype=dtype)
    if Path(name).exists():
        raise BackendOptionError("checkpoint", name, "give an original SAM 2 .pt file, or the folder that holds "
                                 "config.json and model.safetensors")
    if not download:
        raise BackendOptionError("download", None, f"SAM 2 checkpoint {name!r} is not a local folder; it is fetched "
                                 "from the hub only when downloading is allowed")
    return Sam2VideoModel.from_pretrained(name, dtype=dtype).eval()


def tiny_config(image_size: int = 64):
    """A small random-weight ``Sam2VideoConfig`` (tests, smoke runs): about 1 M parameters.

    Two constraints of the transformers implementation shape it: the memory attention reads 64-channel
    memories, and object pointers are split into ``hidden/64`` tokens, so hidden sizes are 128.
    """
    from transformers import (Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoMaskDecoderConfig,
                              Sam2VideoPromptEncoderConfig, Sam2VisionConfig)

    s, h = int(image_size), 128
    if s % 16:
        raise ValueError(f"image_size={s}: SAM 2 needs a multiple of 16")
    # Sub-configs as objects, not dicts: transformers 5.17 mis-routes dicts (its mask decoder then reads the
    # prompt encoder's config); 5.24 accepts both.
    backbone = Sam2HieraDetConfig(image_size=[s, s], hidden_size=8, blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
                                  window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
                              fpn_hidden_size=h)
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=h, image_size=s, patch_size=16,
                                                           mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=h, mlp_dim=32, num_attention_heads=2,
                                                       iou_head_hidden_dim=16),
        image_size=s, memory_attention_hidden_size=h, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32, memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=h, memory_encoder_output_channels=64, mask_downsampler_embed_dim=h,
        memory_fuser_embed_dim=h, memory_fuser_intermediate_dim=32, num_maskmem=3,
    )


class Sam2Propagator(Propagator):
    """SAM 2 video tracking behind the :class:`Propagator` interface; one SAM 2 object per trait.

    ``model``: a ``Sam2VideoModel`` (see :func:`load_sam2`). ``offload_video`` keeps the preprocessed
    frames on the CPU, ``offload_state`` keeps the memory features on the CPU (long collections on a
    small GPU). ``differentiable=True`` runs SAM 2's tracking step with autograd (cycle-consistent
    fine-tuning) and feeds soft masks as mask inputs instead of binarised ones.
    """

    def __init__(self, model, device: Union[str, torch.device] = "cpu", offload_video: bool = False,
                 offload_state: bool = False, differentiable: bool = False, pose: str = "any",
                 mirror_pairs=()):
        _, self._Session = _transformers_sam2()
        if pose not in ("any", "upright"):
            raise BackendOptionError("pose", pose, "choose any or upright")
        self.pose, self.mirror_pairs = pose, tuple(mirror_pairs)
        self._pose_finder = None  # label propagation holding the first support (pose="any")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.size = int(model.config.image_size if isinstance(model.config.image_size, int)
                        else model.config.image_size[0])
        self.dtype = next(model.parameters()).dtype
        self.offload_video = offload_video
        self.offload_state = offload_state
        self._grad = differentiable
        self.session = None
        self.num_labels = 0
        self._objects: List[int] = []
        self._pending = None  # (frame tensor, frame index, per-object outputs) of the last prediction

    # -- frames -------------------------------------------------------------------------------
    def _pixels(self, image: torch.Tensor) -> torch.Tensor:
        """``3×H×W`` in [0, 1] → ``3×S×S`` normalised for SAM 2 (S = the model's image size)."""
        x = F.interpolate(image[None].float().to(self.device), size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)[0]
        mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(STD, device=x.device).view(3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def _forward(self, **kwargs):
        if not self._grad:
            return self.model(inference_session=self.session, **kwargs)
        # ``forward`` is wrapped in torch.inference_mode(); the undecorated function keeps the graph. In eval
        # mode SAM 2 binarises prompted masks before encoding them into memory, which would cut the cycle
        # loss's gradient through the query's soft prediction: encode them as soft masks instead.
        encode = self.model._batch_encode_memories

        def soft_encode(**kw):
            kw["is_mask_from_pts_per_obj"] = [False] * len(kw["is_mask_from_pts_per_obj"])
            return encode(**kw)

        self.model._batch_encode_memories = soft_encode
        try:
            with torch.enable_grad():
                return type(self.model).forward.__wrapped__(self.model, inference_session=self.session, **kwargs)
        finally:
            del self.model._batch_encode_memories

    # -- memory -------------------------------------------------------------------------------
    def reset(self, num_labels: int) -> None:
        self.num_labels = int(num_labels)
        cpu = torch.device("cpu")
        self.session = self._Session(
            inference_device=self.device, dtype=self.dtype,
            inference_state_device=cpu if self.offload_state else self.device,
            video_storage_device=cpu if self.offload_video else self.device)
        self._objects = []
        self._pending = None
        self._pose_finder = None

    def _pose_of(self, image: torch.Tensor) -> Optional[torch.Tensor]:
        """The 2×3 theta (query → support, normalised coordinates of the square SAM 2 input), or None."""
        if self._pose_finder is None:
            return None
        return self._pose_finder.poses([image.detach().float().cpu()])[0].to(self.device)

    def _remember_pose(self, image: torch.Tensor, labels: torch.Tensor) -> None:
        """The first support becomes the reference pose (pose="any")."""
        if self.pose != "any" or self._pose_finder is not None:
            return
        from traitlens.segment.features import ColourPositionFeatures
        from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions

        finder = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(64, 64), align=True,
                                                                             mirror_pairs=self.mirror_pairs))
        finder.reset(self.num_labels)
        finder.add_support(image.detach().float().cpu(), labels.detach().cpu())
        self._pose_finder = finder

    def add_support(self, image: torch.Tensor, labels: torch.Tensor) -> None:
        """A conditioning frame: each trait present in ``labels`` becomes (or re-prompts) its SAM 2 object."""
        if self.session is None:
            raise RuntimeError("call reset(num_labels) before adding frames")
        soft = one_hot(labels.to(self.device), self.num_labels)  # (K+1)×H×W
        masks = F.interpolate(soft[None, 1:], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        if not self._grad:
            masks = (masks >= 0.5).float()
        present = [k for k in range(1, self.num_labels) if float(soft[k].detach().sum()) > 0]
        if not present:
            raise ValueError("the support label map has no trait pixels")
        frame_idx = self.session.add_new_frame(self._pixels(image))
        self._remember_pose(image, labels)
        for k in present:
            obj_idx = self.session.obj_id_to_idx(k)  # creates the object the first time
            self.session.add_mask_inputs(obj_idx, frame_idx, masks[k - 1][None, None])
            if k not in self._objects:
                self._objects.append(k)
        self.session.obj_with_new_inputs = list(present)
        self._forward(frame_idx=frame_idx)

    def add_memory(self, image: torch.Tensor, probs: torch.Tensor) -> None:
        """Keep a predicted frame in SAM 2's memory; a frame it did not just predict is added as a prompt."""
        if self._pending is not None and self._pending[0] is image:
            _, frame_idx, frame, outputs, tracked = self._pending
            self.session.processed_frames[frame_idx] = frame
            for obj_idx, out in outputs.items():
                self.session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"][frame_idx] = out
                self.session.frames_tracked_per_obj[obj_idx][frame_idx] = tracked[obj_idx]
            self._pending = None
        else:
            self.add_support(image, probs.argmax(0) if not self._grad else probs)

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        if self.session is None or not self._objects:
            raise RuntimeError("SAM 2 has no memory: add a support frame first")
        self._forget_pending()
        theta = self._pose_of(image)
        pixels = self._pixels(image)
        if theta is not None:
            # onto the support's pose before the query enters the pseudo-video
            pixels = warp(pixels[None].float(), invert(theta)[None], (self.size, self.size))[0].to(self.dtype)
        out = self._forward(frame=pixels)
        frame_idx = out.frame_idx
        # Forget the frame until add_memory asks to keep it (pairwise order: memory = the supports only).
        outputs, tracked = {}, {}
        for obj_idx in range(self.session.get_obj_num()):
            outputs[obj_idx] = self.session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)
            tracked[obj_idx] = self.session.frames_tracked_per_obj[obj_idx].pop(frame_idx, None)
        frame = self.session.processed_frames.pop(frame_idx)
        self.session.cache._vision_features.pop(frame_idx, None)
        self._pending = (image, frame_idx, frame, outputs, tracked)
        return self._soft(out.pred_masks, out.object_ids, tuple(image.shape[-2:]), theta)

    def _forget_pending(self) -> None:
        self._pending = None

    def _soft(self, logits: torch.Tensor, object_ids: Sequence[int], size, theta=None) -> torch.Tensor:
        """Per-object mask logits ``N×1×h×w`` → soft label map ``(K+1)×H×W``; background = 1 − max trait.
        ``theta``: the query's registration; the masks are turned back from the support's pose first."""
        probs = torch.sigmoid(logits.float())
        if theta is not None:
            probs = warp(probs, theta[None].expand(len(probs), 2, 3).to(probs), tuple(probs.shape[-2:]))
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[:, 0]
        soft = torch.zeros(self.num_labels, *size, device=probs.device, dtype=probs.dtype)
        traits = torch.tensor([int(k) for k in object_ids], device=probs.device)
        soft = soft.index_copy(0, traits, probs)
        background = 1 - soft[1:].amax(0)
        soft = torch.cat([background[None], soft[1:]], 0)
        soft = soft / soft.sum(0, keepdim=True).clamp_min(1e-6)
        if theta is not None and self.mirror_pairs and bool(is_mirrored(theta)):
            soft = swap_pairs(soft[None], self.mirror_pairs)[0]
        return soft

    def differentiable(self) -> bool:
        return self._grad

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        """What cycle-consistent fine-tuning may change: everything but the image encoder (kept frozen)."""
        return [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("vision_encoder")]


def freeze_image_encoder(model) -> None:
    """Freeze SAM 2's image encoder (the cycle loss trains memory attention, memory encoder, decoder)."""
    for p in model.vision_encoder.parameters():
        p.requires_grad_(False)
