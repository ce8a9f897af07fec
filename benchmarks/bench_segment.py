"""Throughput and peak memory of segmentation by tracking (images/s; not a timed test).

    python benchmarks/bench_segment.py                          # label propagation, CPU, 256 and 512 px, 1,000 images
    python benchmarks/bench_segment.py --n 50 --sizes 256       # a short run
    python benchmarks/bench_segment.py --sam2 --device cuda     # also SAM 2 (random weights, hiera-tiny shape)

Queries are synthetic specimens rendered once (a pool of ``--pool`` images) and streamed ``--n`` times through
``track(order="pairwise")``, so the numbers measure propagation, not rendering. Label propagation runs at
``--work-size`` (default 128, the CLI's default) whatever the image size: images are resized to it and the
label maps come back at the image's own size. Peak memory: the process's resident set (CPU) or
``torch.cuda.max_memory_allocated`` (GPU). SAM 2 uses a random-weight model of the hiera-tiny shape at its
native 1024 px input, which costs what the real checkpoint costs; its default run is short (``--sam2-n``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def pool_of(size: int, n: int):
    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy

    cfg = SynthConfig(species=2, per_species=max(2, n // 2 + 1), size=size, split=(0.0, 0.0, 1.0))
    images, labels, _ = generate_arrays(cfg, "test", make_taxonomy(cfg))
    frames = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    return frames[0], torch.from_numpy(labels[0].astype(np.int64)), frames[1:n + 1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(prop, support, pool, n, batch, device) -> dict:
    from traitlens.segment.tracking import track

    def stream():
        for i in range(n):
            yield str(i), pool[i % len(pool)]

    list(track(prop, [support], ((str(i), pool[i % len(pool)]) for i in range(min(batch, n))), batch_size=batch))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    count = 0
    for _, soft in track(prop, [support], stream(), order="pairwise", batch_size=batch):
        soft.argmax(0)
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else rss_mb()
    return {"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 2),
            "peak_memory_mb": round(peak, 1), "memory": "cuda allocated" if device.type == "cuda" else "process RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per size (default 1000)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--work-size", type=int, default=128)
    ap.add_argument("--local", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sam2", action="store_true", help="also time SAM 2 (random weights)")
    ap.add_argument("--sam2-n", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from traitlens.segment.features import ColourPositionFeatures
    from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions

    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        support = pool_of(size, args.pool)
        options = LabelPropOptions(work_size=(args.work_size, args.work_size), align=True, local=args.local)
        prop = LabelPropagation(ColourPositionFeatures(), options, device=device)
        row = {"backend": "labelprop", "image_px": size, "work_px": args.work_size, "device": str(device),
               "threads": torch.get_num_threads(),
               **run(prop, (support[0], support[1]), support[2], args.n, args.batch, device)}
        print(json.dumps(row), flush=True)
        results.append(row)
        if args.sam2:
            from transformers import Sam2VideoConfig, Sam2VideoModel

            from traitlens.segment.sam2 import Sam2Propagator

            model = Sam2VideoModel(Sam2VideoConfig()).eval().to(device)
            if device.type == "cuda":
                model = model.to(torch.bfloat16)
            sam = Sam2Propagator(model, device=device)
            row = {"backend": "sam2 (hiera-tiny shape, random weights)", "image_px": size, "work_px": 1024,
                   "device": str(device), **run(sam, (support[0], support[1]), support[2], args.sam2_n, 1, device)}
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
