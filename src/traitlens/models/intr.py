"""INTR (Paul et al., ICLR 2024): one query per class looks for its class in the image.

The figure, as code (:meth:`INTR.forward`)::

    image ─ backbone feature map (CNN stage or ViT patch grid) ─ 1×1 conv to d ─ + sine positions
          ─ encoder (post-norm self-attention) ─ memory B×HW×d
    class queries (C×d, used as query_pos; tgt starts at 0) ─ decoder: self-attention among the
          queries, cross-attention to the memory (keys without positional encoding) ─ C outputs
          ─ shared presence vector Linear(d, 1) ─ logits B×C

Each class query's cross-attention, per head, is the explanation: :meth:`INTR.attention_maps` gives
``[layers, B, heads, C, HW]``, :meth:`INTR.class_attention` the maps of one class per image
(B×heads×h×w), :meth:`INTR.identify_traits` ranks the heads of the last decoder layer by greedy head
blurring (the Prompt-CAM procedure applied to the class query's cross-attention row).

:func:`load_detr` starts INTR from a DETR-R50 checkpoint (a local file): backbone, projection and
transformer are copied, DETR's 100 object queries are tiled to C class queries (noise on the
copies), the detection heads are dropped and the presence vector is fresh.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.models.detr_transformer import Transformer
from traitlens.models.head_blur import TraitHeads, check_classes, greedy_head_blur
from traitlens.models.position_encoding import PositionEmbeddingSine


class INTR(nn.Module):
    """INTR on any timm CNN or ViT backbone.

    >>> model = INTR(backbone, num_classes=200)                     # DETR sizes: d=256, 6+6 layers, 8 heads
    >>> logits = model(images)                                      # B×C
    >>> maps = model.class_attention(images, labels)                # B×heads×h×w, last decoder layer
    >>> all_maps, grid = model.attention_maps(images)               # [layers, B, heads, C, HW]
    """

    def __init__(self, backbone: nn.Module, num_classes: int, d_model: int = 256, num_heads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1):
        super().__init__()
        from traitlens.backbones import layout

        if num_classes < 1:
            raise UserError(f"INTR needs at least one class, got num_classes={num_classes}")
        if num_decoder_layers < 1:
            raise UserError("INTR needs at least one decoder layer")
        if d_model % num_heads or d_model % 2:
            raise UserError(f"INTR: d_model ({d_model}) must be even and divisible by num_heads ({num_heads})")
        self.backbone = backbone
        self.layout = layout(backbone)
        self.input_proj = nn.Conv2d(self.layout.embed_dim, d_model, kernel_size=1)
        self.position = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.transformer = Transformer(d_model, num_heads, num_encoder_layers, num_decoder_layers,
                                       dim_feedforward, dropout)
        self.query_embed = nn.Embedding(num_classes, d_model)
        self.presence = nn.Linear(d_model, 1)
        self.hparams = dict(d_model=d_model, num_heads=num_heads, num_encoder_layers=num_encoder_layers,
                            num_decoder_layers=num_decoder_layers, dim_feedforward=dim_feedforward,
                            dropout=dropout)

    @property
    def num_classes(self) -> int:
        return self.query_embed.num_embeddings

    @property
    def num_heads(self) -> int:
        return self.transformer.nhead

    # -- the figure -----------------------------------------------------------------------------------
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Images B×3×H×W → backbone features B×F×h×w (a CNN's last stage or a ViT's patch grid)."""
        if images.dim() != 4:
            raise UserError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
        feats = self.backbone.forward_features(images)
        return self.layout.tokens_to_map(feats, *images.shape[-2:])

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images → encoder memory B×HW×d and the grid (h, w)."""
        src = self.input_proj(self.feature_map(images))
        pos = self.position(src)
        h, w = src.shape[-2:]
        memory = self.transformer.encode(src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2))
        return memory, (h, w)

    def _queries(self, batch: int) -> torch.Tensor:
        return self.query_embed.weight[None].expand(batch, -1, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images B×3×H×W → logits B×C."""
        memory, _ = self.encode(images)
        out, _ = self.transformer.decode(memory, self._queries(memory.shape[0]))
        return self.presence(out).squeeze(-1)

    # -- explanations ---------------------------------------------------------------------------------
    def attention_maps(self, images: torch.Tensor, layers: Optional[Sequence[int]] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """(logits B×C, cross-attention ``[len(layers), B, heads, C, HW]``, grid) — default: every layer."""
        n = len(self.transformer.decoder.layers)
        layers = list(range(n)) if layers is None else [int(i) % n for i in layers]
        memory, grid = self.encode(images)
        out, maps = self.transformer.decode(memory, self._queries(memory.shape[0]), map_layers=layers)
        order = sorted(set(layers))
        stacked = torch.stack([maps[order.index(i)] for i in layers])
        return self.presence(out).squeeze(-1), stacked, grid

    def class_attention(self, images: torch.Tensor, classes, layer: int = -1) -> torch.Tensor:
        """Per-head cross-attention maps B×heads×h×w of query ``classes[b]`` on image b (any class)."""
        _, maps, (h, w) = self.attention_maps(images, [layer])
        classes = check_classes(classes, images.shape[0], self.num_classes, images.device)
        rows = maps[0, torch.arange(images.shape[0], device=images.device), :, classes]  # B×heads×HW
        return rows.reshape(rows.shape[0], rows.shape[1], h, w)

    def top_class_attention(self, images: torch.Tensor, q: int = 3, layer: int = -1
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The top-``q`` predicted classes B×q and their maps B×q×heads×h×w."""
        logits, maps, (h, w) = self.attention_maps(images, [layer])
        top = logits.topk(min(q, self.num_classes), dim=1).indices  # B×q
        idx = top[:, None, :, None].expand(-1, maps.shape[2], -1, maps.shape[-1])
        sel = maps[0].gather(2, idx)  # B×heads×q×HW
        return top, sel.transpose(1, 2).reshape(top.shape[0], top.shape[1], maps.shape[2], h, w)

    def identify_traits(self, images: torch.Tensor, classes=None, top_k: int = 4,
                        stop_on_misclassification: bool = True) -> TraitHeads:
        """Greedy head blurring on the last decoder layer's cross-attention (see :mod:`head_blur`)."""
        dec = self.transformer.decoder
        last = dec.layers[-1]
        memory, (h, w) = self.encode(images)
        b = memory.shape[0]
        qpos = self._queries(b)
        tgt_in, _ = self.transformer.decode(memory, qpos, stop_before=-1)
        tgt = last.self_attend(tgt_in, qpos)  # B×C×d, entering the cross-attention
        cross, weights = last.multihead_attn(tgt + qpos, memory, memory, need_weights=True)
        logits = self.presence(dec.norm(last.after_cross(tgt, cross))).squeeze(-1)
        classes = logits.argmax(1) if classes is None else classes
        classes = check_classes(classes, b, self.num_classes, memory.device)

        attn = last.multihead_attn
        ar = torch.arange(b, device=memory.device)
        row_tgt = tgt[ar, classes][:, None]  # B×1×d
        _, _, v = attn.project(row_tgt, memory, memory)  # B×H×HW×e (values do not depend on the query)
        probs = weights[ar, :, classes][:, :, None]  # B×H×1×HW
        sharp = probs @ v
        flat = v.mean(dim=2, keepdim=True)
        maps = probs[:, :, 0].reshape(b, -1, h, w)

        def score(head_out: torch.Tensor) -> torch.Tensor:  # B×K×H×1×d → B×K
            out = last.after_cross(row_tgt[:, None], attn.merge(head_out))
            return self.presence(dec.norm(out))[..., 0, 0]

        return greedy_head_blur(logits, classes, sharp, flat, score, maps, top_k, stop_on_misclassification)



# -- DETR checkpoints -----------------------------------------------------------------------------------

DETR_BACKBONE_PREFIX = "backbone.0.body."


def tile_queries(queries: torch.Tensor, num_classes: int, noise: float = 0.1,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DETR's Q object queries Q×d → C class queries: the first C when C ≤ Q, else tiled copies + noise."""
    n = queries.shape[0]
    reps = math.ceil(num_classes / n)
    tiled = queries.repeat(reps, 1)[:num_classes].clone()
    if num_classes > n and noise > 0:
        extra = torch.randn(tiled[n:].shape, generator=generator, dtype=tiled.dtype)
        tiled[n:] += noise * extra.to(tiled.device)
    return tiled


def detr_state_for_intr(state: Dict[str, torch.Tensor], num_classes: int, noise: float = 0.1,
                        generator: Optional[torch.Generator] = None
                        ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """DETR keys → INTR keys: (state dict for INTR, DETR keys dropped)."""
    if "query_embed.weight" not in state or not any(k.startswith("transformer.") for k in state):
        raise UserError("not a DETR checkpoint: no query_embed.weight / transformer.* tensors")
    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith(DETR_BACKBONE_PREFIX):
            out["backbone." + key[len(DETR_BACKBONE_PREFIX):]] = value
        elif key.startswith(("transformer.", "input_proj.")):
            out[key] = value
        elif key == "query_embed.weight":
            out[key] = tile_queries(value, num_classes, noise, generator)
        else:
            dropped.append(key)  # class_embed, bbox_embed: detection heads
    return out, dropped


INTR_RELEASE_RENAMES = {"presence_vector.": "presence."}


def intr_release_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An INTR release checkpoint's ``model`` (Imageomics/INTR keys) → traitlens INTR keys, every tensor kept.

    The release is DETR's layout (``backbone.0.body.*`` a torchvision ResNet-50 with frozen BatchNorm,
    ``transformer.*``, ``input_proj``, ``query_embed`` with one row per class) plus ``presence_vector``.
    """
    if "presence_vector.weight" not in state or "query_embed.weight" not in state:
        raise UserError("not an INTR release checkpoint: no presence_vector / query_embed tensors")
    out = {}
    for key, value in state.items():
        if key.startswith(DETR_BACKBONE_PREFIX):
            key = "backbone." + key[len(DETR_BACKBONE_PREFIX):]
        for old, new in INTR_RELEASE_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def load_detr(model: INTR, path, noise: float = 0.1, seed: int = 0) -> Dict[str, object]:
    """Load a DETR checkpoint file (.pth / .safetensors) into ``model``; returns a summary.

    Shapes must fit (DETR-R50: a ResNet-50 backbone and d=256, 8 heads, 6+6 layers, FFN 2048). An INTR release
    checkpoint given here is loaded whole (its class queries and presence vector too), so its classes must be
    the model's; DETR's detection heads (``class_embed``, ``bbox_embed``) are the only tensors ever dropped.
    """
    from traitlens.backbones import read_checkpoint
    from traitlens.backbones.reading import check_finite

    ck = read_checkpoint(path)
    check_finite(ck.state, path)
    if "presence_vector.weight" in ck.state:
        state, dropped = intr_release_state(ck.state), []
        n = state["query_embed.weight"].shape[0]
        if n != model.num_classes:
            raise UserError(f"{path} is an INTR release checkpoint for {n} classes, not {model.num_classes}: import it "
                            "with traitlens import intr, or start from a DETR checkpoint")
    else:
        state, dropped = detr_state_for_intr(ck.state, model.num_classes, noise, torch.Generator().manual_seed(seed))
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad or unknown:
        raise UserError(f"DETR checkpoint {path} does not fit this INTR ({len(bad)} shape mismatches, {len(unknown)} "
                        f"unknown tensors, e.g. {'; '.join((bad + unknown)[:3])}); build INTR with DETR's sizes and a "
                        "resnet50 backbone (method_options.freeze_batchnorm: true)")
    fit = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in fit and not k.endswith("num_batches_tracked")]
    if not any(k.startswith("transformer.") for k in fit):
        raise UserError(f"DETR checkpoint {path}: no transformer tensor matches this INTR")
    model.load_state_dict(fit, strict=False)
    return {"path": str(path), "loaded": len(fit), "dropped": dropped, "unknown": unknown, "missing": missing}


def release_config(args) -> Dict[str, object]:
    """INTR's sizes from a release checkpoint's ``args`` (an argparse.Namespace or dict), DETR's where absent."""
    get = (lambda k, d: getattr(args, k, d)) if not isinstance(args, dict) else (lambda k, d: args.get(k, d))
    return {"d_model": int(get("hidden_dim", 256)), "num_heads": int(get("nheads", 8)),
            "num_encoder_layers": int(get("enc_layers", 6)), "num_decoder_layers": int(get("dec_layers", 6)),
            "dim_feedforward": int(get("dim_feedforward", 2048)), "dropout": float(get("dropout", 0.1))}


# -- training through the engine ------------------------------------------------------------------------

OPTIONS = {"d_model": 256, "num_heads": 8, "num_encoder_layers": 6, "num_decoder_layers": 6,
           "dim_feedforward": 2048, "dropout": 0.1, "detr": None, "query_noise": 0.1, "freeze_batchnorm": False}

# The reference recipe (Imageomics/INTR main.py defaults @ 224605e; the packaged YAML preset ``intr-detr``
# cites the files): AdamW, lr 5e-5, backbone 1e-5, weight decay 1e-6, gradient clip 0.1, StepLR ÷10 at epoch
# 80 of 140, batch 12, from a DETR-R50 checkpoint (DETR's frozen BatchNorm). The reference also never updates
# conv1/layer1, which this INTR cannot express yet. Set method_options.detr to the local file.
TRAINING_PRESETS = {
    "detr-r50": dict(method="intr", backbone="resnet50", optimizer="adamw", lr=5e-5, backbone_lr_scale=0.2,
                     weight_decay=1e-6, grad_clip=0.1, scheduler="step", step_size=80, gamma=0.1, epochs=140,
                     batch_size=12, image_size=800, warmup_epochs=0,
                     method_options={"freeze_batchnorm": True}),
    # CPU scale: a tiny transformer on the tiny backbones (the demo's and the tests' setting).
    "tiny": dict(method="intr", optimizer="adamw", lr=1e-3, backbone_lr_scale=0.1, weight_decay=1e-4,
                 grad_clip=0.1, scheduler="cosine", warmup_epochs=1,
                 method_options={"d_model": 64, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 2,
                                 "dim_feedforward": 128, "dropout": 0.0}),
}


def method_options(config) -> dict:
    """``config.method_options`` checked against INTR's options, with defaults filled in."""
    opts = dict(config.method_options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise UserError(f"intr: unknown method option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    return {**OPTIONS, **opts}


def build_for_training(config, num_classes: int, load_weights: bool = True):
    """The engine's ``intr`` method: (INTR on ``config.backbone``, optimizer groups).

    ``config.method_options``: the transformer sizes (``d_model``, ``num_heads``,
    ``num_encoder_layers``, ``num_decoder_layers``, ``dim_feedforward``, ``dropout``), ``detr``
    (a local DETR checkpoint to start from), ``query_noise`` (on tiled query copies),
    ``freeze_batchnorm`` (DETR's frozen BatchNorm in a CNN backbone). The backbone trains at
    ``lr × backbone_lr_scale``, everything else at ``lr``.
    """
    from timm.layers import freeze_batch_norm_2d

    from traitlens import backbones

    opts = method_options(config)
    backbone = backbones.create(
        config.backbone, num_classes=0,
        weights=config.weights if load_weights else None,
        pretrained=bool(config.pretrained and load_weights),
        strict=not config.allow_partial,
        **dict(config.backbone_options or {}),
    )
    if opts["freeze_batchnorm"]:
        spec = getattr(backbone, "traitlens_spec", None)
        backbone = freeze_batch_norm_2d(backbone)
        if spec is not None:
            backbone.traitlens_spec = spec
    sizes = {k: opts[k] for k in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
                                  "dim_feedforward", "dropout")}
    model = INTR(backbone, num_classes, **sizes)
    if load_weights and opts["detr"]:
        model.traitlens_detr = load_detr(model, opts["detr"], noise=float(opts["query_noise"]), seed=config.seed)
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    body_ids = {id(p) for p in body}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in body_ids]
    groups = [{"params": body, "lr": config.lr * config.backbone_lr_scale, "weight_decay": config.weight_decay,
               "name": "backbone"},
              {"params": rest, "lr": config.lr, "weight_decay": config.weight_decay, "name": "transformer"}]
    return model, groups
