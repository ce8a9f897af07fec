"""The training loop every traitlens model goes through: ``fit(config) -> result``.

One epoch: the (seed, epoch) permutation of the training split, cut into global batches
(:class:`~traitlens.engine.distributed.ShardedSampler`), augmentation seeded per
(seed, epoch, index) by the dataset; per step a warm-up + cosine (or step) learning rate, a
forward pass under autocast on GPU, cross-entropy, backward, optional gradient clipping and the
optimizer step. After the epoch: evaluation on the validation split, the best checkpoint (by
validation top-1, never test) written to ``run_dir/model.*``, a row in ``log.csv`` / ``log.jsonl``,
and the resume state in ``run_dir/last/``.

Because the data order, augmentation and learning rate are functions of (seed, epoch, step) and
the RNG is restored, a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from traitlens.engine import checkpoint as ckpt
from traitlens.engine import distributed
from traitlens.engine.config import TrainConfig, save_config
from traitlens.engine.evaluate import evaluate
from traitlens.engine.methods import build_model
from traitlens.errors import UserError
from traitlens.progress import bar, log

LOG_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "val_loss",
               "val_n", "best", "skipped", "seconds"]
# Config keys that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "eval_every", "save_every", "eval_batch_size", "out"}


# ---------------------------------------------------------------------------------------------
# Data


class SplitView(Dataset):
    """A dataset restricted to the samples at ``indices`` (labels and sample indices unchanged).

    Trains on a subset of the classes in the full label space. ``set_epoch`` is passed through, so
    augmentation stays seeded by the underlying dataset's (seed, epoch, index).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def split_classes(root: Path, split: str) -> List[str]:
    """The class folders of ``root/split``, sorted."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"split {split!r} not found: {folder} is not a folder")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_split(root: Path, split: str, transform, seed: int, class_names: Optional[Sequence[str]] = None,
               keep: Optional[Sequence[str]] = None) -> Dataset:
    """``root/split`` as an ImageFolderDataset, labels in ``class_names`` order, restricted to ``keep``.

    Without ``class_names`` the split's own (sorted) classes are the label space. A class of the
    split that ``class_names`` lacks is a :class:`UserError` (the model has no output for it).
    """
    from traitlens.data.folders import ImageFolderDataset

    own = split_classes(root, split)
    names = list(class_names) if class_names is not None else own
    missing = [c for c in own if c not in names]
    if missing:
        raise UserError(f"{Path(root) / split} has class(es) the model does not know: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    dataset = ImageFolderDataset(root, split=split, transform=transform, classes=names, masks=None, seed=seed)
    if keep is None:
        return dataset
    unknown = [c for c in keep if c not in names]
    if unknown:
        raise UserError(f"classes {', '.join(unknown)} are not classes of {Path(root) / split}")
    allowed = {names.index(c) for c in keep}
    indices = [i for i, y in enumerate(dataset.targets) if y in allowed]
    if not indices:
        raise UserError(f"no images of classes {', '.join(keep)} in {Path(root) / split}")
    return SplitView(dataset, indices)


def _data_config(model: nn.Module, config: TrainConfig) -> dict:
    from traitlens import backbones

    dc = dict(backbones.data_config(model))
    if config.image_size is not None:
        dc["input_size"] = (3, int(config.image_size), int(config.image_size))
    return dc


def eval_transform(model: nn.Module, config: TrainConfig):
    from traitlens.data.transforms import from_data_config

    return from_data_config(_data_config(model, config), train=False)


def train_transform(model: nn.Module, config: TrainConfig):
    from traitlens.data.transforms import from_data_config

    return from_data_config(_data_config(model, config), train=config.augment, seed=config.seed)


def _collate():
    from traitlens.data.folders import collate

    return collate


# ---------------------------------------------------------------------------------------------
# Optimisation


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of each group's base learning rate at optimizer step ``step`` (0-based)."""
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if config.scheduler == "cosine":
        total = config.epochs * steps_per_epoch
        t = min(1.0, (step - warm) / max(1, total - warm))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if config.scheduler == "step":
        return config.gamma ** ((step // steps_per_epoch) // config.step_size)
    return 1.0


def make_optimizer(groups: List[dict], config: TrainConfig) -> torch.optim.Optimizer:
    groups = [dict(g) for g in groups]
    for g in groups:
        g.setdefault("lr", config.lr)
        g.setdefault("weight_decay", config.weight_decay)
        g["base_lr"] = float(g["lr"])
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def amp_dtype(config: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs, off on CPU."""
    if config.amp == "off":
        return None
    if config.amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if config.amp == "fp16" and device.type != "cuda":
        raise UserError("amp fp16 needs a CUDA device; use amp bf16 or off on the CPU")
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except modules whose parameters are all frozen stay in eval mode.

    A frozen backbone keeps its BatchNorm statistics and turns off its dropout, as a linear probe
    (or Prompt-CAM's frozen ViT) should.
    """
    model.train()

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------
# Logs


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_logs(run_dir: Path, history: List[dict]) -> None:
    """Rewrite ``log.csv`` and ``log.jsonl`` from the rows of all epochs so far."""
    with (run_dir / "log.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LOG_COLUMNS)
        for row in history:
            writer.writerow([_fmt(row.get(c)) for c in LOG_COLUMNS])
    with (run_dir / "log.jsonl").open("w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def _write_skipped(run_dir: Path, skipped: List[dict]) -> None:
    path = run_dir / "skipped.jsonl"
    if not skipped and not path.exists():
        return
    with path.open("w") as fh:
        for row in skipped:
            fh.write(json.dumps(row) + "\n")


def _clear_run(run_dir: Path) -> None:
    """Remove what an earlier run in ``run_dir`` wrote, so a fresh start never mixes with it."""
    for name in (ckpt.STATE_DIR, ckpt.STATE_DIR + ".old", ckpt.STATE_DIR + ".tmp"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (ckpt.WEIGHTS, ckpt.SIDECAR, "log.csv", "log.jsonl", "skipped.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    import yaml

    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = config.to_dict()
    changed = [k for k in now if k not in RESUMABLE_CHANGES and k in saved and saved[k] != now[k]]
    if changed:
        k = changed[0]
        raise UserError(f"{run_dir} holds a run with a different config ({k}: {saved[k]!r} there, {now[k]!r} now); "
                        "choose another --out, or --restart to overwrite it")


# ---------------------------------------------------------------------------------------------
# fit


def fit(config: TrainConfig, progress: bool = True, resume: Optional[bool] = None) -> Dict[str, Any]:
    """Train ``config.method`` on ``config.data`` and write the run to ``config.out``.

    ``resume``: True continues ``out/last`` (error when there is none), False starts afresh
    (overwriting), None (default) continues when ``out`` holds an interrupted run of the same
    config and starts afresh otherwise. Under ``torchrun`` every process calls ``fit``; only rank 0
    writes. Returns ``{"run_dir", "best": {"epoch", "metrics"}, "final": last log row,
    "history": rows, "class_names", "skipped"}``.
    """
    if not config.data:
        raise UserError("no training data: set data (--data DIR)")
    if not config.out:
        raise UserError("no output folder: set out (--out DIR)")
    data, run_dir = Path(config.data), Path(config.out)
    if not data.is_dir():
        raise UserError(f"data folder {data} not found")
    ctx = distributed.setup(config.device)
    device = ctx.device
    show = progress and ctx.main

    state_dir = ckpt.state_folder(run_dir)
    if resume is True and state_dir is None:
        raise UserError(f"nothing to resume in {run_dir}: no last/state.json (start without --resume)")
    if resume is None:
        resume = state_dir is not None
    resume = bool(distributed.broadcast_object(resume))  # rank 0 decides, before it clears anything
    if resume:
        _check_resumable(run_dir, config)

    seed_everything(config.seed)
    class_names = split_classes(data, config.train_split)
    model, groups = build_model(config, len(class_names))
    model.to(device)
    train_set = open_split(data, config.train_split, train_transform(model, config), config.seed, class_names,
                           keep=config.classes)
    val_set = None
    if config.val_split and (data / config.val_split).is_dir():
        val_set = open_split(data, config.val_split, eval_transform(model, config), config.seed, class_names,
                             keep=config.classes)
    elif ctx.main:
        log(f"no validation split {data / str(config.val_split)}: the last epoch's weights are kept")

    batch_size = config.batch_size
    sampler = distributed.ShardedSampler(len(train_set), batch_size, config.seed, ctx.rank, ctx.world)
    steps_per_epoch = len(sampler)
    optimizer = make_optimizer(groups, config)
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    start_epoch, step, history, best, skipped = 0, 0, [], None, []
    if resume:
        info = ckpt.load_training_state(run_dir, model, optimizer, scaler)
        start_epoch, step = int(info["epoch"]), int(info["step"])
        history, best, skipped = list(info["history"]), info.get("best"), list(info.get("skipped", []))
        if ctx.main:
            log(f"resuming {run_dir} after epoch {start_epoch} (step {step})")
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _clear_run(run_dir)
        save_config(config, run_dir / "config.yaml")
    distributed.barrier()

    net = distributed.wrap(model, ctx)
    collate = _collate()
    meta_base = {"method": config.method, "class_names": class_names, "num_classes": len(class_names),
                 "config": config.to_dict(), "trained_classes": list(config.classes) if config.classes else None}
    eval_bs = config.eval_batch_size or batch_size

    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers, collate_fn=collate,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        set_train_mode(model)
        # loss sum, correct, count; kept on the device so a step never waits for the GPU
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        epoch_skipped: List = []
        pbar = bar(steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False) \
            if show else _NoBar()
        for batch in loader:
            factor = lr_factor(step, steps_per_epoch, config)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            epoch_skipped.extend(batch.get("skipped") or [])
            weight = 1.0
            if "image" in batch and batch["image"].shape[0] > 0:
                images = batch["image"].to(device, non_blocking=True)
                labels = torch.as_tensor(batch["label"]).long().to(device, non_blocking=True)
            else:
                # Every image of this micro-batch was unreadable: step with a zero loss so that all
                # processes still take part in the gradient exchange.
                images = torch.zeros(1, 3, *_data_config(model, config)["input_size"][1:], device=device)
                labels = torch.zeros(1, dtype=torch.long, device=device)
                weight = 0.0
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = net(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing) * weight
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if weight:
                n = labels.numel()
                correct = (logits.detach().argmax(1) == labels).sum()
                totals += torch.stack([loss.detach().double() * n, correct.double(),
                                       torch.tensor(float(n), dtype=torch.float64, device=device)])
                if show and (step % 10 == 0 or step % steps_per_epoch == 0):
                    t = totals.tolist()
                    pbar.set_postfix(loss=f"{t[0] / max(1, t[2]):.3f}", acc=f"{t[1] / max(1, t[2]):.3f}")
            pbar.update(1)
        pbar.close()
        distributed.all_reduce_sum(totals)
        totals = totals.cpu()
        seen = {(s["split"], s["path"]) for s in skipped}
        for part in distributed.gather_objects(epoch_skipped):
            for p, r in part:
                if (config.train_split, p) not in seen:
                    seen.add((config.train_split, p))
                    skipped.append({"epoch": epoch + 1, "split": config.train_split, "path": p, "reason": r})

        row: Dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[-1]["lr"],
            "train_loss": float(totals[0] / max(1, totals[2])), "train_acc": float(totals[1] / max(1, totals[2])),
            "train_n": int(totals[2]),
        }
        last_epoch = epoch + 1 == config.epochs
        metrics = None
        if val_set is not None and ((epoch + 1) % config.eval_every == 0 or last_epoch):
            metrics = evaluate(model, val_set, device, batch_size=eval_bs, num_workers=config.num_workers,
                               num_classes=len(class_names), amp_dtype=dtype, show_progress=show)
            seen = {(s["split"], s["path"]) for s in skipped}
            skipped.extend({"epoch": epoch + 1, "split": config.val_split, "path": p, "reason": r}
                           for p, r in metrics.get("skipped", []) if (config.val_split, p) not in seen)
            row.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
                       val_n=metrics["n"], val_mean_class_accuracy=metrics["mean_class_accuracy"])
        row["skipped"] = len(skipped)
        improved = False
        if val_set is None:
            improved = last_epoch
        elif metrics is not None:
            key = (metrics["top1"], -metrics["loss"])
            improved = best is None or key > (best["metrics"]["val_top1"], -best["metrics"]["val_loss"])
        row["best"] = improved or (best is not None and best["epoch"] == row["epoch"])
        row["seconds"] = round(time.time() - started, 3)
        if improved:
            best = {"epoch": epoch + 1, "metrics": {k: v for k, v in row.items() if k not in ("best", "seconds")}}
            if ctx.main:
                ckpt.save_checkpoint(run_dir, model, dict(meta_base, metrics=best["metrics"], epoch=epoch + 1,
                                                          selected_on=config.val_split if val_set else "last epoch",
                                                          complete=False))
        history.append(row)
        if ctx.main:
            write_logs(run_dir, history)
            _write_skipped(run_dir, skipped)
            summary = f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
            if metrics is not None:
                summary += f", val top-1 {metrics['top1']:.3f}{' (best)' if improved else ''}"
            if show:
                log(summary)
            if (epoch + 1) % config.save_every == 0 or last_epoch:
                ckpt.save_training_state(run_dir, model, optimizer,
                                         {"epoch": epoch + 1, "step": step, "history": history, "best": best,
                                          "skipped": skipped, "config": config.to_dict()}, scaler)
        distributed.barrier()

    if ctx.main and best is not None:
        # Mark the selected checkpoint complete, so a cache that checks for it knows the run ended.
        meta = json.loads((run_dir / ckpt.SIDECAR).read_text())
        meta["complete"] = True
        meta["final_metrics"] = history[-1] if history else None
        (run_dir / ckpt.SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        if skipped:
            log(f"skipped {len(skipped)} unreadable image(s); listed in {run_dir / 'skipped.jsonl'}")
    distributed.barrier()
    return {"run_dir": str(run_dir), "best": best, "final": history[-1] if history else None,
            "history": history, "class_names": class_names, "skipped": len(skipped)}
