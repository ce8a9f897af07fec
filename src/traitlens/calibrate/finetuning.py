"""Checkpoints in, checkpoints out: fine-tune a classifier on a subset of its classes through the engine,
then calibrate it (ALG, PCV, oracle) and write a calibrated checkpoint whose head applies γ.

The calibrated checkpoint is an ordinary ``finetune`` checkpoint with γ folded into the classifier bias of the
absent classes (``b_c += γ`` for c ∉ S gives exactly ``z_c + γ·[c ∈ U]``), so ``load_model``, ``evaluate``,
``explain`` and ``traits`` use it unchanged; its sidecar records ``calibration`` (γ, method, seen classes).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from traitlens.errors import UserError
from traitlens.progress import log

# The reference recipe of Mai et al. (full fine-tuning, SGD + Nesterov, backbone at 0.1× the head's lr, weight
# decay 5e-4, batch 64, cosine). The reference head lr is 1e-3 over thousands of steps on a foundation model; a
# tiny CPU backbone fine-tuned for a few epochs on a few hundred images needs a larger step: FINETUNE_LR, as in
# the calibrate experiment (traitlens.studies.calibration), where 0.01 already scrambled the absent classes'
# logits among themselves (embedded ViT, seed 0: their u/u fell from 72% to 62%) while 0.003 kept it (76%).
REFERENCE_LR = 1e-3
FINETUNE_LR = 0.003
FINETUNE_EPOCHS = 10
FINETUNE_RECIPE = dict(method="finetune", optimizer="sgd", nesterov=True, momentum=0.9, backbone_lr_scale=0.1,
                       weight_decay=5e-4, batch_size=64, scheduler="cosine", warmup_epochs=0.0)
PLAIN_METHODS = ("finetune", "linear-probe")


# --------------------------------------------------------------------------------------- classes
def parse_classes(spec: str, class_names: Sequence[str]) -> List[str]:
    """``--classes``: N (the first N classes) or a file with one class name or id per line."""
    spec = str(spec).strip()
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n < len(class_names):
            raise UserError(f"classes {n}: choose between 1 and {len(class_names) - 1} of the {len(class_names)} "
                            "classes (some must stay absent)", option="classes")
        return list(class_names[:n])
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"classes {spec!r}: neither a number of classes nor a file of class names", option="classes")
    chosen = []
    for raw in path.read_text().splitlines():
        item = raw.strip()
        if not item or item.startswith("#"):
            continue
        if item in class_names:
            chosen.append(item)
        elif item.isdigit() and int(item) < len(class_names):
            chosen.append(class_names[int(item)])
        else:
            raise UserError(f"{path}: {item!r} is neither a class name nor a class id of the data")
    chosen = list(dict.fromkeys(chosen))
    if not chosen or len(chosen) >= len(class_names):
        raise UserError(f"{path}: list between 1 and {len(class_names) - 1} classes (some must stay absent)")
    return chosen


def _plain_checkpoint(path) -> Tuple[Dict[str, Any], Path]:
    from traitlens.engine.checkpoint import read_meta, resolve

    meta = read_meta(path)
    if meta.get("method") not in PLAIN_METHODS and not meta.get("calibration"):
        raise UserError(f"checkpoint {path} is a {meta.get('method')!r} model; calibrated fine-tuning needs a plain "
                        f"classifier ({' or '.join(PLAIN_METHODS)})")
    if not meta.get("backbone"):
        raise UserError(f"checkpoint {path} does not record its backbone; cannot rebuild it")
    return meta, resolve(path)[0].parent


# --------------------------------------------------------------------------------------- fine-tune
def finetune_config(checkpoint, data, classes: Sequence[str], out, *, epochs: Optional[int] = None,
                    lr: Optional[float] = None, batch_size: Optional[int] = None, overrides: Sequence[str] = (),
                    device: str = "auto", seed: int = 0):
    """The TrainConfig that fine-tunes ``checkpoint`` (all of it, head included) on ``classes`` of ``data``."""
    from traitlens.engine.config import load_config
    from traitlens.engine.data import split_classes

    meta, folder = _plain_checkpoint(checkpoint)
    names = split_classes(Path(data), "train")
    if list(meta.get("class_names") or []) != names:
        raise UserError(f"the classes of {Path(data) / 'train'} differ from those checkpoint {checkpoint} was trained "
                        "on; fine-tuning keeps the pre-trained label space, so they must be the same")
    spec = meta["backbone"]
    values = dict(FINETUNE_RECIPE, data=str(data), out=str(out), backbone=spec["name"],
                  backbone_options=dict(spec.get("overrides") or {}), weights=str(folder),
                  epochs=epochs or FINETUNE_EPOCHS, lr=lr if lr is not None else FINETUNE_LR,
                  classes=list(classes), seed=int(seed), device=str(device))
    if batch_size:
        values["batch_size"] = int(batch_size)
    return load_config(None, list(overrides), **values)


def finetune_subset(checkpoint, data, classes, out, *, epochs=None, lr=None, batch_size=None, overrides=(),
                    device="auto", seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Fine-tune a pre-trained classifier checkpoint on a subset of the classes of ``data`` (through the engine).

    ``classes``: a list of class names, or the ``--classes`` spec (N or a file). Returns the engine's result plus
    ``seen`` (names), ``seen_ids`` and ``num_classes``.
    """
    from traitlens.engine.data import split_classes
    from traitlens.methods import train

    if out is None:
        raise UserError("fine-tuning needs an output folder for its run", option="out")
    names = split_classes(Path(data), "train")
    chosen = parse_classes(classes, names) if isinstance(classes, (str, int)) else list(classes)
    config = finetune_config(checkpoint, data, chosen, out, epochs=epochs, lr=lr, batch_size=batch_size,
                             overrides=overrides, device=str(device), seed=seed)
    result = train(config, progress=progress, resume=False)
    result.update(seen=chosen, seen_ids=[names.index(c) for c in chosen], num_classes=len(names),
                  pretrained=str(checkpoint))
    return result


