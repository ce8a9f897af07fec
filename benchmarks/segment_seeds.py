"""Segmentation-by-tracking accuracy on several synthetic collections (one support per species).

Prints trait mIoU, the copy-the-support-mask baseline and per-part IoU for each collection seed, the
numbers behind README's segmentation row and tests/segment/test_synthetic_accuracy.py (seed 0):

    python benchmarks/segment_seeds.py                      # seeds 0 1 2 at 128 px, default clean-up
    python benchmarks/segment_seeds.py --size 64 --refine 2 # another grid, another number of rounds
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from traitlens.data.synthetic import PARTS, SynthConfig, generate_arrays, make_taxonomy
from traitlens.segment.features import ColourPositionFeatures
from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
from traitlens.segment.metrics import confusion, iou_from_confusion, mean_iou
from traitlens.segment.support import to_frame
from traitlens.segment.tracking import track


def measure(seed: int, size: int, refine, species: int = 12) -> dict:
    cfg = SynthConfig(species=species, per_species=5, size=size, split=(0.2, 0.0, 0.8), seed=seed)
    table = make_taxonomy(cfg)
    tr_i, tr_l, tr_s = generate_arrays(cfg, "train", table)
    te_i, te_l, te_s = generate_arrays(cfg, "test", table)
    k = len(PARTS)  # background and the parts
    prop = LabelPropagation(ColourPositionFeatures(), LabelPropOptions(work_size=(size, size), align=True, local=3, refine=refine))
    cm = torch.zeros(k, k, dtype=torch.long)
    cm_copy = torch.zeros(k, k, dtype=torch.long)
    start = time.perf_counter()
    for sp in range(species):
        j = int(np.where(tr_s == sp)[0][0])
        support = (to_frame(tr_i[j]), torch.from_numpy(tr_l[j].astype(np.int64)))
        queries = [(str(i), to_frame(te_i[i])) for i in np.where(te_s == sp)[0]]
        for qid, soft in track(prop, [support], queries, order="pairwise", batch_size=4, num_labels=k):
            truth = torch.from_numpy(te_l[int(qid)].astype(np.int64))
            cm += confusion(soft.argmax(0), truth, k)
            cm_copy += confusion(support[1], truth, k)
    per = iou_from_confusion(cm)
    return {"seed": seed, "miou": float(mean_iou(per)), "copy": float(mean_iou(iou_from_confusion(cm_copy))),
            "parts": [float(v) for v in per[1:]], "rounds": prop.options.refine, "seconds": time.perf_counter() - start}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="collection seeds (default 0 1 2)")
    ap.add_argument("--size", type=int, default=128, help="image and working size in pixels (default 128)")
    ap.add_argument("--refine", type=int, default=None,
                    help="clean-up rounds (default: the propagator's own, 2·(size/64)², at most 32)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = [p.name[:9] for p in PARTS[1:]]
    print(f"{'seed':>4} {'rounds':>6} {'mIoU':>6} {'copy':>6} " + " ".join(f"{n:>9}" for n in names) + "  seconds")
    for seed in args.seeds:
        r = measure(seed, args.size, args.refine)
        print(f"{seed:>4} {r['rounds']:>6} {r['miou']:6.3f} {r['copy']:6.3f} "
              + " ".join(f"{v:9.3f}" for v in r["parts"]) + f"  {r['seconds']:.1f}", flush=True)


if __name__ == "__main__":
    main()
