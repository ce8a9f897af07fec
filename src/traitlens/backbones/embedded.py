"""The embedded pretrained backbones: tiny models traitlens pretrains on CPU and caches.

On a machine without internet or GPU there is no foundation model to start from, so traitlens makes
its own stand-in: the tiny ViT (or CNN) preset trained to classify a synthetic specimen collection
whose species are all different from the demo's target species (``SynthConfig.avoid_species_of``).
The later methods start from these weights as they would from DINO or CLIP: Prompt-CAM freezes them,
calibration fine-tunes them.

The result is an ordinary traitlens run folder (``model.safetensors`` + ``model.json``, see
docs/ARCHITECTURE.md), cached under ``cache_dir("backbones")`` in a folder named after a hash of the
recipe below. It is written into a temporary sibling folder and renamed into place, so readers never
see half a run; two processes that start at once both train and the second rename simply loses
(its copy is discarded and the winner's folder is used), so no lock is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from torch import nn

from traitlens.cache import cache_dir as cache_root
from traitlens.cache import recipe_key
from traitlens.errors import UserError
from traitlens.progress import log

# Bump when the recipe's meaning changes without its values changing (e.g. a training-loop fix).
EMBEDDED_VERSION = 1
KINDS = ("vit", "cnn")

# The pretraining collection: more species than the demo (more to learn from), none of the demo's;
# 100 images a species (60 train / 20 val / 20 test): with fewer, the tiny ViT overfits (36 train
# images a species gave 72% validation top-1 at 99% train accuracy).
PRETRAIN_COLLECTION = dict(species=18, per_species=100, size=64, seed=1)
# The collection whose species the pretraining collection avoids: the demo's (traitlens.demo.DEMO_COLLECTION).
TARGET_COLLECTION = dict(species=12, per_species=60, size=64, seed=0)
# Measured on a shared 2-core CPU: ViT test top-1 0.889 (top-5 1.0), CNN 0.933 (top-5 1.0); about
# 6 s an epoch for the ViT and 8 s for the CNN when the machine is quiet, plus ~16 s to render the
# collection once for both.
PRETRAIN_TRAINING = {
    "vit": dict(epochs=15, batch_size=64, lr=2e-3, backbone_lr_scale=1.0, weight_decay=0.05, warmup_epochs=1.0),
    "cnn": dict(epochs=12, batch_size=64, lr=3e-3, backbone_lr_scale=1.0, weight_decay=0.05, warmup_epochs=1.0),
}
RECORD = "embedded.json"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"embedded backbone kind must be one of {', '.join(KINDS)}, not {kind!r}")


def recipe(kind: str) -> dict:
    """Everything that decides the embedded backbone's weights (its cache key is a hash of this)."""
    from traitlens.data.synthetic import RENDER_VERSION

    _check_kind(kind)
    return {
        "version": EMBEDDED_VERSION,
        "render_version": RENDER_VERSION,
        "preset": f"tiny-{kind}",
        "collection": dict(PRETRAIN_COLLECTION),
        "avoid_species_of": dict(TARGET_COLLECTION),
        "training": dict(PRETRAIN_TRAINING[kind], method="finetune", optimizer="adamw", seed=0),
    }


def backbones_dir(cache_dir: Optional[Path] = None) -> Path:
    """The folder the embedded backbones live in: ``cache_dir`` if given, else ``$TRAITLENS_CACHE/backbones``
    (``~/.cache/traitlens/backbones``)."""
    if cache_dir is not None:
        path = Path(cache_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_root("backbones")


def _complete(run: Path) -> bool:
    return (run / "model.safetensors").is_file() and (run / "model.json").is_file() and (run / RECORD).is_file()


def _pretraining_collection(root: Path, progress: bool) -> Path:
    from traitlens.data.synthetic import SynthConfig, generate_collection, make_taxonomy

    target = make_taxonomy(SynthConfig(**TARGET_COLLECTION))  # only the taxonomy: nothing is rendered
    cfg = SynthConfig(**PRETRAIN_COLLECTION, avoid_species_of=target)
    key = recipe_key({"collection": PRETRAIN_COLLECTION, "avoid": TARGET_COLLECTION})
    return generate_collection(root / f"pretrain-synth-{key}", cfg, progress=progress)


def embedded_backbone(kind: str = "vit", cache_dir: Optional[Path] = None, force: bool = False,
                      device: str = "cpu", progress: bool = True) -> Path:
    """The run folder of the embedded tiny ``kind`` ("vit" or "cnn") backbone, pretraining it if needed.

    ``cache_dir`` defaults to ``$TRAITLENS_CACHE/backbones`` (``~/.cache/traitlens/backbones``);
    ``force=True`` pretrains again even when a cached copy exists. The folder holds
    ``model.safetensors``, ``model.json`` (the engine's checkpoint) and ``embedded.json`` (the recipe,
    test accuracy on the pretraining collection, seconds taken).
    """
    from traitlens.engine.checkpoint import WEIGHTS
    from traitlens.engine.config import TrainConfig
    from traitlens.engine.evaluate import evaluate_checkpoint
    from traitlens.engine.train import fit

    spec = recipe(kind)
    root = backbones_dir(cache_dir)
    final = root / f"embedded-{kind}-{recipe_key(spec)}"
    if _complete(final) and not force:
        return final

    started = time.time()
    log(f"pretraining the embedded tiny {kind.upper()} backbone (once; cached in {final})")
    data = _pretraining_collection(root, progress)
    tmp = root / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        training = {k: v for k, v in spec["training"].items()}
        config = TrainConfig(data=str(data), out=str(tmp), backbone=spec["preset"], device=device, **training)
        result = fit(config, progress=progress, resume=False)
        test = evaluate_checkpoint(tmp, data, split="test", device=device, show_progress=False)
        shutil.rmtree(tmp / "last", ignore_errors=True)  # optimizer state: not needed once pretrained
        record = {
            "kind": kind,
            "recipe": spec,
            "collection": str(data),
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "val_top1": result["best"]["metrics"].get("val_top1") if result.get("best") else None,
            "best_epoch": result["best"]["epoch"] if result.get("best") else None,
            "seconds": round(time.time() - started, 1),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        if not (tmp / WEIGHTS).is_file():
            raise RuntimeError(f"pretraining wrote no {WEIGHTS} in {tmp}")
        _publish(tmp, final, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"embedded tiny {kind.upper()}: test top-1 {record['test_top1']:.3f} on its own collection "
        f"in {record['seconds']:.0f}s")
    return final


def _publish(tmp: Path, final: Path, replace: bool) -> None:
    """Rename the finished run into place; if another process got there first, keep theirs."""
    if replace and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            final.rename(old)
        except OSError:
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:
        if not _complete(final):  # not a lost race: something else is in the way
            raise UserError(f"cannot write the embedded backbone to {final}: a non-traitlens folder is in the way")


def embedded_info(kind: str = "vit", cache_dir: Optional[Path] = None) -> dict:
    """The record (recipe, test accuracy, seconds) of the embedded backbone, pretraining it if needed."""
    run = embedded_backbone(kind, cache_dir=cache_dir)
    return json.loads((run / RECORD).read_text())


def load_embedded(kind: str = "vit", num_classes: int = 0, cache_dir: Optional[Path] = None) -> nn.Module:
    """The tiny ``kind`` backbone with its pretrained weights and a fresh ``num_classes`` head (0: none)."""
    from traitlens.backbones import create

    run = embedded_backbone(kind, cache_dir=cache_dir)
    return create(f"tiny-{kind}", num_classes=num_classes, weights=run)
