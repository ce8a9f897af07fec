"""The named backbones traitlens knows: real foundation models and tiny CPU models.

A preset is data, not code: the timm architecture (and pretrained tag) it builds, the keyword
arguments that shape it, and what the rest of traitlens needs to know about it (input size,
normalisation, family, patch size, recommended explanation layer). ``create()`` reads these;
nothing else should hard-code them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    """One named backbone.

    ``timm_name`` is ``architecture.pretrained_tag``; the tag is only used when pretrained weights
    are asked for. ``hub`` names a Hugging Face repository and file(s) for weights that timm does
    not publish itself (BioCLIP), with the key format they are in. ``explain_layer`` is the module
    path (relative to the timm model) whose activations CAM methods read by default.
    """

    name: str
    timm_name: str
    family: str  # "vit" or "cnn"
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int  # ViT patch size; for CNNs the stride of explain_layer
    explain_layer: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    crop_pct: float = 0.875
    hub: dict[str, Any] | None = None
    description: str = ""

    @property
    def architecture(self) -> str:
        return self.timm_name.split(".", 1)[0]


def _vit_b(name, timm_name, mean, std, patch, description, kwargs=None, hub=None, crop_pct=0.875):
    return Preset(
        name=name, timm_name=timm_name, family="vit", input_size=(3, 224, 224), mean=mean, std=std,
        patch_size=patch, explain_layer="blocks.11.norm1", kwargs=kwargs or {}, hub=hub,
        crop_pct=crop_pct, description=description,
    )


_LIST = [
    _vit_b("dino-vitb16", "vit_base_patch16_224.dino", IMAGENET_MEAN, IMAGENET_STD, 16,
           "DINO self-supervised ViT-B/16 (Caron et al. 2021)"),
    # DINOv2 is published at 518 px; traitlens runs it at 224 px and lets any multiple of 14 through.
    _vit_b("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", IMAGENET_MEAN, IMAGENET_STD, 14,
           "DINOv2 ViT-B/14 (Oquab et al. 2023), 224 px, dynamic image size",
           kwargs={"img_size": 224, "dynamic_img_size": True}, crop_pct=1.0),
    _vit_b("dinov2-vitb14-reg", "vit_base_patch14_reg4_dinov2.lvd142m", IMAGENET_MEAN, IMAGENET_STD, 14,
           "DINOv2 ViT-B/14 with 4 register tokens (Darcet et al. 2024), 224 px, dynamic image size",
           kwargs={"img_size": 224, "dynamic_img_size": True}, crop_pct=1.0),
    _vit_b("clip-vitb16", "vit_base_patch16_clip_224.openai", CLIP_MEAN, CLIP_STD, 16,
           "OpenAI CLIP ViT-B/16 image tower", crop_pct=1.0),
    # BioCLIP (Stevens et al. 2024) is published in open_clip format on the Hugging Face hub; its
    # image tower is CLIP's ViT-B/16, so timm's CLIP architecture holds it once the keys are renamed
    # (weights.load_state_dict does that). num_classes=512 keeps the CLIP projection as the head.
    _vit_b("bioclip-vitb16", "vit_base_patch16_clip_224", CLIP_MEAN, CLIP_STD, 16,
           "BioCLIP ViT-B/16 image tower (open_clip weights from imageomics/bioclip)",
           hub={"repo": "imageomics/bioclip",
                "files": ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
                "format": "open_clip"},
           crop_pct=1.0),
    Preset("vit-s16", "vit_small_patch16_224.augreg_in21k_ft_in1k", "vit", (3, 224, 224), (0.5, 0.5, 0.5),
           (0.5, 0.5, 0.5), 16, "blocks.11.norm1", crop_pct=0.9, description="ViT-S/16 (AugReg, IN-21k → IN-1k)"),
    Preset("resnet50", "resnet50.a1_in1k", "cnn", (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 32, "layer4",
           crop_pct=0.95, description="ResNet-50 (timm A1 recipe, ImageNet-1k)"),
    Preset("resnet18", "resnet18.a1_in1k", "cnn", (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 32, "layer4",
           crop_pct=0.95, description="ResNet-18 (timm A1 recipe, ImageNet-1k)"),
    # Tiny CPU models: ~350 img/s (ViT) and ~650 img/s (CNN) forward+backward at 64 px, batch 64,
    # on 2 CPU cores. The CNN keeps stride 8 (dilated layer3/4) so its maps are 8×8 at 64 px, like the ViT's.
    # Both pool their patch features by max, not by the CLS token or the mean: a trait a few pixels wide
    # is diluted by averaging, and on the synthetic collection max pooling learns sibling species several
    # times faster (tiny ViT: 40% vs 9% validation top-1 after 2 epochs on 24 species).
    Preset("tiny-vit", "vit_tiny_patch16_224", "vit", (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, 8,
           "blocks.3",
           kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4,
                   "dynamic_img_size": True, "global_pool": "max"},
           crop_pct=1.0, description="tiny ViT for CPU: 64 px, patch 8, 128 dim, 4 blocks, 4 heads"),
    Preset("tiny-cnn", "resnet18", "cnn", (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, 8, "layer4",
           kwargs={"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16, "output_stride": 8,
                   "global_pool": "max"},
           crop_pct=1.0, description="tiny ResNet for CPU: BasicBlock ×(1,1,1,1), 16-128 channels, stride 8"),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _LIST}


def get_preset(name: str) -> Preset | None:
    """The preset called ``name``, or None when ``name`` is not a traitlens preset."""
    return PRESETS.get(name)
