"""Cycle-consistent fine-tuning with one labelled image (the SST paper's cycle loss).

Propagate support → query, reset the memory, propagate the query's *soft* prediction back onto the support,
and compare the reconstruction with the support's true mask (BCE + Dice over the trait channels). Nothing
but the support's own labels is needed. The image encoder stays frozen; what trains depends on the backend:

- label propagation: a small 1×1 projection on top of the features (:class:`FeatureProjection`), on CPU;
- SAM 2: memory attention, memory encoder and mask decoder, or only LoRA adapters on their attention
  projections (:func:`add_lora`), through SAM 2's differentiable tracking step.

Optimiser: AdamW with a cosine schedule.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from traitlens.segment.propagator import Propagator, one_hot
from traitlens.segment.tracking import Support, cycle_predict


def cycle_loss(reconstruction: torch.Tensor, labels: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE + Dice between a soft reconstruction ``(K+1)×H×W`` and the true ``H×W`` labels (trait channels)."""
    k = reconstruction.shape[0]
    target = one_hot(labels.to(reconstruction.device), k)[1:]
    probs = reconstruction[1:].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(probs, target)
    inter = (probs * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (probs.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)
    present = target.flatten(1).sum(1) > 0  # traits absent from the support carry no Dice term
    dice = dice[present].mean() if present.any() else dice.new_zeros(())
    return bce + dice_weight * dice


class FeatureProjection(torch.nn.Module):
    """A residual 1×1 projection of ``B×D×h×w`` features, initialised to the identity."""

    def __init__(self, dim: int, out_dim: Optional[int] = None):
        super().__init__()
        out_dim = out_dim or dim
        self.proj = torch.nn.Conv2d(dim, out_dim, 1, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            eye = torch.eye(out_dim, dim)
            self.proj.weight.copy_(eye[:, :, None, None])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)


class LoRALinear(torch.nn.Module):
    """``W x + (α/r) · B A x`` around a frozen ``nn.Linear``; B starts at zero (the model is unchanged)."""

    def __init__(self, base: torch.nn.Linear, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)


def add_lora(model: torch.nn.Module, rank: int = 4, alpha: float = 8.0,
             targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
             within: Sequence[str] = ("memory_attention", "mask_decoder")) -> List[torch.nn.Parameter]:
    """Freeze ``model`` and wrap the attention projections under ``within`` with LoRA; returns the new parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: List[torch.nn.Parameter] = []
    for name, module in list(model.named_modules()):
        if not any(name == w or name.startswith(w + ".") for w in within):
            continue
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                lora = LoRALinear(child, rank, alpha).to(child.weight.device)
                setattr(module, child_name, lora)
                params += [lora.lora_a, lora.lora_b]
    if not params:
        raise ValueError(f"no Linear named {', '.join(targets)} under {', '.join(within)}")
    return params


def cycle_finetune(propagator: Propagator, params: Iterable[torch.nn.Parameter], support: Support,
                   queries: Sequence[torch.Tensor], steps: int = 50, lr: float = 1e-3, weight_decay: float = 1e-4,
                   num_labels: Optional[int] = None, seed: int = 0, on_step=None, resume: Optional[dict] = None,
                   on_checkpoint=None, checkpoint_every: int = 10) -> List[float]:
    """Train ``params`` by the cycle loss over ``queries`` (frames ``3×H×W``); returns the loss per step.

    ``propagator`` must be differentiable (label propagation with a ``projection``, or
    ``Sam2Propagator(differentiable=True)``). ``on_step(step, loss)`` is called after every step.
    ``on_checkpoint(state)`` gets a :func:`training_state` every ``checkpoint_every`` steps and after the last;
    ``resume`` (such a state, e.g. from :func:`load_training_state`) continues where it stopped: the query
    order depends only on ``seed``, so a resumed run takes the same steps as an uninterrupted one.
    """
    if not propagator.differentiable():
        raise ValueError("the propagator does not keep gradients: give label propagation a projection, "
                         "or build Sam2Propagator(differentiable=True)")
    if not queries:
        raise ValueError("cycle fine-tuning needs at least one unlabelled query image")
    params = [p for p in params if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(seed))
    labels = support[1]
    k = num_labels or 1 + int(labels.max())
    losses: List[float] = []
    if resume is not None:
        if len(resume["params"]) != len(params) or any(a.shape != b.shape for a, b in zip(resume["params"], params)):
            raise ValueError("the saved fine-tuning state holds other parameters than this propagator trains")
        with torch.no_grad():
            for p, saved in zip(params, resume["params"]):
                p.copy_(saved.to(p.device))
        optimiser.load_state_dict(resume["optimiser"])
        schedule.load_state_dict(resume["schedule"])
        losses = list(resume["losses"])
    for step in range(len(losses), steps):
        query = queries[int(order[step % len(queries)])]
        _, back = cycle_predict(propagator, support, query, num_labels=k)
        loss = cycle_loss(back, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
        if on_checkpoint is not None and (len(losses) % max(checkpoint_every, 1) == 0 or len(losses) == steps):
            on_checkpoint(training_state(params, optimiser, schedule, losses))
    return losses


def training_state(params: Sequence[torch.nn.Parameter], optimiser, schedule, losses: Sequence[float]) -> dict:
    """What a resumed :func:`cycle_finetune` needs: the trained tensors, the optimiser and schedule, the losses."""
    import copy

    # A copy: the optimiser's state dict holds its live moment tensors, which the next steps change in place.
    return {"params": [p.detach().cpu().clone() for p in params], "optimiser": copy.deepcopy(optimiser.state_dict()),
            "schedule": copy.deepcopy(schedule.state_dict()), "losses": list(losses)}


def save_training_state(state: dict, path, options: dict) -> None:
    """Write ``state`` with the run's ``options`` to ``path``, whole or not at all (a kill mid-write keeps the
    previous one)."""
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({**state, "options": dict(options)}, tmp)
    tmp.replace(path)


def load_training_state(path, options: dict) -> Optional[dict]:
    """The state at ``path`` if it exists and was written with the same ``options`` (None when absent). Read
    with ``weights_only=True``: tensors, numbers and lists only, never arbitrary objects."""
    from pathlib import Path

    from traitlens.errors import UserError

    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("options", {})
    changed = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
    if changed:
        raise UserError(f"{path} was written with other options ({', '.join(changed)}): rerun with the same "
                        "options to resume, or pass --restart to start again")
    return state


def projection_state(projection: FeatureProjection) -> Dict[str, torch.Tensor]:
    """The projection's weights for a safetensors file (``proj.weight``: D'×D×1×1)."""
    return {k: v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}


def trainable_parameters(propagator: Propagator, backend: str, lora: int = 0) -> List[torch.nn.Parameter]:
    """What cycle fine-tuning trains: label propagation's projection; SAM 2's LoRA adapters of rank ``lora``
    (added here), or with ``lora=0`` its memory and decoder weights (the image encoder frozen)."""
    if backend != "sam2":
        return list(propagator.projection.parameters())
    if lora:
        return add_lora(propagator.model, rank=lora)
    from traitlens.segment.sam2 import freeze_image_encoder

    freeze_image_encoder(propagator.model)
    return propagator.trainable_parameters()


def save_finetuned(propagator: Propagator, backend: str, out, lora: int = 0) -> str:
    """Write what :func:`trainable_parameters` trained into folder ``out``: ``projection.safetensors``
    (label propagation), ``lora.safetensors`` (SAM 2 with LoRA) or a ``sam2/`` checkpoint; returns its path."""
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if backend != "sam2":
        path = out / "projection.safetensors"
        save_file(projection_state(propagator.projection), str(path))
    elif lora:
        path = out / "lora.safetensors"
        save_file({n: p.detach().cpu().contiguous() for n, p in propagator.model.named_parameters() if "lora_" in n},
                  str(path))
    else:
        path = out / "sam2"
        propagator.model.save_pretrained(path)
    return str(path)
