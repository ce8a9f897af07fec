"""``build_atlas``: which trait tells species A from species B, over a whole collection.

>>> from traitlens.atlas import build_atlas
>>> atlas = build_atlas(model, test_set, pairs="siblings", parts="masks", traits=traits)
>>> atlas.pairs[0].sentence
'*Pseudavis rubra* differs from *Pseudavis alba* most at the **wing spot**: ...'

Stages: pairs (:mod:`~traitlens.atlas.pairs`), parts for every image (the dataset's masks, or propagated from
labelled supports, :mod:`~traitlens.atlas.parts`), the batched evidence pass (:mod:`~traitlens.atlas.evidence`)
that turns each image into one JSON record (:func:`records`), and the ranking with bootstrap intervals
(:mod:`~traitlens.atlas.ranking`). The bulk command (``traitlens atlas``, :mod:`traitlens.runs.atlas_job`) runs
the same stages image by image through the resumable runner.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from traitlens.atlas.evidence import EvidenceOptions, image_evidence, resolved_settings
from traitlens.atlas.pairs import display_name, partner_table, select_pairs
from traitlens.atlas.parts import PartPropagator, part_names_from
from traitlens.atlas.ranking import assemble
from traitlens.atlas.result import Atlas
from traitlens.errors import UserError


def _clean(values, digits: int = 5) -> list:
    return [None if math.isnan(v) else round(v, digits) for v in values.tolist()]


def records(evidence: Dict[str, torch.Tensor], labels: torch.Tensor, partners: torch.Tensor,
            paths: Optional[Sequence[str]] = None) -> List[dict]:
    """One JSON-able record per image from :func:`~traitlens.atlas.evidence.image_evidence`'s tensors.

    ``{"label", "correct", "prob", "area": [P], "gradcam": [P], ("heads": [P]), "partners": {"<b>": {"finer",
    "drop", "random": [P], "margin"}}, ("path")}``; None where a part is absent.
    """
    out = []
    pred = evidence["prob"].argmax(1)
    for i in range(labels.shape[0]):
        a = int(labels[i])
        rec = {"label": a, "correct": bool(pred[i] == a), "prob": round(float(evidence["prob"][i, a]), 5),
               "area": _clean(evidence["area"][i], 6), "gradcam": _clean(evidence["gradcam"][i])}
        if "heads" in evidence:
            rec["heads"] = _clean(evidence["heads"][i])
        rec["partners"] = {
            str(int(partners[i, j])): {"finer": _clean(evidence["finer"][j, i]), "drop": _clean(evidence["drop"][j, i]),
                                       "random": _clean(evidence["random"][j, i]),
                                       "margin": round(float(evidence["margin"][j, i]), 5)}
            for j in range(partners.shape[1]) if int(partners[i, j]) >= 0}
        if paths is not None:
            rec["path"] = str(paths[i])
        out.append(rec)
    return out


def partner_matrix(labels: torch.Tensor, partners: Sequence[Sequence[int]]) -> torch.Tensor:
    """B labels and each class's partners → B×J partner ids (-1 pads; J ≥ 1)."""
    rows = [list(partners[int(a)]) for a in labels.tolist()]
    j = max([1] + [len(r) for r in rows])
    return torch.tensor([r + [-1] * (j - len(r)) for r in rows], dtype=torch.long).view(len(rows), j)


def image_seed(seed: int, name: str) -> int:
    """The seed of one image's random control region: from the run's seed and the image's name, so the atlas
    does not depend on batch order, resumes or shards."""
    return zlib.crc32(f"{seed}:{name}".encode("utf-8"))


