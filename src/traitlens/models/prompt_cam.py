"""Prompt-CAM (Chowdhury et al., CVPR 2025): class-specific prompts make a frozen ViT interpretable.

The figure, as code (:meth:`PromptCAM.forward`)::

    image ─ patch embedding ─ [CLS/registers, patches] + position
          ─ for each block i:  [prompts_i (C×D), CLS/registers, patches] ─ block i ─ drop the prompts
          ─ last block: keep its C prompt outputs ─ LayerNorm ─ shared scorer Linear(D, 1) ─ logits B×C

*Deep* (the default, as the reference code): C prompts are inserted before every block and removed
after it; only the last layer's C prompt outputs are read, so only they are class-specific.
*Shallow*: C prompts are inserted once before block 1 and carried through all blocks.
The backbone is frozen; the prompts (``L·C·D`` in Deep, ``C·D`` in Shallow) and the scorer
(``D + 1``) train.

Because the prompt outputs of blocks 1..L-1 are discarded in Deep mode, those blocks only compute
the outputs of the image tokens (their keys and values still include the prompts), and the last
block only computes the C prompt outputs: the same logits as running each block on the whole
sequence, with less work. The last block's input (:class:`LastBlockInput`) is what the explanation
methods start from, so reading maps or blurring heads never re-runs the backbone.

Explanations:

- :meth:`PromptCAM.class_attention`: the last block's post-softmax attention of prompt c to the
  patches, per head (B×H×h×w). Any class can be asked for: looking at a Indigo Bunting "through the
  Lazuli Bunting's prompt" shows where the model would look for the Lazuli's traits.
- :meth:`PromptCAM.identify_traits`: greedy head blurring. Blurring head h for class c sets the
  pre-softmax logits of row c in head h to 0 (uniform attention); the head whose blurring leaves the
  target probability highest is blurred next, until ``top_k`` heads remain or, as in the paper, the
  image would become misclassified. The heads left are the trait-detecting heads.
- :class:`HierarchicalPromptCAM`: one prompt set per node of a class tree (the paper's taxonomy analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.models.head_blur import TraitHeads, check_classes, greedy_head_blur
from traitlens.models.vit_blocks import (
    attention_probs, check_vit, finish_block, project_qkv, run_block, run_block_explicit,
)

MODES = ("deep", "shallow")


def vpt_init_bound(patch_size: Tuple[int, int], dim: int) -> float:
    """VPT's prompt init: uniform in ±sqrt(6 / (3·p_h·p_w + D)) (Xavier-uniform over a patch's fan-in)."""
    return math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + dim))


class PromptSet(nn.Module):
    """C class prompts per layer and the shared scorer.

    ``tokens``: L×C×D (Deep) or 1×C×D (Shallow); ``scorer``: Linear(D, 1) applied to each prompt output.
    """

    def __init__(self, num_classes: int, num_layers: int, dim: int, patch_size: Tuple[int, int],
                 mode: str = "deep"):
        super().__init__()
        if mode not in MODES:
            raise UserError(f"Prompt-CAM mode must be one of {', '.join(MODES)}, not {mode!r}")
        if num_classes < 1:
            raise UserError(f"Prompt-CAM needs at least one class, got num_classes={num_classes}")
        self.mode = mode
        bound = vpt_init_bound(patch_size, dim)
        layers = num_layers if mode == "deep" else 1
        self.tokens = nn.Parameter(torch.empty(layers, num_classes, dim).uniform_(-bound, bound))
        self.scorer = nn.Linear(dim, 1)

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[1]


@dataclass
class LastBlockInput:
    """The sequence entering the last block: ``tokens`` B×(C+N)×D in the order [prompts, prefix, patches].

    ``num_prompts`` is C, ``num_prefix`` the CLS/register count, ``grid`` the patch grid (h, w).
    """

    tokens: torch.Tensor
    num_prompts: int
    num_prefix: int
    grid: Tuple[int, int]

    @property
    def patch_start(self) -> int:
        return self.num_prompts + self.num_prefix


class _PromptedViT(nn.Module):
    """A frozen timm ViT that runs with prompt sets (shared by the flat and the hierarchical model)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        check_vit(backbone)
        self.backbone = backbone
        backbone.requires_grad_(False)
        backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout or drop-path in the backbone, ever
        return self

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks)

    @property
    def num_heads(self) -> int:
        return int(self.backbone.blocks[-1].attn.num_heads)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.blocks[-1].norm1.weight.shape[0]) if hasattr(
            self.backbone.blocks[-1].norm1, "weight") else int(self.backbone.embed_dim)

    @property
    def patch_size(self) -> Tuple[int, int]:
        p = self.backbone.patch_embed.patch_size
        return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))

    @property
    def final_norm(self) -> nn.Module:
        """The backbone's final LayerNorm. timm keeps it in ``norm`` for CLS-token ViTs (DINO, DINOv2,
        CLIP) but moves it to ``fc_norm`` (after pooling) when the ViT pools patches with ``avg`` or
        ``max`` (the tiny embedded ViT); ``norm`` is then an Identity and the prompt outputs would reach
        the scorer unnormalised."""
        bb = self.backbone
        fc_norm = getattr(bb, "fc_norm", None)
        if isinstance(bb.norm, nn.Identity) and fc_norm is not None and not isinstance(fc_norm, nn.Identity):
            return fc_norm
        return bb.norm

    def _grid(self, height: int, width: int) -> Tuple[int, int]:
        from traitlens.backbones import layout

        return layout(self.backbone).grid(height, width)

    # -- the figure -----------------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """images B×3×H×W → [CLS/registers, patches] + position, B×N×D."""
        if images.dim() != 4:
            raise UserError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
        bb = self.backbone
        try:
            x = bb.patch_embed(images)
        except AssertionError as err:  # timm's fixed-size check
            raise UserError(f"image size {tuple(images.shape[-2:])} does not fit the backbone: {err}") from None
        x = bb._pos_embed(x)
        x = bb.patch_drop(x) if hasattr(bb, "patch_drop") else x
        return bb.norm_pre(x) if hasattr(bb, "norm_pre") else x

    def _encode(self, prompt_set: PromptSet, images: torch.Tensor,
                trace: Optional[List[torch.Tensor]] = None) -> LastBlockInput:
        """Run blocks 1..L-1 with prompts; return the sequence entering the last block.

        ``trace`` (a list), when given, receives the sequence entering each block (for tests).
        """
        x = self._embed(images)
        b = x.shape[0]
        prompts = prompt_set.tokens
        if self.training and self.prompt_dropout > 0:
            prompts = nn.functional.dropout(prompts, self.prompt_dropout, training=True)
        c = prompts.shape[1]
        blocks = self.backbone.blocks
        if prompt_set.mode == "deep":
            for i, blk in enumerate(blocks[:-1]):
                seq = torch.cat([prompts[i].expand(b, -1, -1), x], dim=1)
                if trace is not None:
                    trace.append(seq)
                x = run_block(blk, seq, slice(c, None))  # the prompt outputs would be dropped: skip them
            seq = torch.cat([prompts[-1].expand(b, -1, -1), x], dim=1)
        else:
            seq = torch.cat([prompts[0].expand(b, -1, -1), x], dim=1)
            for blk in blocks[:-1]:
                if trace is not None:
                    trace.append(seq)
                seq = run_block(blk, seq)
        if trace is not None:
            trace.append(seq)
        grid = self._grid(*images.shape[-2:])
        return LastBlockInput(seq, c, int(self.backbone.num_prefix_tokens), grid)

    def _score(self, prompt_set: PromptSet, prompt_out: torch.Tensor) -> torch.Tensor:
        """Last-block prompt outputs …×D → logits … (final LayerNorm, then the shared scorer)."""
        return prompt_set.scorer(self.final_norm(prompt_out)).squeeze(-1)

    def _logits(self, prompt_set: PromptSet, state: LastBlockInput) -> torch.Tensor:
        """B×C logits from the last block's input: only the C prompt rows are computed."""
        seq, c = state.tokens, state.num_prompts
        return self._score(prompt_set, run_block(self.backbone.blocks[-1], seq, slice(0, c)))

    def _rows(self, state: LastBlockInput, classes: torch.Tensor) -> torch.Tensor:
        """The last-block input of prompt ``classes[b]`` for each image b: B×1×D."""
        classes = check_classes(classes, state.tokens.shape[0], state.num_prompts, state.tokens.device)
        idx = classes[:, None, None].expand(-1, 1, state.tokens.shape[-1])
        return torch.gather(state.tokens, 1, idx)

    def _class_attention(self, state: LastBlockInput, classes: torch.Tensor) -> torch.Tensor:
        """Per-head post-softmax attention of prompt ``classes[b]`` to the patches: B×H×h×w."""
        rows = self._rows(state, classes)
        _, probs = run_block_explicit(self.backbone.blocks[-1], state.tokens, rows)  # B×H×1×T
        h, w = state.grid
        return probs[:, :, 0, state.patch_start:].reshape(probs.shape[0], probs.shape[1], h, w)

    def _identify_traits(self, prompt_set: PromptSet, state: LastBlockInput, classes: Optional[torch.Tensor],
                         top_k: int, stop_on_misclassification: bool) -> TraitHeads:
        """Greedy head blurring on the last block (see :mod:`traitlens.models.head_blur`)."""
        blk = self.backbone.blocks[-1]
        logits = self._logits(prompt_set, state)  # B×C, unblurred
        b = logits.shape[0]
        classes = logits.argmax(1) if classes is None else classes
        classes = check_classes(classes, b, logits.shape[1], logits.device)
        rows = self._rows(state, classes)  # B×1×D: the target prompt entering the last block
        h_row = blk.norm1(rows)
        q, k, v = project_qkv(blk, h_row, blk.norm1(state.tokens))
        probs = attention_probs(blk, q, k)  # B×H×1×T
        sharp = probs @ v  # each head's output for the target row
        flat = v.mean(dim=2, keepdim=True)  # a blurred (uniform) row's output
        gh, gw = state.grid
        maps = probs[:, :, 0, state.patch_start:].reshape(b, -1, gh, gw)

        def score(head_out: torch.Tensor) -> torch.Tensor:  # B×K×H×1×d → B×K
            out = finish_block(blk, rows[:, None], h_row[:, None], head_out)
            return self._score(prompt_set, out)[..., 0]

        return greedy_head_blur(logits, classes, sharp, flat, score, maps, top_k, stop_on_misclassification)


