"""The training loop every traitlens model goes through: ``fit(config, model, param_groups) -> result``.

``fit`` takes a built model (the method registry, :mod:`traitlens.methods`, builds it; ``traitlens.methods.train``
is build + fit) and runs these steps, each a function below:

- :func:`open_datasets`: the training split (seeded augmentation) and the validation split;
- :func:`make_optimization`: optimizer groups with their base lr, autocast dtype, gradient scaler;
- :func:`train_one_epoch`: the (seed, epoch) permutation of the training split cut into global batches
  (:class:`~traitlens.engine.distributed.ShardedSampler`); per step a warm-up + cosine (or step) learning rate,
  a forward pass under autocast on GPU, cross-entropy, backward, optional gradient clipping, the optimizer step;
- :func:`validate` and :func:`is_better`: the validation split scored, the best epoch selected by validation
  top-1 (then loss), never test;
- :func:`save_epoch`: the best checkpoint in ``run_dir/model.*``, a row in ``log.csv`` / ``log.jsonl``, the
  resume state in ``run_dir/last/`` (:func:`restore` reads it back).

Because the data order, augmentation and learning rate are functions of (seed, epoch, step) and the RNG is
restored, a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from traitlens.engine import checkpoint as ckpt
from traitlens.engine import distributed
from traitlens.engine.config import TrainConfig, save_config
from traitlens.engine.data import (  # noqa: F401 - re-exported: callers import these from here
    SplitView, collate_fn, data_config, eval_transform, has_split, open_split, split_classes, train_transform,
)
from traitlens.engine.evaluate import evaluate
from traitlens.errors import UserError
from traitlens.progress import bar, log

LOG_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_top1", "val_top5", "val_loss",
               "val_n", "best", "skipped", "seconds"]
# Config keys that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "eval_every", "save_every", "eval_batch_size", "out"}


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
                        "train into another folder, or start afresh (resume=False) to overwrite it")


# ---------------------------------------------------------------------------------------------
# The steps of fit


@dataclass
class Run:
    """What the steps of one training run share: set up once by :func:`fit`."""

    config: TrainConfig
    run_dir: Path
    ctx: distributed.DistContext
    model: nn.Module          # the plain model (checkpoints, evaluation)
    net: nn.Module            # what the forward pass goes through: the model, or its DDP wrapper
    class_names: List[str]
    batches: "BatchSource"
    val_set: Optional[Dataset]
    optimizer: torch.optim.Optimizer
    scaler: Any
    dtype: Optional[torch.dtype]
    show: bool                # progress bars and per-epoch lines (rank 0, progress on)

    @property
    def device(self) -> torch.device:
        return self.ctx.device


@dataclass
class RunState:
    """What changes from epoch to epoch, saved in ``run_dir/last`` and restored on resume."""

    epoch: int = 0            # epochs completed
    step: int = 0             # optimizer steps taken
    history: List[dict] = field(default_factory=list)
    best: Optional[dict] = None
    skipped: List[dict] = field(default_factory=list)

    def info(self, config: TrainConfig) -> Dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "best": self.best,
                "skipped": self.skipped, "config": config.to_dict()}


def check_paths(config: TrainConfig, need_data: bool = True) -> Tuple[Optional[Path], Path]:
    """``(config.data, config.out)`` as paths; a :class:`UserError` when one is unset or data is missing.

    ``need_data=False``: the training data are given as datasets, so ``config.data`` may be unset (None then).
    """
    if not config.out:
        raise UserError("no output folder: the config's out (where the run is written) is not set")
    if not need_data and not config.data:
        return None, Path(config.out)
    if not config.data:
        raise UserError("no training data: the config's data (a folder with train/ and val/) is not set")
    data = Path(config.data)
    if not data.is_dir():
        raise UserError(f"data folder {data} not found")
    return data, Path(config.out)


def decide_resume(run_dir: Path, config: TrainConfig, resume: Optional[bool]) -> bool:
    """Whether to continue ``run_dir/last`` (rank 0 decides for all, before anything is cleared)."""
    state_dir = ckpt.state_folder(run_dir)
    if resume is True and state_dir is None:
        raise UserError(f"nothing to resume in {run_dir}: no last/state.json (start afresh instead)",
                        option="resume")
    if resume is None:
        resume = state_dir is not None
    resume = bool(distributed.broadcast_object(resume))
    if resume:
        _check_resumable(run_dir, config)
    return resume


def open_datasets(config: TrainConfig, model: nn.Module, data: Path, class_names: Sequence[str],
                  main: bool) -> Tuple[Dataset, Optional[Dataset]]:
    """(training split with the training transform, validation split with the eval transform, or None)."""
    train_set = open_split(data, config.train_split, train_transform(model, config), config.seed, class_names,
                           keep=config.classes)
    val_set = None
    if config.val_split and has_split(data, config.val_split):
        val_set = open_split(data, config.val_split, eval_transform(model, config), config.seed, class_names,
                             keep=config.classes)
    elif main:
        log(f"no validation split {data / str(config.val_split)}: the last epoch's weights are kept")
    return train_set, val_set


def make_optimization(param_groups: List[dict], config: TrainConfig, device: torch.device):
    """``(optimizer, gradient scaler, autocast dtype or None)``; the scaler is on only for fp16."""
    optimizer = make_optimizer(param_groups, config)
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return optimizer, scaler, dtype


def restore(run: Run) -> RunState:
    """The state of an interrupted run: weights, optimizer, scaler and RNG are loaded back in place."""
    info = ckpt.load_training_state(run.run_dir, run.model, run.optimizer, run.scaler)
    state = RunState(epoch=int(info["epoch"]), step=int(info["step"]), history=list(info["history"]),
                     best=info.get("best"), skipped=list(info.get("skipped", [])))
    if run.ctx.main:
        log(f"resuming {run.run_dir} after epoch {state.epoch} (step {state.step})")
    return state


def prepare_run_dir(run: Run, resume: bool) -> None:
    """Rank 0 creates ``run_dir`` (cleared unless resuming) and writes ``config.yaml``; everyone waits."""
    if run.ctx.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _clear_run(run.run_dir)
        save_config(run.config, run.run_dir / "config.yaml")
    distributed.barrier()


class BatchSource:
    """Where an epoch's training batches come from: ``len()`` optimizer steps per epoch, ``epoch(e)`` the
    collated batches of epoch ``e`` (``image`` B×3×H×W, ``label`` B), and ``classes`` (the label space).

    The default, :class:`SplitBatches`, is a dataset through :class:`~traitlens.engine.distributed.ShardedSampler`;
    a source of one's own (in-memory arrays with batch-level augmentation) must give each process its share.
    """

    classes: List[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int) -> Iterable[dict]:
        raise NotImplementedError


def fitting_batch_size(batch_size: int, n: int, world: int = 1) -> int:
    """``batch_size``, or on a training split smaller than one batch the largest multiple of ``world`` that fits
    (said in one line): a few dozen labelled images still train."""
    if n >= batch_size or n < world:
        return batch_size  # the sampler refuses what cannot be trained at all
    lowered = n // world * world
    log(f"batch_size {batch_size} is larger than the {n} training images: using batch_size {lowered} "
        "(choose another with --set batch_size=N)")
    return lowered


class SplitBatches(BatchSource):
    """A dataset of sample dicts cut into the same global batches on any number of processes, seeded by (seed,
    epoch): the order by :class:`~traitlens.engine.distributed.ShardedSampler`, augmentation by the dataset."""

    def __init__(self, dataset: Dataset, config: TrainConfig, ctx: distributed.DistContext):
        self.dataset, self.config, self.device = dataset, config, ctx.device
        self.classes = list(dataset.classes)
        self.sampler = distributed.ShardedSampler(len(dataset), fitting_batch_size(config.batch_size, len(dataset),
                                                                                   ctx.world),
                                                  config.seed, ctx.rank, ctx.world)

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        config = self.config
        return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=config.num_workers,
                          collate_fn=collate_fn(), pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))


def _batch_on_device(run: Run, batch: dict) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """(images B×3×H×W, labels B, loss weight) of a collated batch."""
    device = run.device
    if "image" in batch and batch["image"].shape[0] > 0:
        images = batch["image"].to(device, non_blocking=True)
        labels = torch.as_tensor(batch["label"]).long().to(device, non_blocking=True)
        return images, labels, 1.0
    # Every image of this micro-batch was unreadable: step with a zero loss so that all processes still
    # take part in the gradient exchange.
    images = torch.zeros(1, 3, *data_config(run.model, run.config)["input_size"][1:], device=device)
    return images, torch.zeros(1, dtype=torch.long, device=device), 0.0


def train_one_epoch(run: Run, state: RunState, epoch: int) -> Dict[str, Any]:
    """One pass over the training split; advances ``state.step``, adds unreadable images to ``state.skipped``.

    Returns the epoch's log row so far: ``epoch, step, lr, train_loss, train_acc, train_n`` (over all processes).
    """
    config, optimizer, scaler = run.config, run.optimizer, run.scaler
    steps_per_epoch = len(run.batches)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    set_train_mode(run.model)
    # loss sum, correct, count; kept on the device so a step never waits for the GPU
    totals = torch.zeros(3, dtype=torch.float64, device=run.device)
    epoch_skipped: List = []
    pbar = bar(steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False) \
        if run.show else _NoBar()
    for batch in run.batches.epoch(epoch):
        factor = lr_factor(state.step, steps_per_epoch, config)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        epoch_skipped.extend(batch.get("skipped") or [])
        images, labels, weight = _batch_on_device(run, batch)
        with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
            logits = run.net(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing) * weight
        if not bool(torch.isfinite(loss.detach())):
            # Stop before the step: a NaN/inf loss would only make NaN weights, and nothing of this epoch is
            # saved, so the best checkpoint and the resume state stay those of the last good epoch.
            raise UserError(
                f"training stopped: the loss became {float(loss.detach()):g} at epoch {epoch + 1}, step {state.step + 1}; "
                f"the best checkpoint in {run.run_dir} is kept; lower the learning rate (lr "
                f"{optimizer.param_groups[-1]['lr']:g} at this step) or set grad_clip", option="overrides")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        if weight:
            n = labels.numel()
            correct = (logits.detach().argmax(1) == labels).sum()
            totals += torch.stack([loss.detach().double() * n, correct.double(),
                                   torch.tensor(float(n), dtype=torch.float64, device=run.device)])
            if run.show and (state.step % 10 == 0 or state.step % steps_per_epoch == 0):
                t = totals.tolist()
                pbar.set_postfix(loss=f"{t[0] / max(1, t[2]):.3f}", acc=f"{t[1] / max(1, t[2]):.3f}")
        pbar.update(1)
    pbar.close()
    distributed.all_reduce_sum(totals)
    totals = totals.cpu()
    seen = {(s["split"], s["path"]) for s in state.skipped}
    for part in distributed.gather_objects(epoch_skipped):
        for p, r in part:
            if (config.train_split, p) not in seen:
                seen.add((config.train_split, p))
                state.skipped.append({"epoch": epoch + 1, "split": config.train_split, "path": p, "reason": r})
    return {
        "epoch": epoch + 1, "step": state.step, "lr": optimizer.param_groups[-1]["lr"],
        "train_loss": float(totals[0] / max(1, totals[2])), "train_acc": float(totals[1] / max(1, totals[2])),
        "train_n": int(totals[2]),
    }


def validate(run: Run, state: RunState, epoch: int) -> Optional[Dict[str, Any]]:
    """The validation split's metrics after ``epoch`` (0-based), or None when this epoch is not evaluated."""
    config = run.config
    last_epoch = epoch + 1 == config.epochs
    if run.val_set is None or not ((epoch + 1) % config.eval_every == 0 or last_epoch):
        return None
    metrics = evaluate(run.model, run.val_set, run.device, batch_size=config.eval_batch_size or config.batch_size,
                       num_workers=config.num_workers, num_classes=len(run.class_names), amp_dtype=run.dtype,
                       show_progress=run.show)
    seen = {(s["split"], s["path"]) for s in state.skipped}
    state.skipped.extend({"epoch": epoch + 1, "split": config.val_split, "path": p, "reason": r}
                         for p, r in metrics.get("skipped", []) if (config.val_split, p) not in seen)
    return metrics


