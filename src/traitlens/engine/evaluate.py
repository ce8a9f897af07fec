"""Evaluation: top-1/top-5, per-class accuracy and the confusion matrix of a classifier.

:func:`evaluate` runs a model over a dataset (sharded across processes under ``torchrun``, without
padding, gathered on every rank) or over a DataLoader the caller built; :func:`metrics_from_logits`
is the pure tensor-in, numbers-out core. :func:`evaluate_on_split` scores a loaded checkpoint on
a split of an ImageFolder tree, matching classes by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from traitlens.engine import distributed
from traitlens.engine.data import collate_fn, eval_transform, open_split
from traitlens.progress import progress


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None,
                        class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Accuracy numbers of ``logits`` (N×C) against ``labels`` (N).

    Returns ``n``, ``top1``, ``top5`` (top-min(5, C)), ``loss`` (cross-entropy), ``per_class``
    (accuracy of each true class, None for a class without samples), ``mean_class_accuracy`` and
    ``confusion`` (C×C list, rows = true class, columns = predicted class).
    """
    logits = logits.detach().float().cpu()
    labels = labels.detach().long().cpu()
    c = int(num_classes or logits.shape[1])
    n = int(labels.numel())
    out: Dict[str, Any] = {"n": n}
    if n == 0:
        out.update(top1=float("nan"), top5=float("nan"), loss=float("nan"), per_class=[None] * c,
                   mean_class_accuracy=float("nan"), confusion=[[0] * c for _ in range(c)])
        return out
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    pred = logits.argmax(dim=1)  # first of tied maxima, deterministically
    out["top1"] = float((pred == labels).float().mean())
    out["top5"] = float((top == labels[:, None]).any(dim=1).float().mean())
    out["loss"] = float(F.cross_entropy(logits, labels))
    confusion = torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
    support = confusion.sum(dim=1)
    per_class = [float(confusion[i, i] / support[i]) if support[i] > 0 else None for i in range(c)]
    present = [a for a in per_class if a is not None]
    out["per_class"] = per_class
    out["mean_class_accuracy"] = float(sum(present) / len(present))
    out["confusion"] = confusion.tolist()
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def _loader(data, batch_size: int, num_workers: int, sharded: bool) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    indices = list(range(len(data)))
    if sharded:
        indices = distributed.shard(indices)
    return DataLoader(data, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                      collate_fn=collate_fn(), persistent_workers=False)


@torch.no_grad()
def predict(model: nn.Module, data, device="cpu", batch_size: int = 64, num_workers: int = 0,
            amp_dtype: Optional[torch.dtype] = None, desc: str = "evaluate", show_progress: bool = True,
            sharded: bool = True) -> Dict[str, Any]:
    """Logits of every sample: ``{"index": N, "logits": N×C, "label": N, "skipped": [(path, reason)]}``.

    A dataset is split across processes (:func:`distributed.shard`) and the pieces gathered and
    put back in dataset order on every rank; a DataLoader is run as given on this process only.
    """
    device = torch.device(device)
    model = distributed.unwrap(model)
    was_training = model.training
    model.eval()
    is_loader = isinstance(data, DataLoader)
    loader = _loader(data, batch_size, num_workers, sharded and not is_loader)
    indices: List[torch.Tensor] = []
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    skipped: List = []
    items = progress(loader, desc=desc, unit="batch", leave=False) if show_progress else loader
    for batch in items:
        skipped.extend(batch.get("skipped") or [])
        if "image" not in batch or batch["image"].shape[0] == 0:
            continue  # every image of the batch was unreadable
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(images)
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long().cpu())
        index = batch.get("index")
        indices.append(torch.as_tensor(index).long().cpu() if index is not None
                       else torch.arange(len(images)) + sum(len(i) for i in indices))
    model.train(was_training)
    part = {
        "index": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        "logits": torch.cat(logits) if logits else torch.zeros(0, 0),
        "label": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        "skipped": skipped,
    }
    if is_loader or not sharded or distributed.world_size() == 1:
        return part
    parts = distributed.gather_objects(part)
    width = max(p["logits"].shape[1] for p in parts)
    kept = [p for p in parts if p["logits"].shape[0] > 0]
    index = torch.cat([p["index"] for p in kept]) if kept else torch.zeros(0, dtype=torch.long)
    order = index.argsort()
    return {
        "index": index[order],
        "logits": (torch.cat([p["logits"] for p in kept]) if kept else torch.zeros(0, width))[order],
        "label": (torch.cat([p["label"] for p in kept]) if kept else torch.zeros(0, dtype=torch.long))[order],
        "skipped": [s for p in parts for s in p["skipped"]],
    }


def evaluate(model: nn.Module, data, device="cpu", batch_size: int = 64, num_workers: int = 0,
             return_logits: bool = False, num_classes: Optional[int] = None,
             class_names: Optional[Sequence[str]] = None, amp_dtype: Optional[torch.dtype] = None,
             show_progress: bool = True) -> Dict[str, Any]:
    """Score ``model`` on ``data`` (a Dataset of sample dicts, or a DataLoader of collated batches).

    Returns :func:`metrics_from_logits`'s numbers plus ``skipped`` (unreadable images) and, with
    ``return_logits``, ``logits`` (N×C), ``labels`` and ``index`` in dataset order.
    """
    pred = predict(model, data, device, batch_size, num_workers, amp_dtype, show_progress=show_progress)
    c = num_classes or (pred["logits"].shape[1] if pred["logits"].numel() else None)
    if c is None:
        c = len(class_names) if class_names else 0
    out = metrics_from_logits(pred["logits"], pred["label"], c, class_names)
    out["skipped"] = [list(s) for s in pred["skipped"]]
    if return_logits:
        out.update(logits=pred["logits"], labels=pred["label"], index=pred["index"])
    return out


def evaluate_on_split(model: nn.Module, meta: Dict[str, Any], data, split: str = "test", device="cpu",
                      batch_size: int = 64, num_workers: int = 0, return_logits: bool = False,
                      show_progress: bool = True) -> Dict[str, Any]:
    """Score a checkpoint's loaded ``model`` (with its sidecar ``meta``) on ``data/<split>``.

    Classes are matched by name: every class of the split must be one the checkpoint knows; the confusion
    matrix is over all of the checkpoint's classes, in its order. (``traitlens.methods.evaluate_checkpoint``
    loads the checkpoint and calls this.)
    """
    from traitlens.engine.checkpoint import config_from_meta

    class_names = list(meta.get("class_names") or [])
    config = config_from_meta(meta)
    dataset = open_split(Path(data), split, eval_transform(model, config), config.seed, class_names)
    return evaluate(model, dataset, device, batch_size=batch_size, num_workers=num_workers,
                    return_logits=return_logits, num_classes=int(meta["num_classes"]), class_names=class_names,
                    show_progress=show_progress)
