"""The paper's experiment on the synthetic collection, small enough for a CPU.

Start from a "foundation model" (the embedded pretrained tiny backbone, :mod:`traitlens.studies.embedded`,
trained on species none of which is in this collection); pre-train it with a fresh head on every species
rendered in domain A; fully fine-tune it in domain B on half of the species (cross-entropy over all species);
test on every species in domain B. Mai et al. (2024) find that the absent species' accuracy collapses after
fine-tuning, that their features stay good (nearest class mean), and that one bias γ on the absent logits
(ALG, PCV) brings most of it back while the fine-tuning species barely move. :func:`run_experiment` measures
all of that for one seed.

The data live in memory (``generate_arrays``) and train through the engine's :func:`~traitlens.engine.train.fit`
(its optimizer, per-step cosine schedule and loop) as an in-memory dataset, so one seed takes about a minute on
2 CPU cores once the embedded backbone is cached; ``traitlens finetune`` / ``traitlens calibrate`` run the same
recipe through the engine on a collection on disk.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from traitlens.calibrate.accuracy import accuracy_table, ncm_logits
from traitlens.calibrate.bias import alg_gamma, pcv_gamma
from traitlens.calibrate.confidence import expected_calibration_error, fit_temperature
from traitlens.calibrate.finetuning import model_outputs
from traitlens.calibrate.seen_unseen import ausuc, oracle_gamma, seen_unseen_curve
from traitlens.studies.recipes import ExperimentConfig
from traitlens.engine.config import TrainConfig
from traitlens.engine.train import BatchSource, fit


def build_model(cfg: ExperimentConfig) -> nn.Module:
    """The model pre-training starts from: the embedded backbone (or a random preset) with a fresh C-way head."""
    from traitlens import backbones

    weights = None
    if cfg.backbone.startswith("embedded-"):
        from traitlens.studies.embedded import embedded_backbone

        kind = cfg.backbone[len("embedded-"):]
        # pretrained (if need be) before seeding: the head's initial weights must not depend on whether the
        # backbone was in the cache already
        weights, preset = embedded_backbone(kind, progress=False), f"tiny-{kind}"
    else:
        preset = cfg.backbone
    torch.manual_seed(cfg.seed)  # the head's initial weights
    return backbones.create(preset, num_classes=cfg.species, weights=weights)


# --------------------------------------------------------------------------------------- training
class ArrayBatches(BatchSource):
    """In-memory images (N×3×H×W, normalised) and labels (N) as the engine's training batches, augmented per batch.

    The experiment's recipe: every epoch a fresh permutation (the last batch may be partial), then per batch a
    horizontal flip of each image with probability 0.5, one shift of up to 2 pixels each way (``torch.roll``), and
    with ``colour_jitter`` > 0 per-image channel gains and offsets of that size (pre-training only, standing in for
    the broad augmentation of a foundation model's pre-training). All draws come from one generator seeded with
    ``seed``, in order, so a run is reproducible from its start (the experiment never resumes one); one process.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int, seed: int,
                 colour_jitter: float = 0.0):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.classes = [str(c) for c in range(num_classes)]
        self.colour_jitter = colour_jitter
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, -(-self.images.shape[0] // self.batch_size))

    def epoch(self, epoch: int):
        gen, n = self.gen, self.images.shape[0]
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.images[idx]
            flip = torch.rand(idx.numel(), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if self.colour_jitter > 0:
                k = idx.numel()
                gain = 1 + self.colour_jitter * (2 * torch.rand(k, 3, 1, 1, generator=gen) - 1)
                shift = self.colour_jitter * (2 * torch.rand(k, 3, 1, 1, generator=gen) - 1)
                x = x * gain + shift
            yield {"image": x, "label": self.labels[idx]}


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
           optimizer: str, backbone_lr_scale: float, weight_decay: float, momentum: float, batch_size: int,
           seed: int, colour_jitter: float = 0.0) -> None:
    """Train all of ``model`` on ``images`` (N×3×H×W) / ``labels`` (N) through the engine's :func:`fit`: per-step
    cosine lr, cross-entropy over all classes, the body at ``lr × backbone_lr_scale``; the last epoch's weights
    are kept (no validation split). The run folder the engine writes is temporary."""
    from traitlens.methods import finetune_groups

    if epochs <= 0:
        return
    num_classes = model.get_classifier().weight.shape[0]
    batches = ArrayBatches(images, labels, num_classes, batch_size, seed, colour_jitter)
    with tempfile.TemporaryDirectory(prefix="traitlens-calibration-") as out:
        cfg = TrainConfig(out=out, method="finetune", epochs=epochs, lr=lr, optimizer=optimizer,
                          backbone_lr_scale=backbone_lr_scale, weight_decay=weight_decay, momentum=momentum,
                          nesterov=optimizer == "sgd", batch_size=batch_size, scheduler="cosine", seed=seed,
                          device="cpu", amp="off", val_split=None)
        fit(cfg, model, finetune_groups(model, lr, backbone_lr_scale, weight_decay), progress=False, resume=False,
            train_batches=batches)
    model.eval()


# --------------------------------------------------------------------------------------- data
def _domain_data(cfg: ExperimentConfig, domain: str, mean, std) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy

    sc = SynthConfig(species=cfg.species, per_species=cfg.per_species, size=cfg.size, seed=cfg.collection_seed,
                     domain=domain, noise=cfg.noise_b if domain == "B" else SynthConfig.noise)
    table = make_taxonomy(sc)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = {}
    for split in ("train", "val", "test"):
        images, _, species = generate_arrays(sc, split, table)
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - m) / s
        out[split] = (x.contiguous(), torch.from_numpy(species))
    return out


