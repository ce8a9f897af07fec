"""How long the exact AUSUC takes on a large logit matrix (default: 1,000,000 samples × 1,000 classes).

    python benchmarks/bench_ausuc.py [--n 1000000] [--classes 1000] [--seen 500] [--threads 0]
    python benchmarks/bench_ausuc.py --device cuda --json ausuc.json   # the logits on the GPU

The logits alone are 4 GB of float32; ausuc reduces them in row chunks of ~64 MB, so the peak memory is the
matrix plus a few hundred MB. Prints one line per stage and a summary line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from traitlens.calibrate import ausuc, seen_unseen_curve, switch_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--seen", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu", help="where the logits live (generated on the CPU, then moved)")
    ap.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    logits = torch.empty(args.n, args.classes)
    step = 50_000
    for start in range(0, args.n, step):
        logits[start:start + step].normal_(generator=gen)
    labels = torch.randint(0, args.classes, (args.n,), generator=gen)
    seen = torch.arange(args.seen)
    t_gen = time.perf_counter() - t0
    if device.type != "cpu":
        logits, labels = logits.to(device), labels.to(device)
        _sync(device)
    print(f"logits {args.n:,} x {args.classes:,} float32 ({logits.numel() * 4 / 2**30:.2f} GiB) "
          f"generated in {t_gen:.1f} s; torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    stats = switch_stats(logits, labels, seen)
    _sync(device)
    t_red = time.perf_counter() - t0
    print(f"per-sample reductions (chunked max/argmax): {t_red:.2f} s")

    t0 = time.perf_counter()
    value = ausuc(logits, labels, seen)
    _sync(device)
    t_all = time.perf_counter() - t0
    g, _, _ = seen_unseen_curve(logits, labels, seen)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"ausuc (reductions + O(N log N) sweep over {g.numel() - 1:,} breakpoints): {t_all:.2f} s, "
          f"sweep alone ~{max(0.0, t_all - t_red):.2f} s")
    print(f"AUSUC = {value:.6f}; peak RSS {peak:.2f} GiB")
    print(f"SUMMARY ausuc N={args.n} C={args.classes} device={device} seconds={t_all:.2f}")
    if args.json:
        gpu = device.type == "cuda"
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "classes": args.classes, "seen": args.seen, "device": str(device),
                       "device_name": torch.cuda.get_device_name(device) if gpu else "cpu",
                       "threads": torch.get_num_threads(), "generate_s": round(t_gen, 3),
                       "reductions_s": round(t_red, 3), "ausuc_s": round(t_all, 3), "ausuc": value,
                       "peak_rss_gib": round(peak, 3),
                       "peak_cuda_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if gpu else None},
                      fh, indent=1)
    del stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
