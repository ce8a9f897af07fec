"""Trait identification by greedy head blurring (Prompt-CAM, Chowdhury et al. 2025, Sec. 3.3).

Blurring head h for class c sets the pre-softmax attention logits of the class's query row in head h
to 0, so the row becomes uniform and the head's output for that query is the mean of its values.
Heads are blurred one by one, each time the one whose blurring leaves the target probability
highest; blurring stops when ``top_k`` heads remain or, as in the paper, when one more blur would
make the image misclassified. The heads blurred last are the trait-detecting heads.

The model-specific part is a *score* function: per-head outputs of the target row (…×H×1×d) →
the target's logit. Blurring row c changes only logit c (the other rows, and so the other logits,
are untouched), so every greedy step scores all H candidates of all images in one batched call.
Prompt-CAM uses it on the last ViT block, INTR on the last decoder layer's cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from traitlens.errors import UserError


@dataclass
class TraitHeads:
    """What greedy head blurring found for one target class per image.

    ``classes`` B; ``ranked_heads`` B×H, most important first (the reverse of the blurring order);
    ``num_kept`` B, how many of the ranked heads were left when blurring stopped; ``target_prob``
    B×(H+1), the target's probability after 0, 1, …, H blurs; ``still_predicted`` B×(H+1), whether
    the target was still the top class; ``maps`` B×H×h×w, every head's (unblurred) attention map.
    """

    classes: torch.Tensor
    ranked_heads: torch.Tensor
    num_kept: torch.Tensor
    target_prob: torch.Tensor
    still_predicted: torch.Tensor
    maps: torch.Tensor

    def kept(self, i: int) -> List[int]:
        """The trait-detecting heads of image ``i``, most important first."""
        return self.ranked_heads[i, : int(self.num_kept[i])].tolist()

    def top_maps(self, k: Optional[int] = None) -> torch.Tensor:
        """The maps of the top ``k`` ranked heads (default: the largest kept count) B×k×h×w."""
        k = int(self.num_kept.max()) if k is None else k
        idx = self.ranked_heads[:, :k]
        return torch.gather(self.maps, 1, idx[:, :, None, None].expand(-1, -1, *self.maps.shape[-2:]))

    def aggregate(self, k: Optional[int] = None) -> torch.Tensor:
        """One map per image B×h×w: the mean over the top ``k`` heads (default: each image's kept heads)."""
        if k is not None:
            return self.top_maps(k).mean(1)
        n = self.num_kept.clamp(min=1)
        ranks = torch.arange(self.maps.shape[1], device=n.device)
        mask = (ranks[None] < n[:, None]).to(self.maps.dtype)  # B×H over ranks
        ranked = self.top_maps(self.maps.shape[1])
        return (ranked * mask[:, :, None, None]).sum(1) / n[:, None, None].to(self.maps.dtype)


def greedy_head_blur(logits: torch.Tensor, classes: torch.Tensor, sharp: torch.Tensor, flat: torch.Tensor,
                     score: Callable[[torch.Tensor], torch.Tensor], maps: torch.Tensor, top_k: int = 4,
                     stop_on_misclassification: bool = True) -> TraitHeads:
    """Greedy head blurring.

    ``logits`` B×C (unblurred); ``classes`` B, the target per image; ``sharp`` and ``flat`` B×H×1×d,
    each head's output for the target row as trained and when blurred; ``score(head_out)`` maps
    B×K×H×1×d head outputs to the target logits B×K; ``maps`` B×H×h×w is passed through.
    """
    b, heads = sharp.shape[:2]
    if not 1 <= top_k <= heads:
        raise UserError(f"top_k must be between 1 and the number of heads ({heads}), got {top_k}")
    device = logits.device
    others = logits.scatter(1, classes[:, None], float("-inf"))
    other_lse, other_max = others.logsumexp(1), others.max(1).values  # B
    target_logit = logits.gather(1, classes[:, None])[:, 0]

    eye = torch.eye(heads, dtype=torch.bool, device=device)
    blurred = torch.zeros(b, heads, dtype=torch.bool, device=device)
    prob_hist = [torch.sigmoid(target_logit - other_lse)]  # softmax prob of the target, from its logit
    ok_hist = [target_logit > other_max]
    order = []
    for _ in range(heads):
        cand = blurred[:, None, :] | eye[None]  # B×K(candidate)×H: the heads blurred if candidate k is
        head_out = torch.where(cand[..., None, None], flat[:, None], sharp[:, None])  # B×K×H×1×d
        cand_logit = score(head_out)  # B×K
        cand_prob = torch.sigmoid(cand_logit - other_lse[:, None]).masked_fill(blurred, float("-inf"))
        pick = cand_prob.argmax(1)
        order.append(pick)
        blurred = blurred | eye[pick]
        picked = cand_logit.gather(1, pick[:, None])[:, 0]
        prob_hist.append(torch.sigmoid(picked - other_lse))
        ok_hist.append(picked > other_max)
    ranked = torch.stack(order[::-1], dim=1)
    target_prob = torch.stack(prob_hist, 1)
    still = torch.stack(ok_hist, 1)

    kept = torch.full((b,), top_k, dtype=torch.long, device=device)
    if stop_on_misclassification:
        # Blurring step s (1-based) misclassifies → the H-s+1 heads left before it are all needed.
        steps = torch.arange(1, heads + 1, device=device)
        flips = (~still[:, 1:]) & still[:, :1]  # only images that started correctly classified
        first = torch.where(flips, steps[None], torch.full_like(steps[None], heads + 1)).min(1).values
        kept = torch.maximum(kept, (heads - first + 1).clamp(max=heads))
    return TraitHeads(classes, ranked, kept, target_prob, still, maps)


def check_classes(classes, batch: int, num_classes: int, device) -> torch.Tensor:
    """One class index per image as a LongTensor (B); a single class is broadcast to the batch."""
    classes = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)
    if classes.numel() == 1 and batch > 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise UserError(f"give one class per image: {classes.numel()} classes for {batch} images")
    if ((classes < 0) | (classes >= num_classes)).any():
        raise UserError(f"class index out of range 0..{num_classes - 1}: {classes.tolist()}")
    return classes