# --------------------------------------------------------------------------------------- outputs
def model_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits N×C, pooled features N×D) of a timm classifier on normalised images N×3×H×W, in eval mode."""
    was = model.training
    model.eval()
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            f = model.forward_features(images[i:i + batch_size])
            feats.append(model.forward_head(f, pre_logits=True))
            logits.append(model.forward_head(f))
    model.train(was)
    return torch.cat(logits), torch.cat(feats)


def dataset_outputs(model: nn.Module, dataset, device="cpu", batch_size: int = 128) -> Tuple[torch.Tensor, ...]:
    """(logits N×C, pooled features N×D, labels N) of a timm classifier over a traitlens dataset."""
    from torch.utils.data import DataLoader

    from traitlens.data.folders import collate

    logits, feats, labels = [], [], []
    model = model.to(device).eval()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        if "image" not in batch:
            continue
        z, f = model_outputs(model, batch["image"].to(device), batch_size)
        logits.append(z.cpu())
        feats.append(f.cpu())
        labels.append(torch.as_tensor(batch["label"]).long())
    if not logits:
        raise UserError("no readable images in the split")
    return torch.cat(logits), torch.cat(feats), torch.cat(labels)


def write_calibrated_checkpoint(model: nn.Module, meta: Dict[str, Any], seen_ids: Sequence[int], gamma: float,
                                out, info: Dict[str, Any]) -> Path:
    """Copy ``model`` with γ added to the absent classes' classifier bias and save it as a checkpoint."""
    from traitlens.engine.checkpoint import save_checkpoint

    calibrated = copy.deepcopy(model).cpu()
    head = calibrated.get_classifier() if hasattr(calibrated, "get_classifier") else None
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise UserError("the fine-tuned model's head is not a linear layer with a bias; cannot fold γ into it "
                        "(apply γ to its logits with apply_gamma instead)")
    absent = torch.ones(head.out_features, dtype=torch.bool)
    absent[list(seen_ids)] = False
    with torch.no_grad():
        head.bias[absent] += float(gamma)
    sidecar = {k: v for k, v in meta.items() if k not in ("format", "format_version", "traitlens_version",
                                                           "backbone", "num_classes")}
    sidecar["calibration"] = dict(info, gamma=float(gamma), seen=list(map(int, seen_ids)),
                                  absent=torch.nonzero(absent).flatten().tolist())
    return save_checkpoint(out, calibrated, sidecar)


