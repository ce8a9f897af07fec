"""The atlas job: ``traitlens atlas`` image by image through the resumable, sharded runner.

Stages, each with its progress: parts (the image's part mask, or propagated from labelled supports by
segmentation by tracking, saved as ``parts/<image>.png``), the evidence pass (one record per image in
``results.jsonl``: :func:`traitlens.atlas.records`), then on rank 0 the ranking with bootstrap intervals
(``atlas.json``, ``atlas.csv``) and the cards (``index.html``). A rerun into the same folder skips every image
already recorded, so a finished atlas is redrawn in seconds; a folder made with other pairs, parts or
evidence settings is refused (``run.json``). An image whose folder is not a species of the model, or that has
no part mask, is listed in ``skipped.jsonl`` and the atlas is made from the rest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from traitlens.atlas.build import image_seed
from traitlens.atlas.pairs import display_name
from traitlens.atlas import (EvidenceOptions, PartPropagator, assemble, denormalise, image_evidence,
                             partner_matrix, partner_table, precision_table, records, resolved_settings,
                             specimen_map)
from traitlens.data.imageio import SkippedFiles, load_image, load_mask
from traitlens.data.transforms import run_transform
from traitlens.errors import BadImageError
from traitlens.progress import log, progress
from traitlens.runs.inputs import Item, flat_name
from traitlens.runs.runner import MAX_PIXELS, Job, Output, batched, run
from traitlens.runs.store import png_bytes

MASK_SUFFIX = ".png"
CARDS = "cards.npz"  # the cards' pictures, so a report can redraw the atlas without the model


def species_of(item: Item) -> str:
    """The species folder of an item id (``<species>/<image>``)."""
    return item.id.split("/", 1)[0]


class AtlasJob(Job):
    """Evidence for every image of a species in ``pairs`` (model class ids), then the atlas.

    ``mask_root``: the part-mask tree (``<mask_root>/<species>/<stem>.png``) when parts come from masks;
    ``propagator``: a :class:`~traitlens.atlas.PartPropagator` otherwise. ``traits``: for display names and,
    when its pair table covers the pairs, the precision table on the page.
    """

    name = "atlas"

    def __init__(self, model: torch.nn.Module, transform, class_names: Sequence[str], pairs, part_names: Dict[int, str],
                 mask_root: Optional[Path] = None, propagator: Optional[PartPropagator] = None,
                 options: EvidenceOptions = EvidenceOptions(), traits=None, skipped_pairs: Sequence[dict] = (),
                 batch_size: int = 32, bootstrap: int = 1000, seed: int = 0, parts_key: str = "masks"):
        if (mask_root is None) == (propagator is None):
            raise ValueError("give either mask_root or propagator")
        self.model, self.transform, self.names = model.eval(), transform, list(class_names)
        self.pairs, self.part_names = [tuple(p) for p in pairs], dict(part_names)
        self.num_parts = max(self.part_names)
        self.partners = partner_table(self.pairs, len(self.names))
        self.mask_root, self.propagator, self.options, self.traits = mask_root, propagator, options, traits
        self.skipped_pairs, self.batch_size, self.bootstrap, self.seed = list(skipped_pairs), batch_size, bootstrap, seed
        self.parts_key = parts_key
        self.index = {n: i for i, n in enumerate(self.names)}
        self._settings: Optional[dict] = None

    def settings(self) -> dict:
        return {"pairs": [[self.names[a], self.names[b]] for a, b in self.pairs], "parts": self.parts_key,
                "part_names": {str(k): v for k, v in sorted(self.part_names.items())},
                "evidence": self.options.as_dict(), "seed": self.seed}

    # -------------------------------------------------------------------------------- per image
    def wanted(self, items: Sequence[Item]) -> List[Item]:
        """The items of species that are in a pair (the others need no evidence)."""
        return [it for it in items if self.index.get(species_of(it)) is not None
                and self.partners[self.index[species_of(it)]]]

    def prepare(self, image, item: Item):
        label = self.index.get(species_of(item))
        if label is None:
            raise BadImageError(item.path, f"its folder {species_of(item)!r} is not a species the model knows")
        mask = None
        if self.mask_root is not None:
            path = self.mask_root / Path(item.id).with_suffix(MASK_SUFFIX)
            if not path.is_file():
                raise BadImageError(item.path, f"no part mask at {path}")
            mask = load_mask(path)
            if mask.shape != (image.height, image.width):
                raise BadImageError(item.path, f"its part mask {path} is {mask.shape[1]}×{mask.shape[0]}, the "
                                               f"image {image.width}×{image.height}")
        x, m, _ = run_transform(self.transform, image, mask, torch.Generator().manual_seed(0))
        return x, m, label

    def process(self, samples: Iterator[Tuple[Item, tuple]]) -> Iterator[Output]:
        for batch in batched(samples, self.batch_size):
            yield from self._batch(batch)

    def _batch(self, batch) -> Iterator[Output]:
        images = torch.stack([x for _, (x, _, _) in batch])  # B×3×H×W
        labels = torch.tensor([y for _, (_, _, y) in batch], dtype=torch.long)
        artifacts: List[Dict[str, bytes]] = [{} for _ in batch]
        if self.propagator is not None:
            parts = self.propagator(denormalise(images, self.transform.mean, self.transform.std), labels)
            for i, (item, _) in enumerate(batch):
                artifacts[i][f"parts/{flat_name(item.id)}.png"] = _label_png(parts[i].numpy())
        else:
            parts = torch.stack([m for _, (_, m, _) in batch])
        self._settings = self._settings or resolved_settings(self.model, images.shape[-2:], self.options)
        refs = partner_matrix(labels, self.partners)
        ev = image_evidence(self.model, images, labels, parts, refs, self.num_parts, self.options,
                            settings=self._settings, seeds=[image_seed(self.seed, item.id) for item, _ in batch])
        for i, rec in enumerate(records(ev, labels, refs, [str(item.path) for item, _ in batch])):
            item = batch[i][0]
            if self.propagator is not None:
                rec["parts"] = f"parts/{flat_name(item.id)}.png"
            yield item, rec, artifacts[i]

    # -------------------------------------------------------------------------------- the atlas
    def finish(self, out: Path, recs: List[dict]) -> dict:
        from traitlens.report.atlas import write_atlas_page

        display = [display_name(self.traits, n) for n in self.names]
        atlas = assemble(recs, self.pairs, self.names, self.part_names, display, bootstrap=self.bootstrap,
                         seed=self.seed, skipped=self.skipped_pairs,
                         settings={"evidence": self.options.as_dict(), "parts": self.parts_key})
        paths = atlas.write(out)
        table = _precision(atlas, self.traits)
        specimens = self._specimens(out, atlas, recs)
        write_cards(out / CARDS, specimens)
        write_atlas_page(atlas, out / "index.html", specimens, table)
        return {"pairs": len(atlas.pairs), "pairs_left_out": len(atlas.skipped),
                "localised": sum(p.localised for p in atlas.pairs), "precision": table,
                "atlas": str(paths["json"]), "csv": str(paths["csv"]), "index": str(out / "index.html")}

    def _specimens(self, out: Path, atlas, recs: List[dict]) -> Dict[str, dict]:
        """The cards' pictures: each pair's representative of A and B with its top part and Finer-CAM map (for
        the pairs the page draws a card for)."""
        from traitlens.report.atlas import MAX_CARDS

        by_path = {r.get("path"): r for r in recs}
        shown: Dict[str, dict] = {}
        for pair in progress(atlas.pairs[:MAX_CARDS], desc="atlas: cards", unit="pair"):  # the page's cards
            if pair.top is None:
                continue
            a, b = self.index[pair.a], self.index[pair.b]
            sides = {}
            for side, (own, other) in (("a", (a, b)), ("b", (b, a))):
                path = pair.examples.get(side)
                rec = by_path.get(path)
                if rec is None:
                    continue
                try:
                    sides[side] = self._specimen(out, path, rec, own, other, pair.top.part)
                except (BadImageError, ValueError):  # changed since its record was written, or its mask no
                    continue  # longer fits it: the card shows the rest
            shown[pair.key] = sides
        return shown

    def _specimen(self, out: Path, path: str, rec: dict, own: int, other: int, part: int):
        image = load_image(path, max_pixels=MAX_PIXELS)
        if self.mask_root is not None:  # the collection's own mask, at the photo's size: transformed with it
            mask = load_mask(self.mask_root / Path(rec["id"]).with_suffix(MASK_SUFFIX))
            x, m, _ = run_transform(self.transform, image, mask, torch.Generator().manual_seed(0))
        else:  # propagated parts were saved at the model's input size, in the transformed image's frame
            x, _, _ = run_transform(self.transform, image, None, torch.Generator().manual_seed(0))
            m = torch.as_tensor(load_mask(out / rec["parts"])).long()
        heat = specimen_map(self.model, x, own, other, self.options, self._settings)
        picture = (denormalise(x[None], self.transform.mean, self.transform.std)[0] * 255).round().byte()
        return picture.permute(1, 2, 0).numpy(), (m == part).numpy(), heat.numpy()


def write_cards(path: Path, specimens: Dict[str, dict]) -> None:
    """The representative specimens of every card (``{pair key: {side: (picture, mask, heat)}}``) as one
    ``.npz`` (arrays only; :func:`load_cards` reads it back), written whole."""
    arrays = {}
    for k, (key, sides) in enumerate(specimens.items()):
        arrays[f"key_{k}"] = np.array(key)
        for side, (picture, mask, heat) in sides.items():
            arrays[f"{k}_{side}_picture"] = picture
            arrays[f"{k}_{side}_mask"] = mask
            arrays[f"{k}_{side}_heat"] = heat.astype(np.float16)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_cards(path: Path) -> Dict[str, dict]:
    """What :func:`write_cards` wrote (nothing is unpickled)."""
    out: Dict[str, dict] = {}
    if not Path(path).is_file():
        return out
    with np.load(path, allow_pickle=False) as z:
        keys = {int(n[4:]): str(z[n]) for n in z.files if n.startswith("key_")}
        for k, key in sorted(keys.items()):
            out[key] = {side: (z[f"{k}_{side}_picture"], z[f"{k}_{side}_mask"], z[f"{k}_{side}_heat"].astype(np.float32))
                        for side in ("a", "b") if f"{k}_{side}_picture" in z.files}
    return out


def _label_png(labels: np.ndarray) -> bytes:
    if labels.max() > 255:
        return png_bytes(labels.astype(np.uint16))
    return png_bytes(labels.astype(np.uint8), mode="L")


def _precision(atlas, traits) -> Optional[dict]:
    """The precision table when ``traits`` has a pair table for every pair of the atlas."""
    if traits is None or not atlas.pairs:
        return None
    try:
        return precision_table(atlas, traits)
    except Exception:  # noqa: BLE001 - a traits.json that does not cover the model's classes: no table
        return None


def supports_key(propagator: PartPropagator) -> str:
    """What identifies a run's supports in ``run.json``: a digest of their pixels, labels and species."""
    h = hashlib.sha1()
    for s in propagator.supports:
        h.update(s.frame.numpy().tobytes())
        h.update(s.labels.numpy().astype(np.int64).tobytes())
        h.update(str(s.species).encode())
    return f"support:{h.hexdigest()[:16]}"


def atlas_collection(model: torch.nn.Module, items: Sequence[Item], transform, out: Path, class_names: Sequence[str],
                     pairs, part_names: Dict[int, str], workers: int = 0, skipped: Optional[SkippedFiles] = None,
                     **options) -> dict:
    """Make the atlas of ``items`` into ``out`` (``options``: those of :class:`AtlasJob`); returns the runner's
    counts, on rank 0 with the atlas' summary (pairs, localised pairs, precision table when traits allow)."""
    if options.get("propagator") is not None:
        options.setdefault("parts_key", supports_key(options["propagator"]))
        log(f"atlas: parts propagated from {len(options['propagator'].supports)} labelled specimens")
    job = AtlasJob(model, transform, class_names, pairs, part_names, **options)
    return run(job, job.wanted(items), out, workers=workers, skipped=skipped)
