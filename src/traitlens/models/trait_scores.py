"""How well a self-explaining model's heads find the traits: accuracy, trait share, region removal.

For a Prompt-CAM or INTR model on a dataset with part masks (the synthetic collection):

- ``top1``: test accuracy;
- ``trait_ratio``: the true class's best head (rank 1 of greedy head blurring) — the share of its
  attention on the species' trait parts (the parts that tell it from its siblings), divided by the
  share those parts would get from uniform attention (their area share). 1 = no preference;
- ``drop_top`` / ``drop_random``: the relative drop of the true-class probability when the top
  ``fraction`` of the image, ranked by the kept heads' mean map, is blanked, and when a random
  region of the same size (random patch-level scores) is. The relative drop is bounded above by 1
  but not below (an image the model barely believes in can gain many times its probability), so
  the means are taken over the correctly classified images, and ``drop_top_median``,
  ``drop_random_median`` and ``top_beats_random`` (the share of those images whose top-region removal
  hurts more than the random one) are reported next to them; ``drop_top_all`` / ``drop_random_all``
  are the plain means over every image.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from traitlens.explain.metrics import confidence_drop


def trait_part_table(traits, class_names: Sequence[str]) -> torch.Tensor:
    """K×P bool: the parts in which species k differs from at least one of its siblings."""
    table = torch.zeros(len(class_names), len(traits.parts), dtype=torch.bool)
    for i, name in enumerate(class_names):
        s = traits.index(name)
        for sib in traits.siblings(s):
            parts = traits.diagnostic_parts(s, sib)
            if parts:
                table[i, torch.as_tensor(parts, dtype=torch.long)] = True
    return table


@torch.no_grad()
def score_batch(model, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, table: torch.Tensor,
                top_k: int = 4, fraction: float = 0.1, generator: torch.Generator | None = None
                ) -> Dict[str, torch.Tensor]:
    """Per-image scores (B each): correct, trait_ratio, drop_top, drop_random."""
    logits = model(images)
    found = model.identify_traits(images, labels, top_k=top_k)
    best = found.top_maps(1)[:, 0]  # B×h×w
    h, w = best.shape[-2:]
    trait = table.to(masks.device)[labels].gather(1, masks.long().clamp(0, table.shape[1] - 1).flatten(1))
    trait = trait.view_as(masks).float()[:, None]  # B×1×H×W
    area = F.adaptive_avg_pool2d(trait, (h, w))[:, 0]  # trait share of each patch
    uniform = area.flatten(1).mean(1)
    share = (best * area).flatten(1).sum(1) / best.flatten(1).sum(1).clamp(min=1e-12)
    ratio = share / uniform.clamp(min=1e-12)
    ratio = torch.where(uniform > 0, ratio, torch.full_like(ratio, float("nan")))

    size = images.shape[-2:]
    up = F.interpolate(found.aggregate()[:, None], size=size, mode="nearest")[:, 0]
    rand = torch.rand(best.shape, generator=generator).to(images.device)
    rand = F.interpolate(rand[:, None], size=size, mode="nearest")[:, 0]
    probs = logits.softmax(1)
    drop_top = confidence_drop(model, images, up, labels, k=fraction, probs=probs)["relative"]
    drop_random = confidence_drop(model, images, rand, labels, k=fraction, probs=probs)["relative"]
    return {"correct": (logits.argmax(1) == labels).float(), "trait_ratio": ratio, "drop_top": drop_top,
            "drop_random": drop_random, "best_head": found.ranked_heads[:, 0]}


def score_dataset(model, dataset, traits, class_names: Sequence[str], batch_size: int = 32, top_k: int = 4,
                  fraction: float = 0.1, seed: int = 0, device: str = "cpu") -> Dict[str, object]:
    """Scores over a dataset with masks: means, and the per-species counts of each best head."""
    from traitlens.data.folders import collate

    table = trait_part_table(traits, class_names)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    parts: Dict[str, List[torch.Tensor]] = {}
    labels_all = []
    model.eval()
    for batch in loader:
        out = score_batch(model, batch["image"].to(device), batch["label"].to(device), batch["mask"].to(device),
                          table, top_k, fraction, gen)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu())
        labels_all.append(batch["label"])
    cat = {k: torch.cat(v) for k, v in parts.items()}
    labels = torch.cat(labels_all)
    heads = int(model.num_heads)
    per_species = []
    for c, name in enumerate(class_names):
        sel = labels == c
        counts = torch.bincount(cat["best_head"][sel], minlength=heads)
        per_species.append({"species": name, "images": int(sel.sum()), "top_head": int(counts.argmax()),
                            "top_head_share": float(counts.max() / max(1, int(sel.sum()))),
                            "trait_ratio": float(cat["trait_ratio"][sel].nanmean())})
    ok = cat["correct"] > 0
    top, rand = cat["drop_top"][ok], cat["drop_random"][ok]
    nan = float("nan")
    return {"top1": float(cat["correct"].mean()), "trait_ratio": float(cat["trait_ratio"].nanmean()),
            "drop_top": float(top.mean()) if ok.any() else nan,
            "drop_random": float(rand.mean()) if ok.any() else nan,
            "drop_top_median": float(top.median()) if ok.any() else nan,
            "drop_random_median": float(rand.median()) if ok.any() else nan,
            "top_beats_random": float((top > rand).float().mean()) if ok.any() else nan,
            "drop_top_all": float(cat["drop_top"].mean()), "drop_random_all": float(cat["drop_random"].mean()),
            "n": int(labels.numel()), "n_correct": int(ok.sum()), "per_species": per_species}