def is_better(run: Run, state: RunState, metrics: Optional[Dict[str, Any]], last_epoch: bool) -> bool:
    """Selection: higher validation top-1, then lower loss; without a validation split, the last epoch."""
    if run.val_set is None:
        return last_epoch
    if metrics is None:
        return False
    key = (metrics["top1"], -metrics["loss"])
    return state.best is None or key > (state.best["metrics"]["val_top1"], -state.best["metrics"]["val_loss"])


def save_epoch(run: Run, state: RunState, row: Dict[str, Any], improved: bool) -> None:
    """Rank 0: the best checkpoint (when improved), ``log.csv`` / ``log.jsonl``, skipped.jsonl, the resume state."""
    config, epoch = run.config, row["epoch"]
    if not run.ctx.main:
        return
    if improved:
        meta = {"method": config.method, "class_names": run.class_names, "num_classes": len(run.class_names),
                "config": config.to_dict(), "trained_classes": list(config.classes) if config.classes else None,
                "metrics": state.best["metrics"], "epoch": epoch,
                "selected_on": config.val_split if run.val_set else "last epoch", "complete": False}
        ckpt.save_checkpoint(run.run_dir, run.model, meta)
    write_logs(run.run_dir, state.history)
    _write_skipped(run.run_dir, state.skipped)
    if epoch % config.save_every == 0 or epoch == config.epochs:
        ckpt.save_training_state(run.run_dir, run.model, run.optimizer, state.info(config), run.scaler)


