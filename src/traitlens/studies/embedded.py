"""The embedded pretrained backbones: tiny models traitlens pretrains on CPU and caches.

On a machine without internet or GPU there is no foundation model to start from, so traitlens makes
its own stand-in: the tiny ViT (or CNN) preset trained to classify a synthetic specimen collection
whose species are all different from the demo's target species (``SynthConfig.avoid_species_of``).
The later methods start from these weights as they would from DINO or CLIP: Prompt-CAM freezes them,
calibration fine-tunes them.

The result is an ordinary traitlens run folder (``model.safetensors`` + ``model.json``, see
docs/ARCHITECTURE.md), cached under ``cache_dir("backbones")`` in a folder named after the memo key of its recipe
(:func:`traitlens.studies.recipes.pretraining` and the code that trains it, :mod:`traitlens.studies.memo`). It is trained in a hidden sibling folder (``.<name>.partial``) and renamed into place, so
readers never see half a run. An interrupted pretraining resumes from that folder's last epoch on the
next call. Processes on one machine take turns through a lock file (the second finds the first's result);
where no lock can be taken (no ``fcntl``), each trains its own copy and the later rename loses: its copy
is discarded and the winner's folder is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

from torch import nn

from traitlens.backbones.embedded import RECORD, backbone_name, backbones_dir, check
from traitlens.backbones.embedded import is_complete as _complete
from traitlens.studies.memo import TRAINING, memo_path, plain
from traitlens.studies.recipes import Pretraining, pretraining
from traitlens.errors import UserError
from traitlens.progress import log

def recipe(kind: str = "vit", breadth: str = "standard") -> Pretraining:
    """Everything that decides the embedded backbone's weights (its cache key is :func:`memo_key` of this)."""
    check(kind, breadth)
    return pretraining(kind, breadth)


def _pretraining_collection(root: Path, spec: Pretraining, progress: bool) -> Path:
    from traitlens.data.synthetic import SynthConfig, generate_collection, make_taxonomy

    target = make_taxonomy(SynthConfig(**spec.avoid.as_dict()))  # only the taxonomy: nothing is rendered
    cfg = SynthConfig(**spec.collection.as_dict(), avoid_species_of=target)
    return generate_collection(memo_path(root, "pretrain-synth", (spec.collection, spec.avoid), code=TRAINING), cfg,
                               progress=progress)


def embedded_backbone(kind: str = "vit", cache_dir: Optional[Path] = None, force: bool = False,
                      device: str = "cpu", progress: bool = True, breadth: str = "standard",
                      spec: Optional[Pretraining] = None) -> Path:
    """The run folder of the embedded tiny ``kind`` ("vit" or "cnn") backbone, pretraining it if needed.

    ``cache_dir`` defaults to ``$TRAITLENS_CACHE/backbones`` (``~/.cache/traitlens/backbones``);
    ``force=True`` pretrains again even when a cached copy exists. ``breadth="broad"`` pretrains on 200
    species instead of 18 (:func:`traitlens.studies.recipes.pretraining`): the backbone to freeze when the
    readout has to rely on its features alone; ``spec`` replaces the recipe altogether (the tests' tiny
    one). The folder holds ``model.safetensors``,
    ``model.json`` (the engine's checkpoint) and ``embedded.json`` (the recipe, test accuracy on the
    pretraining collection, seconds taken).
    """
    spec = recipe(kind, breadth) if spec is None else spec
    kind, breadth = spec.kind, spec.breadth
    root = backbones_dir(cache_dir)
    name = backbone_name(kind, breadth)
    final = memo_path(root, name, spec, code=TRAINING)
    if _complete(final) and not force:
        _point(root, name, final)
        return final

    with _turn(root / f".{final.name}.lock") as alone:
        if _complete(final) and not force:  # another process pretrained it while this one waited
            _point(root, name, final)
            return final
        started = time.time()
        log(f"pretraining the embedded tiny {kind.upper()} backbone{'' if breadth == 'standard' else f' ({breadth})'} "
            f"on {spec.collection.species} species (once; cached in {final})")
        data = _pretraining_collection(root, spec, progress)
        tmp = root / (f".{final.name}.partial" if alone else f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if force:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            record = _pretrain(kind, spec, data, tmp, device, progress, started)
            _publish(tmp, final, replace=force)
            _point(root, name, final)
        except BaseException:
            if not alone:  # a per-process copy no later call would resume
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"embedded tiny {kind.upper()}: test top-1 {record['test_top1']:.3f} on its own collection "
        f"in {record['seconds']:.0f}s")
    return final


def _point(root: Path, name: str, run: Path) -> None:
    """Write (atomically) the pointer :func:`traitlens.backbones.find_embedded` reads."""
    pointer = root / f"{name}.json"
    text = json.dumps({"run": run.name}) + "\n"
    if pointer.is_file() and pointer.read_text() == text:
        return
    tmp = root / f".{name}.json.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    tmp.replace(pointer)


@contextlib.contextmanager
def _turn(lock: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock`` (yields True), or yield False where none can be taken."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pretrain(kind: str, spec: Pretraining, data: Path, tmp: Path, device: str, progress: bool, started: float) -> dict:
    """Train (or resume training) the recipe into ``tmp``; score it on the test split; write the record."""
    from traitlens.engine.checkpoint import WEIGHTS
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import evaluate_checkpoint, train

    config = TrainConfig(data=str(data), out=str(tmp), backbone=spec.preset, device=device, seed=spec.seed,
                         **spec.training.config())
    result = train(config, progress=progress, resume=None)  # resumes an interrupted pretraining
    test = evaluate_checkpoint(tmp, data, split="test", device=device, show_progress=False)
    if not (tmp / WEIGHTS).is_file():
        raise RuntimeError(f"pretraining wrote no {WEIGHTS} in {tmp}")
    shutil.rmtree(tmp / "last", ignore_errors=True)  # optimizer state: not needed once pretrained
    record = {
        "kind": kind,
        "recipe": plain(spec),
        "collection": str(data),
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "val_top1": result["best"]["metrics"].get("val_top1") if result.get("best") else None,
        "best_epoch": result["best"]["epoch"] if result.get("best") else None,
        "seconds": round(time.time() - started, 1),  # this call's: a resumed pretraining counts its last part
    }
    (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


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
        shutil.rmtree(tmp, ignore_errors=True)  # the other process's copy stands


def embedded_info(kind: str = "vit", cache_dir: Optional[Path] = None, breadth: str = "standard") -> dict:
    """The record (recipe, test accuracy, seconds) of the embedded backbone, pretraining it if needed."""
    run = embedded_backbone(kind, cache_dir=cache_dir, breadth=breadth)
    return json.loads((run / RECORD).read_text())


def load_embedded(kind: str = "vit", num_classes: int = 0, cache_dir: Optional[Path] = None,
                  breadth: str = "standard") -> nn.Module:
    """The tiny ``kind`` backbone with its pretrained weights and a fresh ``num_classes`` head (0: none)."""
    from traitlens.backbones import create

    run = embedded_backbone(kind, cache_dir=cache_dir, breadth=breadth)
    return create(f"tiny-{kind}", num_classes=num_classes, weights=run)
