"""The evidence pass: for a batch of specimens, how much each part tells its species from a partner species.

For images of species A (label), each compared with one or more partner species B (``partners``, B×J, -1 =
empty slot), and their part maps (B×H×W ids, 0 = background), one call gives per image and part:

- ``area``: the part's share of the image (B×P);
- ``gradcam``: the share of the Grad-CAM energy of A on the part (B×P), the control map;
- ``finer``: the share of the Finer-CAM energy of A with B as the reference (α = 1) on the part (J×B×P);
- ``heads``: for a Prompt-CAM or INTR model, the share of A's kept heads' attention on the part (B×P);
- ``drop``: how much p(A) − p(B) falls when the part is removed (J×B×P), and ``random``: the same for a
  random region of the same area on the rest of the specimen (the mean over ``controls`` such regions).

Cost: one forward per image (its prediction); for each correctly classified one, one forward and one
batched backward per partner slot (Grad-CAM is the α = 0 map of the same :func:`traitlens.explain.explain`
call), every part scored from those maps at once; and one forward per part and per control region (``controls``
a part) for the interventions, batched, every partner read from the same softmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from traitlens.errors import UserError

REMOVALS = ("inpaint", "blur")


@dataclass(frozen=True)
class EvidenceOptions:
    """How the evidence is taken.

    ``removal``: ``inpaint`` fills a removed region with the mean colour of the specimen just around it (a
    ring ``ring`` pixels wide, the specimen's own colours), ``blur`` with a Gaussian blur of the image (σ =
    ``sigma`` px). ``margin``: how p(A) − p(B) is read, :func:`pair_margin`. ``scale``/``target_layer``: where the CAMs are taken
    (None: :func:`resolved_settings`, what traitlens recommends for small parts). ``top_heads``: heads
    kept for the head attention of a Prompt-CAM or INTR model. ``controls``: random regions drawn per part, the
    control being their mean drop (one draw moved the demo CNN's combined precision@1 by a pair of 12 between
    draws; four cost three more forwards per part). ``chunk``: images per intervention forward.
    """

    removal: str = "inpaint"
    margin: str = "pair"
    ring: int = 3
    sigma: float = 4.0
    scale: Optional[float] = None
    target_layer: Optional[str] = None
    top_heads: int = 4
    controls: int = 4
    chunk: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


#: cells a CAM needs along the shorter side to tell a trait a few pixels wide from the part it sits on (the
#: rule :func:`traitlens.explain.evaluate.recommended_settings` scales a ViT's input by)
MIN_CELLS = 14


def fine_cnn_stage(model: nn.Module, input_size, min_cells: int = MIN_CELLS) -> Optional[str]:
    """For a CNN, the deepest feature stage (timm's ``feature_info`` after the stem) whose map has at least
    ``min_cells`` cells along the shorter side of an ``input_size`` (H, W) image, as a module path; None for a
    ViT, or when no stage is that fine (the layout's default, the last stage, stays).

    Why the atlas does not take the CNN's last stage: its map is too coarse to share energy between a small
    trait and its host. On the demo's tiny CNN (64 px) the last stage is 8×8 (one cell = 8 px, wider than a
    crest or an eye ring) and ``layer1`` 16×16; with ``layer1`` Finer-CAM's precision@1 over the 12 sibling
    pairs rose from 0.417 to 0.750 / 0.667 / 0.750 (classifiers of training seeds 0 / 1 / 2), Grad-CAM's from
    0.25-0.33 to 0.33 (tests/claims/test_atlas.py). The interventions do not depend on the layer.
    """
    from traitlens.backbones import layout
    from traitlens.backbones.layout import find_backbone

    try:
        if layout(model).family != "cnn":
            return None
    except UserError:
        return None
    net, prefix = find_backbone(model)
    info = net.feature_info
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    short = min(int(n) for n in input_size[-2:])
    # timm lists the stem first (its edge filters see no parts); the stages come after it
    fine = [e for e in entries[1:] if short // int(e["reduction"]) >= min_cells]
    return prefix + fine[-1]["module"] if fine else None


def resolved_settings(model: nn.Module, input_size, options: EvidenceOptions) -> Dict[str, object]:
    """``{"scale", "target_layer"}``: the options' own, else what traitlens recommends for ``model`` (for a
    CNN, the stage of :func:`fine_cnn_stage` when one is fine enough)."""
    from traitlens.explain.evaluate import recommended_settings

    rec = recommended_settings(model, input_size)
    layer = options.target_layer
    if layer is None:
        layer = fine_cnn_stage(model, input_size) or rec["target_layer"]
    return {"scale": float(options.scale if options.scale is not None else rec["scale"]), "target_layer": layer}


def part_onehot(part_maps: torch.Tensor, num_parts: int) -> torch.Tensor:
    """B×H×W ids → B×P×H×W float one-hot of the parts 1..P (the background and ids above P dropped)."""
    ids = part_maps.long().clamp(0, num_parts + 1)
    onehot = F.one_hot(ids, num_parts + 2)[..., 1:num_parts + 1]
    return onehot.permute(0, 3, 1, 2).float()


def energy_shares(maps: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """...×B×H×W maps and B×P×H×W part masks → ...×B×P: each part's share of the map's energy."""
    energy = torch.einsum("...bhw,bphw->...bp", maps, onehot)
    return energy / maps.flatten(-2).sum(-1)[..., None].clamp(min=1e-12)


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """N×H×W float {0, 1} → dilated by a (2r+1)² square."""
    return F.max_pool2d(masks[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]


def random_regions(onehot: torch.Tensor, foreground: torch.Tensor, generator: Optional[torch.Generator] = None,
                   seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A random blob of the same pixel count as each part, on the rest of the specimen: B×P×H×W float.

    A smooth random field (8×8 noise, bilinear) ranks the pixels; the part's own pixels come last and the
    background after the rest of the specimen, so the control removes as much as the part does, elsewhere on
    the specimen (spilling onto the background only when the specimen has too few pixels left). ``seeds`` (one
    per image) draw each image's field from its own generator, so a result does not depend on which batch or
    shard the image was in.
    """
    b, p, h, w = onehot.shape
    if seeds is not None:
        noise = torch.cat([torch.rand(p, 1, 8, 8, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    else:
        noise = torch.rand(b * p, 1, 8, 8, generator=generator)
    noise = noise.to(onehot.device)
    field = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False).view(b, p, h, w)
    field = field + 2.0 * foreground[:, None].float() - 4.0 * onehot
    flat = field.flatten(2)
    count = onehot.flatten(2).sum(-1).long()  # B×P
    ordered = flat.sort(dim=-1, descending=True).values
    kth = ordered.gather(-1, (count - 1).clamp(min=0)[..., None])
    region = (flat >= kth) & (count[..., None] > 0)
    return region.view(b, p, h, w).float()


def control_seed(seed: int, draw: int) -> int:
    """The seed of an image's ``draw``-th control region (draw 0: the image's own seed)."""
    return (int(seed) + 1_000_003 * int(draw)) % (2 ** 32)


def removed_images(images: torch.Tensor, masks: torch.Tensor, foreground: torch.Tensor, options: EvidenceOptions,
                   blurred: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Images with a region removed: images N×3×H×W, masks N×H×W float, foreground N×H×W → N×3×H×W.

    ``inpaint``: the region takes the mean colour of the specimen's pixels in a ring around it (all ring
    pixels when none of them is on the specimen); ``blur``: the region shows ``blurred`` (the blurred image).
    """
    if options.removal == "blur":
        return images * (1 - masks[:, None]) + blurred * masks[:, None]
    ring = _dilate(masks, options.ring) - masks
    on_specimen = ring * foreground
    ring = torch.where(on_specimen.flatten(1).sum(1)[:, None, None] > 0, on_specimen, ring)
    colour = torch.einsum("nchw,nhw->nc", images, ring) / ring.flatten(1).sum(1)[:, None].clamp(min=1e-6)
    return images * (1 - masks[:, None]) + colour[:, :, None, None] * masks[:, None]


def pair_margin(probs: torch.Tensor, own: torch.Tensor, other: torch.Tensor, mode: str = "pair") -> torch.Tensor:
    """p(A) − p(B) for N×K probabilities and N×1 class ids → N. ``pair``: the probabilities renormalised over
    the two species, (p_A − p_B) / (p_A + p_B) = 2σ(z_A − z_B) − 1, so evidence that moves mass to a third
    species does not count as telling A from B; ``all``: the plain softmax over every class."""
    pa, pb = probs.gather(1, own)[:, 0], probs.gather(1, other)[:, 0]
    if mode == "all":
        return pa - pb
    return (pa - pb) / (pa + pb).clamp(min=1e-12)


@torch.no_grad()
def _probs(model: nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([model(images[i:i + chunk]).float().softmax(1) for i in range(0, len(images), chunk)])


def image_evidence(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, part_maps: torch.Tensor,
                   partners: torch.Tensor, num_parts: int, options: EvidenceOptions = EvidenceOptions(),
                   generator: Optional[torch.Generator] = None, settings: Optional[dict] = None,
                   only_correct: bool = True, seeds: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """The evidence of one batch (see the module docstring).

    images B×3×H×W (normalised), labels B (species A of each image, model class ids), part_maps B×H×W ids,
    partners B×J model class ids (-1: no partner in that slot), num_parts P (parts 1..P are scored).
    only_correct: take the evidence only for images the model classifies correctly (the atlas uses no other).
    seeds: one per image for its random control region (:func:`random_regions`; default: ``generator``).
    Returns CPU tensors: ``prob`` B×K, ``area`` B×P, ``gradcam``/``heads`` B×P (``heads`` only for a model with
    ``identify_traits``), ``finer``/``drop``/``random`` J×B×P (NaN where the slot is empty, the part absent
    or the image left out), ``margin`` J×B (p(A) − p(B) of the intact image).

    The CAMs are taken at ``settings["scale"]`` (a finer patch grid for small parts); the model's prediction
    and the interventions use the images as given, at the size the model was trained on.
    """
    if options.removal not in REMOVALS:
        raise UserError(f"unknown removal {options.removal!r}; choose one of {', '.join(REMOVALS)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    model.eval()
    settings = settings or resolved_settings(model, images.shape[-2:], options)
    x, parts = images.to(device), part_maps.to(device).long()
    labels, partners = labels.to(device), partners.to(device)
    b, j = partners.shape
    onehot = part_onehot(parts, num_parts)  # B×P×H×W
    area = onehot.mean((2, 3))
    probs = _probs(model, x, options.chunk)  # B×K, the intact images
    out = {"prob": probs, "area": area}
    for name, shape in (("gradcam", (b, num_parts)), ("finer", (j, b, num_parts)), ("drop", (j, b, num_parts)),
                        ("random", (j, b, num_parts))):
        out[name] = torch.full(shape, float("nan"), device=device)
    if hasattr(model, "identify_traits"):
        out["heads"] = torch.full((b, num_parts), float("nan"), device=device)
    rows_b = torch.arange(b, device=device)
    out["margin"] = torch.stack([torch.where(partners[:, s] >= 0, pair_margin(
        probs, labels[:, None], partners[:, s, None].clamp(min=0), options.margin), torch.nan) for s in range(j)])
    keep = (probs.argmax(1) == labels) if only_correct else torch.ones_like(labels, dtype=torch.bool)
    keep &= (partners >= 0).any(1)
    sel = keep.nonzero(as_tuple=True)[0]
    if len(sel):
        found = _evidence(model, x[sel], labels[sel], parts[sel], partners[sel], num_parts, probs[sel], options,
                          generator, settings, None if seeds is None else [seeds[i] for i in sel.tolist()])
        for name, value in found.items():
            if out[name].dim() == 3:
                out[name][:, sel] = value
            else:
                out[name][sel] = value
    return {k: v.detach().float().cpu() for k, v in out.items()}


def _scaled(x: torch.Tensor, parts: torch.Tensor, scale: float):
    if scale == 1.0:
        return x, parts
    size = [int(round(scale * n)) for n in x.shape[-2:]]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x, F.interpolate(parts[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _evidence(model, x, labels, parts, partners, num_parts, probs, options, generator, settings, seeds):
    """:func:`image_evidence` for the images it keeps (same shapes, B = those images)."""
    from traitlens.explain import explain
    from traitlens.explain.metrics import gaussian_blur

    device = x.device
    b, j = partners.shape
    nan = torch.tensor(float("nan"), device=device)
    num_classes = probs.shape[1]
    onehot = part_onehot(parts, num_parts)  # B×P×H×W at the model's size
    present = onehot.flatten(2).sum(-1) > 0
    out: Dict[str, torch.Tensor] = {}

    # CAMs: one explain call per partner slot gives Grad-CAM (α = 0) and Finer-CAM (α = 1) together.
    xs, parts_s = _scaled(x, parts, settings["scale"])
    onehot_s = part_onehot(parts_s, num_parts)
    finer = torch.full((j, b, num_parts), float("nan"), device=device)
    gradcam = None
    for slot in range(j):
        valid = partners[:, slot] >= 0
        if not valid.any() and gradcam is not None:
            continue
        # an empty slot still needs some other class for the call; its maps are discarded
        refs = torch.where(valid, partners[:, slot], (labels + 1) % num_classes)[:, None]
        try:
            e = explain(model, xs, alpha=[0.0, 1.0], target=labels, references=refs,
                        target_layer=settings["target_layer"])
        except UserError:
            if not hasattr(model, "identify_traits"):
                raise
            # Prompt-CAM runs its blocks outside their modules' forward: no layer to hook. Its heads are the
            # model's own evidence; the CAM figures stay NaN.
            gradcam = torch.full((b, num_parts), float("nan"), device=device)
            break
        shares = energy_shares(e.maps, onehot_s)  # 2×B×P
        if gradcam is None:
            gradcam = shares[0]
        finer[slot] = torch.where(valid[:, None], shares[1], nan)
    out["gradcam"] = torch.where(present, gradcam, nan)
    out["finer"] = torch.where(present[None], finer, nan)

    if hasattr(model, "identify_traits"):
        from traitlens.explain.engine import upsample

        with torch.no_grad():
            found = model.identify_traits(xs, labels, top_k=min(options.top_heads, int(model.num_heads)))
            heads = upsample(found.aggregate().float(), xs.shape[-2:])
        out["heads"] = torch.where(present, energy_shares(heads, onehot_s), nan)

    # Interventions: every present part and its control regions, all partners read from one softmax.
    foreground = (parts > 0).float()
    draws = max(1, int(options.controls))
    controls = [random_regions(onehot, foreground, generator, None if seeds is None else [control_seed(s, k) for s in seeds])
                for k in range(draws)]
    bi, pi = present.nonzero(as_tuple=True)
    n = len(bi)
    masks = torch.cat([onehot[bi, pi]] + [c[bi, pi] for c in controls])  # (1 + draws)·N×H×W
    rows = bi.repeat(1 + draws)
    blurred = gaussian_blur(x, options.sigma) if options.removal == "blur" else None
    after = torch.empty(len(rows), num_classes, device=device)
    for s in range(0, len(rows), options.chunk):
        r = rows[s:s + options.chunk]
        edited = removed_images(x[r], masks[s:s + options.chunk], foreground[r], options,
                                None if blurred is None else blurred[r])
        after[s:s + options.chunk] = _probs(model, edited, options.chunk)
    drop = torch.full((j, b, num_parts), float("nan"), device=device)
    rand = torch.full((j, b, num_parts), float("nan"), device=device)
    rows_b = torch.arange(b, device=device)
    for slot in range(j):
        valid = partners[:, slot] >= 0
        partner = partners[:, slot].clamp(min=0)
        if n == 0:
            continue
        own, other = labels[bi, None], partner[bi, None]
        m0 = pair_margin(probs[bi], own, other, options.margin)
        m_part = pair_margin(after[:n], own, other, options.margin)
        m_rand = torch.stack([pair_margin(after[(k + 1) * n:(k + 2) * n], own, other, options.margin)
                              for k in range(draws)]).mean(0)
        ok = valid[bi]
        drop[slot, bi, pi] = torch.where(ok, m0 - m_part, nan)
        rand[slot, bi, pi] = torch.where(ok, m0 - m_rand, nan)
    out.update(drop=drop, random=rand)
    return out