def image_name(path) -> str:
    """``<species folder>/<file>``: the name :func:`build_atlas` seeds an image's control region by, the id the
    bulk job (``traitlens atlas``) gives it, so the two draw the same regions and neither depends on where the
    collection lives."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised B×3×H×W → [0, 1] frames (for segmentation and pictures)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


def build_atlas(model: torch.nn.Module, dataset, pairs: Union[str, Sequence] = "siblings",
                parts: Union[str, Callable, PartPropagator] = "masks", *, traits=None,
                class_names: Optional[Sequence[str]] = None, confusion=None, part_names=None,
                options: EvidenceOptions = EvidenceOptions(), batch_size: int = 32, bootstrap: int = 1000,
                seed: int = 0, progress: bool = True) -> Atlas:
    """The atlas of ``model`` over ``dataset`` (sample dicts: ``image`` 3×H×W normalised, ``label``, ``path``,
    and ``mask`` H×W part ids with ``parts="masks"``).

    pairs: ``siblings`` (genera of ``traits``), ``confused`` (needs ``confusion``, K×K on the validation split),
    ``all``, or explicit ``"A:B,..."`` / ``[(A, B), ...]`` (class names, display names or indices).
    parts: ``"masks"``, a :class:`~traitlens.atlas.parts.PartPropagator` (segmentation by tracking from
    labelled supports), any callable ``(frames N×3×H×W in [0, 1], labels N) → N×H×W`` part ids, or a mapping
    image path → H×W part ids made beforehand (:func:`propagate_dataset`, to share one propagation between
    models).
    part_names: id → name (default: traits.json's parts). Only images whose species is in a pair are read.
    """
    from traitlens.data.folders import collate
    from traitlens.progress import progress as bar

    names = list(class_names or getattr(dataset, "class_names", None) or [])
    if not names:
        raise UserError("class names are needed (a dataset with class_names, or class_names=...)")
    chosen, skipped = select_pairs(pairs, names, traits, confusion)
    partners = partner_table(chosen, len(names))
    part_names = part_names if isinstance(part_names, dict) else part_names_from(traits, part_names)
    num_parts = max(part_names)
    wanted = [i for i, y in enumerate(_targets(dataset)) if partners[y]]
    if not wanted:
        raise UserError("no image of any species in the chosen pairs")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, wanted), batch_size=batch_size,
                                         collate_fn=collate)
    if isinstance(parts, str) and parts != "masks":
        raise UserError(f"parts must be 'masks', a PartPropagator or a callable, not {parts!r}")
    transform = getattr(dataset, "transform", None)
    settings = None
    recs: List[dict] = []
    for batch in bar(loader, desc="atlas: evidence", unit="batch") if progress else loader:
        for path, reason in batch.get("skipped", []):
            skipped.append({"image": path, "reason": reason})
        if "image" not in batch:
            continue
        images, labels = batch["image"], batch["label"]
        if parts == "masks":
            if "mask" not in batch:
                raise UserError("parts='masks' needs a dataset with part masks; give supports to propagate parts")
            part_maps = batch["mask"]
        elif isinstance(parts, Mapping):
            missing = [p for p in batch["path"] if p not in parts]
            if missing:
                raise UserError(f"no part map for {len(missing)} images (first: {missing[0]})")
            part_maps = torch.stack([torch.as_tensor(parts[p]).long() for p in batch["path"]])
        else:
            frames = denormalise(images, transform.mean, transform.std)
            part_maps = parts(frames, labels)
        settings = settings or resolved_settings(model, images.shape[-2:], options)
        refs = partner_matrix(labels, partners)
        seeds = [image_seed(seed, image_name(p)) for p in batch["path"]]
        ev = image_evidence(model, images, labels, part_maps, refs, num_parts, options, settings=settings,
                            seeds=seeds)
        recs += records(ev, labels, refs, batch.get("path"))
    display = [display_name(traits, n) for n in names]
    return assemble(recs, chosen, names, part_names, display, bootstrap=bootstrap, seed=seed, skipped=skipped,
                    settings={"evidence": options.as_dict(), **(settings or {})}, progress=progress)


def propagate_dataset(propagator: PartPropagator, dataset, batch_size: int = 32, progress: bool = True
                      ) -> Dict[str, torch.Tensor]:
    """Part maps for every image of ``dataset`` (its transform's normalised images), propagated from the
    propagator's supports: ``{path: H×W long}``, for ``build_atlas(parts=...)``."""
    from traitlens.data.folders import collate
    from traitlens.progress import progress as bar

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    out: Dict[str, torch.Tensor] = {}
    for batch in bar(loader, desc="atlas: parts", unit="batch") if progress else loader:
        if "image" not in batch:
            continue
        maps = propagator(denormalise(batch["image"], dataset.transform.mean, dataset.transform.std), batch["label"])
        out.update(zip(batch["path"], maps))
    return out


def _targets(dataset) -> List[int]:
    if hasattr(dataset, "targets"):
        return list(dataset.targets)
    return [int(dataset[i]["label"]) for i in range(len(dataset))]
