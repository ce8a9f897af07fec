"""Throughput and peak memory of segmentation by tracking (images/s; not a timed test).

    python benchmarks/bench_segment.py                          # label propagation, CPU, 256 and 512 px, 1,000 images
    python benchmarks/bench_segment.py --n 50 --sizes 256       # a short run
    python benchmarks/bench_segment.py --sam2 --device cuda     # also SAM 2 (random weights, hiera-tiny shape)
    python benchmarks/bench_segment.py --body-plan butterfly --rotation 180 --sizes 512 --threads 2
    python benchmarks/bench_segment.py --photo --n 0            # 4,000×3,000 photos through `traitlens segment`'s job

Queries are synthetic specimens rendered once (a pool of ``--pool`` images) and streamed ``--n`` times through
``track(order="pairwise")``, so the numbers measure propagation, not rendering. Label propagation runs at
``--work-size`` (default 128, the CLI's default) whatever the image size: images are resized to it and the
label maps come back at the image's own size. Peak memory: the process's resident set (CPU) or
``torch.cuda.max_memory_allocated`` (GPU); ``rss_growth_mb`` is the resident set at the end minus after the
first tenth of the images (flat memory: about 0). Registration searches every rotation (and mirror images,
``--mirror-pairs``) as the CLI does; ``--rotation 180`` streams queries in any orientation. ``--photo``
writes 4,000×3,000 photos of a specimen and segments them with the segment job (shrunk before tracking,
labels upsampled in bands), printing seconds per photo and the peak resident set. SAM 2 uses a random-weight model of the hiera-tiny shape at its
native 1024 px input, which costs what the real checkpoint costs; its default run is short (``--sam2-n``).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def pool_of(size: int, n: int, plan: str = "bird", rotation: float = 35.0):
    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy

    cfg = SynthConfig(species=2, per_species=max(2, n // 2 + 1), size=size, split=(0.0, 0.0, 1.0), body_plan=plan,
                      rotation=rotation)
    images, labels, _ = generate_arrays(cfg, "test", make_taxonomy(cfg))
    frames = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    return frames[0], torch.from_numpy(labels[0].astype(np.int64)), frames[1:n + 1]


def rss_mb() -> float:
    """Peak resident set of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """The resident set now (MB), from /proc (Linux); the peak elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 20
    except OSError:
        return rss_mb()


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
    count, early = 0, None
    for _, soft in track(prop, [support], stream(), order="pairwise", batch_size=batch):
        soft.argmax(0)
        count += 1
        if count == max(1, n // 10):
            early = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else rss_mb()
    return {"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 2),
            "peak_memory_mb": round(peak, 1), "memory": "cuda allocated" if device.type == "cuda" else "process RSS",
            "rss_growth_mb": round(current_rss_mb() - (early or current_rss_mb()), 1)}


def photos(work: str, count: int = 3) -> dict:
    """``count`` 4,000×3,000 photos of a specimen through the segment job: seconds per photo, peak RSS."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from traitlens.runs.inputs import discover
    from traitlens.runs.segment_job import segment_collection
    from traitlens.segment.backends import build_propagator

    frame, labels, pool = pool_of(512, 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(count):
            img = (pool[i % len(pool)].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            Image.fromarray(img).resize((4000, 3000), Image.BICUBIC).save(folder / f"photo{i}.jpg", quality=92)
        before = rss_mb()
        prop = build_propagator("labelprop", work_size=work if work == "auto" else int(work))
        start = time.perf_counter()
        result = segment_collection(prop, [(frame, labels)], discover([folder]), Path(tmp) / "out", overlays=True)
        seconds = time.perf_counter() - start
    return {"backend": "labelprop", "photos": result["done"], "image_px": "4000x3000", "work_px": work,
            "seconds_per_photo": round(seconds / max(1, result["done"]), 2),
            "peak_memory_mb": round(rss_mb(), 1), "peak_before_mb": round(before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per size (default 1000)")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--work-size", default="128", help="working side in pixels, or auto (from the thinnest trait)")
    ap.add_argument("--body-plan", default="bird", choices=["bird", "butterfly", "beetle"])
    ap.add_argument("--rotation", type=float, default=35.0, help="queries turned uniformly within ±DEG (180: any)")
    ap.add_argument("--photo", action="store_true", help="also time 4,000×3,000 photos through the segment job")
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
    from traitlens.data.synthetic import PLANS
    from traitlens.segment.support import WORK_BOUNDS

    pairs = PLANS[args.body_plan].mirror_pairs
    auto = args.work_size == "auto"
    side = WORK_BOUNDS[0] if auto else int(args.work_size)
    for size in [int(s) for s in args.sizes.split(",")] if args.n else []:
        support = pool_of(size, args.pool, args.body_plan, args.rotation)
        options = LabelPropOptions(work_size=(side, side), align=True, local=args.local, mirror_pairs=pairs,
                                   auto_work=WORK_BOUNDS if auto else None)
        prop = LabelPropagation(ColourPositionFeatures(), options, device=device)
        row = {"backend": "labelprop", "plan": args.body_plan, "rotation": args.rotation, "image_px": size,
               "device": str(device), "threads": torch.get_num_threads(),
               **run(prop, (support[0], support[1]), support[2], args.n, args.batch, device),
               "work_px": prop.options.work_size[0]}
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
    if args.photo:
        row = photos(args.work_size)
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