class PromptCAM(_PromptedViT):
    """Prompt-CAM on a frozen timm ViT.

    >>> model = PromptCAM(backbone, num_classes=200)             # Deep, as the reference
    >>> logits = model(images)                                   # B×C
    >>> maps = model.class_attention(images, labels)             # B×heads×h×w
    >>> found = model.identify_traits(images, labels, top_k=4)   # ranked trait-detecting heads
    """

    def __init__(self, backbone: nn.Module, num_classes: int, mode: str = "deep", prompt_dropout: float = 0.0):
        super().__init__(backbone)
        self.prompt_dropout = float(prompt_dropout)
        self.mode = mode
        self.prompts = PromptSet(num_classes, self.num_layers, self.embed_dim, self.patch_size, mode)

    @property
    def num_classes(self) -> int:
        return self.prompts.num_classes

    def encode(self, images: torch.Tensor, trace: Optional[List[torch.Tensor]] = None) -> LastBlockInput:
        """Images B×3×H×W → the sequence entering the last block (reuse it for several explanations)."""
        return self._encode(self.prompts, images, trace)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images B×3×H×W → logits B×C."""
        return self.logits(self.encode(images))

    def logits(self, state: LastBlockInput) -> torch.Tensor:
        """Logits B×C from :meth:`encode`'s output."""
        return self._logits(self.prompts, state)

    def class_attention(self, images, classes) -> torch.Tensor:
        """Per-head attention maps B×H×h×w of prompt ``classes[b]`` (any class) to the patches of image b.

        ``images`` is B×3×H×W or an :meth:`encode` result; ``classes`` a LongTensor B (or one int).
        """
        state = images if isinstance(images, LastBlockInput) else self.encode(images)
        return self._class_attention(state, classes)

    def identify_traits(self, images, classes=None, top_k: int = 4,
                        stop_on_misclassification: bool = True) -> TraitHeads:
        """Greedy head blurring for ``classes`` (default: the predicted class) on each image.

        To ask what would make an image look like another class, pass that class and
        ``stop_on_misclassification=False`` (see :meth:`look_through`).
        """
        state = images if isinstance(images, LastBlockInput) else self.encode(images)
        return self._identify_traits(self.prompts, state, classes, top_k, stop_on_misclassification)

    def look_through(self, images, classes, top_k: int = 4) -> TraitHeads:
        """Look at each image through another class's prompt: that class's most useful heads and maps."""
        return self.identify_traits(images, classes, top_k=top_k, stop_on_misclassification=False)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class HierarchicalPromptCAM(_PromptedViT):
    """One prompt set per internal node of a class tree on one frozen ViT (the paper's taxonomy analysis).

    ``tree`` maps each internal node to its children, e.g. ``{"root": ["Passerina", "Setophaga"],
    "Passerina": ["P. amoena", "P. cyanea"], ...}``. Each node's prompt set classifies among its
    children; a prediction walks from the root down.
    """

    def __init__(self, backbone: nn.Module, tree: Mapping[str, Sequence[str]], root: str = "root",
                 mode: str = "deep", prompt_dropout: float = 0.0):
        super().__init__(backbone)
        if root not in tree:
            raise UserError(f"class tree has no root node {root!r}")
        self.tree: Dict[str, List[str]] = {str(k): [str(c) for c in v] for k, v in tree.items()}
        for node, children in self.tree.items():
            if len(children) < 1:
                raise UserError(f"node {node!r} of the class tree has no children")
        self.root = root
        self.mode = mode
        self.prompt_dropout = float(prompt_dropout)
        self._keys = {node: f"node{i}" for i, node in enumerate(self.tree)}  # ModuleDict keys cannot hold dots
        self.prompt_sets = nn.ModuleDict({
            self._keys[node]: PromptSet(len(ch), self.num_layers, self.embed_dim, self.patch_size, mode)
            for node, ch in self.tree.items()
        })

    def prompt_set(self, node: str) -> PromptSet:
        if node not in self._keys:
            raise UserError(f"{node!r} is not an internal node of the class tree ({', '.join(self.tree)})")
        return self.prompt_sets[self._keys[node]]

    def node_logits(self, images: torch.Tensor, node: str) -> torch.Tensor:
        """Logits B×len(children(node)) of one node's prompt set."""
        ps = self.prompt_set(node)
        return self._logits(ps, self._encode(ps, images))

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every node's logits: {node: B×children}."""
        return {node: self.node_logits(images, node) for node in self.tree}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> List[List[str]]:
        """The root-to-leaf path each image is classified along."""
        paths = [[self.root] for _ in range(images.shape[0])]
        todo = {self.root: list(range(images.shape[0]))}
        while todo:
            node, idx = todo.popitem()
            pick = self.node_logits(images[idx], node).argmax(1).tolist()
            for i, j in zip(idx, pick):
                child = self.tree[node][j]
                paths[i].append(child)
                if child in self.tree:
                    todo.setdefault(child, []).append(i)
        return paths

    def class_attention(self, images: torch.Tensor, node: str, classes) -> torch.Tensor:
        """Per-head maps B×H×h×w of child ``classes[b]`` (index among ``node``'s children)."""
        ps = self.prompt_set(node)
        return self._class_attention(self._encode(ps, images), classes)

    def identify_traits(self, images: torch.Tensor, node: str, classes=None, top_k: int = 4,
                        stop_on_misclassification: bool = True) -> TraitHeads:
        ps = self.prompt_set(node)
        return self._identify_traits(ps, self._encode(ps, images), classes, top_k, stop_on_misclassification)