def _weights_line(record: Dict[str, Any]) -> str:
    """One line on what the backbone's weights file gave (also in model.json as ``initial_weights``)."""
    line = f"weights {record['path']} ({record['label'] or record['format']}): loaded {record['matched']}/{record['total']}"
    if record.get("resampled"):
        line += "; resampled " + ", ".join(f"{k} {v}" for k, v in record["resampled"].items())
    if record.get("dropped"):
        line += "; dropped " + ", ".join(f"{d['count']} ({why})" for why, d in record["dropped"].items())
    if record.get("fresh_head"):
        line += f"; fresh head ({len(record['fresh_head'])} tensors)"
    if record.get("partial"):
        line += (f"; PARTIAL (--allow-partial): {len(record['unexpected'])} unexpected, "
                 f"{len(record['mismatched'])} mismatched, {len(record['missing']) - len(record['fresh_head'])} missing")
    return line


def _epoch_line(config: TrainConfig, row: Dict[str, Any], metrics: Optional[dict], improved: bool) -> str:
    line = f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
    if metrics is not None:
        line += f", val top-1 {metrics['top1']:.3f}{' (best)' if improved else ''}"
    return line


def finish(run: Run, state: RunState) -> None:
    """Mark the selected checkpoint complete, so a cache that checks for it knows the run ended."""
    if run.ctx.main and state.best is not None:
        meta = json.loads((run.run_dir / ckpt.SIDECAR).read_text())
        meta["complete"] = True
        meta["final_metrics"] = state.history[-1] if state.history else None
        (run.run_dir / ckpt.SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
        if state.skipped:
            log(f"skipped {len(state.skipped)} unreadable image(s); listed in {run.run_dir / 'skipped.jsonl'}")
    distributed.barrier()


# ---------------------------------------------------------------------------------------------
# fit


def fit(config: TrainConfig, model: nn.Module, param_groups: List[dict], progress: bool = True,
        resume: Optional[bool] = None, *, train_batches: Optional[BatchSource] = None,
        val_set: Optional[Dataset] = None) -> Dict[str, Any]:
    """Train the built ``model`` (images B×3×H×W → logits B×C) on ``config.data``; write the run to ``out``.

    ``param_groups``: the optimizer groups (``{"params": [...], "lr": ...}``) of what is trained.
    ``resume``: True continues ``out/last`` (error when there is none), False starts afresh (overwriting), None
    (default) continues when ``out`` holds an interrupted run of the same config and starts afresh otherwise.
    Under ``torchrun`` every process calls ``fit``; only rank 0 writes. Returns ``{"run_dir", "best": {"epoch",
    "metrics"}, "final": last log row, "history": rows, "class_names", "skipped"}``.

    ``train_batches`` (and optionally ``val_set``, a dataset of sample dicts): a :class:`BatchSource` used instead
    of ``config.data``'s splits, e.g. in-memory arrays; ``config.data`` may then be unset.
    """
    data, run_dir = check_paths(config, need_data=train_batches is None)
    ctx = distributed.setup(config.device)
    resume = decide_resume(run_dir, config, resume)
    model.to(ctx.device)
    if train_batches is None:
        class_names = split_classes(data, config.train_split)
        train_set, val_set = open_datasets(config, model, data, class_names, ctx.main)
        split_definition = getattr(getattr(train_set, "dataset", train_set), "split_definition", None)
        train_batches = SplitBatches(train_set, config, ctx)
    else:
        class_names = list(train_batches.classes)
        split_definition = None
    optimizer, scaler, dtype = make_optimization(param_groups, config, ctx.device)
    run = Run(config=config, run_dir=run_dir, ctx=ctx, model=model, net=model, class_names=class_names,
              batches=train_batches, val_set=val_set, optimizer=optimizer, scaler=scaler,
              dtype=dtype, show=progress and ctx.main)
    state = restore(run) if resume else RunState()
    weights = ckpt.weights_record(model)
    if run.ctx.main and progress and weights is not None:
        log(_weights_line(weights))
    prepare_run_dir(run, resume)
    if ctx.main and split_definition is not None:  # a CUB root / split file / unsplit tree: record the split used
        from traitlens.data.folders import write_split_definition
        write_split_definition(split_definition, run_dir / "split.json")
    run.net = distributed.wrap(model, ctx)

    for epoch in range(state.epoch, config.epochs):
        started = time.time()
        row = train_one_epoch(run, state, epoch)
        metrics = validate(run, state, epoch)
        if metrics is not None:
            row.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
                       val_n=metrics["n"], val_mean_class_accuracy=metrics["mean_class_accuracy"])
        row["skipped"] = len(state.skipped)
        improved = is_better(run, state, metrics, last_epoch=epoch + 1 == config.epochs)
        row["best"] = improved or (state.best is not None and state.best["epoch"] == row["epoch"])
        row["seconds"] = round(time.time() - started, 3)
        if improved:
            state.best = {"epoch": epoch + 1, "metrics": {k: v for k, v in row.items() if k not in ("best", "seconds")}}
        state.history.append(row)
        state.epoch = epoch + 1
        save_epoch(run, state, row, improved)
        if run.show:
            log(_epoch_line(config, row, metrics, improved))
        distributed.barrier()

    finish(run, state)
    return {"run_dir": str(run_dir), "best": state.best, "final": state.history[-1] if state.history else None,
            "history": state.history, "class_names": class_names, "skipped": len(state.skipped)}