# --------------------------------------------------------------------------------------- experiment
def run_experiment(cfg: Optional[ExperimentConfig] = None, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Run the experiment once; returns a JSON-ready dict of tables, γ values, AUSUC and curves."""
    from traitlens import backbones

    cfg = cfg or ExperimentConfig()
    say = log or (lambda msg: None)
    started = time.time()
    C = cfg.species
    model = build_model(cfg)
    dc = backbones.data_config(model)
    a = _domain_data(cfg, "A", dc["mean"], dc["std"])
    b = _domain_data(cfg, "B", dc["mean"], dc["std"])
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    n_seen = max(2, int(round(C * cfg.seen_fraction)))
    seen = sorted(torch.randperm(C, generator=gen)[:n_seen].tolist())
    seen_t = torch.tensor(seen)

    say(f"pre-training {cfg.backbone} on {C} species in domain A ({cfg.pretrain_epochs} epochs)")
    _train(model, *a["train"], epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, optimizer="adamw",
           backbone_lr_scale=cfg.pretrain_backbone_lr_scale, weight_decay=0.05, momentum=cfg.momentum, batch_size=cfg.batch_size, seed=cfg.seed,
           colour_jitter=cfg.pretrain_colour_jitter)
    pretrained = model

    def subset(split, classes):
        x, y = b[split]
        keep = torch.isin(y, torch.as_tensor(classes))
        return x[keep], y[keep]

    def finetune(classes: Sequence[int], seed: int) -> nn.Module:
        m = copy.deepcopy(pretrained)
        _train(m, *subset("train", classes), epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, optimizer="sgd",
               backbone_lr_scale=cfg.backbone_lr_scale, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
               batch_size=cfg.batch_size, seed=seed)
        return m

    say(f"fine-tuning in domain B on {len(seen)} of {C} species ({cfg.finetune_epochs} epochs)")
    tuned = finetune(seen, cfg.seed)

    xt, yt = b["test"]
    xtr, ytr = b["train"]
    pre_logits, pre_feats = model_outputs(pretrained, xt)
    ft_logits, ft_feats = model_outputs(tuned, xt)
    _, pre_train_feats = model_outputs(pretrained, xtr)
    ft_train_logits, ft_train_feats = model_outputs(tuned, xtr)
    s_train = torch.isin(ytr, seen_t)

    gammas = {"alg": alg_gamma(ft_train_logits[s_train], ytr[s_train], seen),
              "oracle": oracle_gamma(ft_logits, yt, seen)}
    say(f"PCV: fine-tuning on halves of the {len(seen)} species ({2 * len(cfg.pcv_seeds)} runs)")
    xv, yv = subset("val", seen)
    pre_val_logits, _ = model_outputs(pretrained, xv)
    # Diagnostic, not a method: the same average logit gap on held-out images of the fine-tuning species. The
    # gap between this and ALG's γ is how much the fine-tuned model's fit to its own training images shrinks it.
    alg_held_out = alg_gamma(model_outputs(tuned, xv)[0], yv, seen)
    pcv = pcv_gamma(lambda train, s: model_outputs(finetune(train, 1000 + s), xv)[0], pre_val_logits, yv, seen,
                    seeds=cfg.pcv_seeds)
    gammas["pcv"] = pcv.gamma

    tables = {"pre-trained (domain A)": accuracy_table(model_outputs(pretrained, a["test"][0])[0], a["test"][1], seen),
              "pre-trained": accuracy_table(pre_logits, yt, seen),
              "fine-tuned": accuracy_table(ft_logits, yt, seen)}
    for name in ("alg", "pcv", "oracle"):
        tables[name] = accuracy_table(ft_logits, yt, seen, gammas[name])
    # NCM: class means from domain-B training images of every species (the paper's feature diagnostic).
    ncm = {"pre-trained": accuracy_table(ncm_logits(pre_feats, pre_train_feats, ytr, C), yt, seen),
           "fine-tuned": accuracy_table(ncm_logits(ft_feats, ft_train_feats, ytr, C), yt, seen)}
    temperature = fit_temperature(*_val_all(tuned, b))
    g, acc_s, acc_u = seen_unseen_curve(ft_logits, yt, seen)
    gp, pacc_s, pacc_u = seen_unseen_curve(pre_logits, yt, seen)
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "seen": seen, "absent": [c for c in range(C) if c not in seen],
        "tables": tables, "ncm": ncm, "gamma": gammas, "pcv_folds": pcv.folds, "alg_held_out": alg_held_out,
        "ausuc": {"pre-trained": ausuc(pre_logits, yt, seen), "fine-tuned": ausuc(ft_logits, yt, seen)},
        "ece": {"fine-tuned": expected_calibration_error(ft_logits, yt),
                "fine-tuned + temperature": expected_calibration_error(ft_logits / temperature, yt)},
        "temperature": temperature,
        "curve": {"fine-tuned": {"acc_seen": acc_s.tolist(), "acc_unseen": acc_u.tolist()},
                  "pre-trained": {"acc_seen": pacc_s.tolist(), "acc_unseen": pacc_u.tolist()}},
        "mean_logit": _mean_logits(ft_logits, pre_logits, yt, seen),
        "seconds": round(time.time() - started, 1),
    }


def _val_all(model: nn.Module, b) -> Tuple[torch.Tensor, torch.Tensor]:
    """Temperature is fitted on held-out domain-B data of the fine-tuning classes only (what a user has)."""
    return model_outputs(model, b["val"][0])[0], b["val"][1]


def _mean_logits(ft: torch.Tensor, pre: torch.Tensor, y: torch.Tensor, seen: List[int]) -> Dict[str, float]:
    """Mean logit of seen vs absent classes on absent-class test images: the scale gap the paper blames."""
    mask = torch.zeros(ft.shape[1], dtype=torch.bool)
    mask[seen] = True
    rows = ~mask[y]
    return {"fine-tuned seen": float(ft[rows][:, mask].mean()), "fine-tuned absent": float(ft[rows][:, ~mask].mean()),
            "pre-trained seen": float(pre[rows][:, mask].mean()), "pre-trained absent": float(pre[rows][:, ~mask].mean())}


def summary_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per model / method: γ and the accuracy table (for printing and the report)."""
    rows = []
    for name, t in result["tables"].items():
        rows.append(dict({"model": name, "γ": result["gamma"].get(name, 0.0)}, **t))
    for name, t in result["ncm"].items():
        rows.append(dict({"model": f"NCM {name}", "γ": float("nan")}, **t))
    return rows