# --------------------------------------------------------------------------------------- calibrate
def calibrate_checkpoints(pretrained, finetuned, data, out, methods=("alg", "pcv", "oracle"), apply=None,
                          pcv_seeds: int = 1, pcv_epochs: Optional[int] = None, device="cpu",
                          seed: int = 0, figure: Optional[Callable[[Dict[str, Any]], Any]] = None) -> Dict[str, Any]:
    """Evaluate ``finetuned`` (made by :func:`finetune_subset`) on the test split of ``data`` before and after
    calibration; write ``out/calibration.json``, ``out/calibrated/`` (checkpoint) and, given ``figure`` (result →
    matplotlib Figure, e.g. :func:`traitlens.report.plots.seen_unseen_figure`), ``out/seen_unseen.png``.

    ALG reads the fine-tuned model's logits on the fine-tuning classes' *training* images; PCV re-fine-tunes
    ``pretrained`` on halves of those classes (``pcv_seeds`` × 2 engine runs under ``out/pcv/``) and scores
    γ on their validation images; the oracle uses the test labels.
    """
    from traitlens.calibrate.accuracy import accuracy_table, ncm_logits
    from traitlens.calibrate.bias import pcv_gamma
    from traitlens.calibrate.evaluation import calibration_result
    from traitlens.calibrate.seen_unseen import ausuc
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.data import eval_transform, open_split
    from traitlens.methods import load_model, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, pre_folder = _plain_checkpoint(pretrained)
    ft_model, ft_meta = load_model(finetuned, device)
    pre_model, pre_meta = load_model(pretrained, device)
    names = list(ft_meta.get("class_names") or [])
    trained = ft_meta.get("trained_classes") or (ft_meta.get("config") or {}).get("classes")
    if not trained:
        raise UserError(f"checkpoint {finetuned} was trained on all its classes: nothing is absent to calibrate "
                        "(fine-tune it on a subset of its classes first)", option="finetuned")
    if list(pre_meta.get("class_names") or []) != names:
        raise UserError(f"{pretrained} and {finetuned} have different classes")
    seen_ids = [names.index(c) for c in trained]
    ft_config = config_from_meta(ft_meta)
    tf = eval_transform(ft_model, ft_config)
    data = Path(data)

    def outputs(model, split, keep=None):
        return dataset_outputs(model, open_split(data, split, tf, seed, names, keep=keep), device)

    log("scoring the test split with the fine-tuned and pre-trained models")
    z, f, y = outputs(ft_model, "test")
    pz, pf, _ = outputs(pre_model, "test")
    tz, tfeat, ty = outputs(ft_model, "train")
    _, ptfeat, _ = outputs(pre_model, "train")
    in_seen = torch.isin(ty, torch.tensor(seen_ids))
    gammas: Dict[str, float] = {}
    pcv_record = None
    if "pcv" in methods:
        vz_pre, _, vy = outputs(pre_model, "val", keep=trained)
        epochs = pcv_epochs or ft_config.epochs

        def refit(train_ids, s):
            run = out / "pcv" / f"seed{s}-{'-'.join(map(str, train_ids))}"
            n_images = sum(len(open_split(data, "train", None, seed, names, keep=[names[i]])) for i in train_ids)
            # half the classes means about half the images: keep the batch no larger than the data
            cfg = ft_config.replace(out=str(run), classes=[names[i] for i in train_ids], epochs=epochs,
                                    weights=str(pre_folder), seed=int(seed) + 1000 + int(s), device=str(device),
                                    batch_size=max(1, min(ft_config.batch_size, n_images)))
            log(f"PCV: fine-tuning on {len(train_ids)} of the {len(seen_ids)} classes ({epochs} epochs)")
            train(cfg, progress=False, resume=False)
            m, _ = load_model(run, device)
            return outputs(m, "val", keep=trained)[0]
        pcv = pcv_gamma(refit, vz_pre, vy, seen_ids, seeds=range(max(1, int(pcv_seeds))))
        gammas["pcv"] = pcv.gamma
        pcv_record = pcv.folds
    extra = {"pre-trained": accuracy_table(pz, y, seen_ids),
             "NCM pre-trained": accuracy_table(ncm_logits(pf, ptfeat, ty, len(names)), y, seen_ids),
             "NCM fine-tuned": accuracy_table(ncm_logits(f, tfeat, ty, len(names)), y, seen_ids)}
    result = calibration_result(z, y, seen_ids, methods, train_logits=tz[in_seen], train_labels=ty[in_seen],
                                gammas=gammas, extra_tables=extra)
    result.update(class_names=names, seen_names=list(trained), pretrained=str(pretrained), finetuned=str(finetuned),
                  data=str(data), pcv_folds=pcv_record)
    if result["ausuc"] is not None:
        result["ausuc_pretrained"] = ausuc(pz, y, seen_ids)
        if figure is not None:  # drawing is the report's: the caller passes it in
            figure(result).savefig(out / "seen_unseen.png", dpi=120)
            result["plot"] = str(out / "seen_unseen.png")
    chosen = result["gamma"]
    pick = apply or next((m for m in ("pcv", "alg", "oracle") if m in chosen), None)
    if pick is not None:
        if pick not in chosen:
            raise UserError(f"cannot apply {pick}: that method was not run (ran: {', '.join(chosen) or 'none'})",
                            option="apply")
        path = write_calibrated_checkpoint(ft_model, ft_meta, seen_ids, chosen[pick], out / "calibrated",
                                           {"method": pick, "finetuned": str(finetuned)})
        result["checkpoint"] = str(path)
        result["applied"] = pick
    (out / "calibration.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