# -- training through the engine ------------------------------------------------------------------------

INCEPTION_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OPTIONS = {"mode": "deep", "prompt_dropout": 0.0, "normalization": "backbone"}

# The reference recipe (Imageomics/Prompt_CAM experiment/config/prompt_cam/*/cub/args.yaml): SGD, momentum
# 0.9, weight decay 1e-3, batch 16, 130 epochs with 20 warm-up epochs then cosine down to 1e-6, 224 px,
# Inception mean/std. Learning rates per backbone: DINO 5e-3 (prompt dropout 0.1), DINOv2 1e-3 (5e-3 on
# Oxford Pet). Use with ``load_config(**TRAINING_PRESETS[name], data=..., out=...)``; the packaged YAML
# preset ``prompt-cam-dinov2`` is the "dinov2" entry.
_REFERENCE = dict(method="prompt-cam", optimizer="sgd", momentum=0.9, weight_decay=1e-3, batch_size=16,
                  scheduler="cosine", warmup_epochs=20, epochs=130, image_size=224, augment=True, pretrained=True,
                  method_options={"mode": "deep", "normalization": "inception", "prompt_dropout": 0.0})
TRAINING_PRESETS = {
    "dino": {**_REFERENCE, "backbone": "dino-vitb16", "lr": 5e-3, "min_lr_ratio": 2e-4,
             "method_options": {**_REFERENCE["method_options"], "prompt_dropout": 0.1}},
    "dinov2": {**_REFERENCE, "backbone": "dinov2-vitb14", "lr": 1e-3, "min_lr_ratio": 1e-3},
    "dinov2-reg": {**_REFERENCE, "backbone": "dinov2-vitb14-reg", "lr": 1e-3, "min_lr_ratio": 1e-3},
    "clip": {**_REFERENCE, "backbone": "clip-vitb16", "lr": 1e-3, "min_lr_ratio": 1e-3},
    "bioclip": {**_REFERENCE, "backbone": "bioclip-vitb16", "lr": 1e-3, "min_lr_ratio": 1e-3},
}


def method_options(config) -> dict:
    """``config.method_options`` checked against Prompt-CAM's options, with defaults filled in."""
    opts = dict(config.method_options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise UserError(f"prompt-cam: unknown method option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **opts}
    if opts["normalization"] not in ("backbone", "inception"):
        raise UserError(f"prompt-cam: normalization must be backbone or inception, not {opts['normalization']!r}")
    return opts


def build_for_training(config, num_classes: int, load_weights: bool = True):
    """The engine's ``prompt-cam`` method: (PromptCAM on ``config.backbone``, optimizer groups).

    ``config.method_options``: ``mode`` (deep|shallow), ``prompt_dropout``, ``normalization``
    (backbone|inception: the reference normalises with mean = std = 0.5). Only the prompts and the
    scorer train, at ``config.lr`` with ``config.weight_decay``.
    """
    from traitlens import backbones

    opts = method_options(config)
    backbone = backbones.create(
        config.backbone, num_classes=0,
        weights=config.weights if load_weights else None,
        pretrained=bool(config.pretrained and load_weights),
        strict=not config.allow_partial,
        **dict(config.backbone_options or {}),
    )
    if opts["normalization"] == "inception":
        mean, std = INCEPTION_MEAN_STD
        backbone.pretrained_cfg = {**dict(getattr(backbone, "pretrained_cfg", {}) or {}), "mean": mean, "std": std}
    model = PromptCAM(backbone, num_classes, mode=opts["mode"], prompt_dropout=float(opts["prompt_dropout"]))
    groups = [{"params": [model.prompts.tokens], "lr": config.lr, "weight_decay": config.weight_decay,
               "name": "prompts"},
              {"params": list(model.prompts.scorer.parameters()), "lr": config.lr,
               "weight_decay": config.weight_decay, "name": "scorer"}]
    return model, groups


# -- the authors' trained models ------------------------------------------------------------------------


def reference_state(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """A Prompt-CAM ``model.pt``'s ``model_state_dict`` (Imageomics/Prompt_CAM keys) → (traitlens PromptCAM
    keys, mode). Every tensor is kept: ``vpt.prompt_embeddings`` (L×C×D in Deep, 1×C×D in Shallow) are the
    class prompts, ``head`` (Linear(D, 1)) the shared scorer, the rest the timm ViT backbone."""
    if "vpt.prompt_embeddings" not in state or "head.weight" not in state:
        raise UserError("not a Prompt-CAM model: no vpt.prompt_embeddings / head tensors")
    prompts = state["vpt.prompt_embeddings"]
    if prompts.dim() != 3 or tuple(state["head.weight"].shape) != (1, prompts.shape[-1]):
        raise UserError(f"Prompt-CAM model: prompts {tuple(prompts.shape)} and head {tuple(state['head.weight'].shape)} "
                        "do not go together (expected L×C×D prompts and a 1×D head)")
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=0)
    mode = "deep" if prompts.shape[0] == depth and depth > 1 else "shallow"
    if prompts.shape[0] not in (1, depth):
        raise UserError(f"Prompt-CAM model: {prompts.shape[0]} prompt layers for a {depth}-block ViT")
    out = {"prompts.tokens": prompts, "prompts.scorer.weight": state["head.weight"],
           "prompts.scorer.bias": state["head.bias"]}
    for key, value in state.items():
        if not key.startswith(("vpt.", "head.")):
            out["backbone." + key] = value
    return out, mode
