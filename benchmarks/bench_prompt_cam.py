"""Prompt-CAM inference cost relative to the plain backbone forward (ViT-S/16, 224 px), and its memory.

    python benchmarks/bench_prompt_cam.py                       # the GPU if there is one, else a quick CPU run
    python benchmarks/bench_prompt_cam.py --device cuda --batch 64 --classes 10 200 1000
    python benchmarks/bench_prompt_cam.py --device cpu --full    # CPU: batch 4, 3 repeats (minutes on 2 cores)

For C classes it times, per batch: the plain backbone (``forward_features``); Prompt-CAM-Deep as
traitlens runs it (blocks 1..L-1 compute only the image tokens' outputs, the last block only the C
prompt outputs, fused attention); the same model run the straightforward way (every block on the
whole [prompts, CLS, patches] sequence, as the reference code does); the class attention maps of
one class per image from a cached last-block input (no backbone re-run); and greedy head blurring.
Writes ``benchmarks/results/prompt_cam.json`` and ``prompt_cam.png``.

On a CPU the default is ``--quick``: one thread, batch 2, the best of 2 timed runs after one warm-up
(the minimum, because on a shared machine other work only ever adds time). Memory is the peak of
``torch.cuda.max_memory_allocated`` above the start on a GPU; on a CPU it is the peak resident set
size above the start, sampled every millisecond from ``/proc/self/statm`` while the call runs (Linux,
glibc told to return freed blocks at once so the resident set follows the live tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import timm
import torch

from traitlens.models import PromptCAM


def naive_forward(model: PromptCAM, images: torch.Tensor) -> torch.Tensor:
    """The reference way: concatenate the prompts, run timm's whole block, drop the prompts again."""
    bb = model.backbone
    prompts = model.prompts.tokens
    c = prompts.shape[1]
    x = bb.norm_pre(bb._pos_embed(bb.patch_embed(images)))
    for i, blk in enumerate(bb.blocks):
        x = blk(torch.cat([prompts[i].expand(x.shape[0], -1, -1), x], 1))
        out = x[:, :c]
        x = x[:, c:]
    return model.prompts.scorer(bb.norm(out)).squeeze(-1)


def return_freed_memory() -> None:
    """Make glibc hand every block of 128 KiB or more back to the OS when it is freed, so that the resident
    set size follows the live tensors (by default glibc raises its mmap threshold after the first large
    free and keeps freed memory, which hides the peak of every later call)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic raising)
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSPeak:
    """Peak resident set size above the start while the ``with`` block runs (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 1e-3):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() - self.base)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = _rss_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() - self.base)


def timed(fn, device: torch.device, repeats: int, best: bool = False) -> tuple[float, float]:
    """(median seconds, or the minimum when ``best``; peak memory MiB above the start)."""
    for _ in range(5 if device.type == "cuda" else 1):  # warm-up (GPU clocks, allocator, kernel choice)
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for i in range(repeats):
        rss = RSSPeak() if device.type == "cpu" and i == 0 else None
        start = time.perf_counter()
        if rss is not None:
            with rss:
                fn()
        else:
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if rss is not None:
            cpu_peak = rss.peak / 2**20
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else cpu_peak
    return (min(times) if best else sorted(times)[len(times) // 2]), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on GPU, 2 (--quick) or 4 (--full) on CPU")
    ap.add_argument("--repeats", type=int, default=None, help="default: 50 on GPU, 2 (--quick) or 3 (--full) on CPU")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --quick)")
    speed = ap.add_mutually_exclusive_group()
    speed.add_argument("--quick", dest="quick", action="store_true", default=None,
                       help="short CPU run (the default on CPU): batch 2, best of 2, one thread")
    speed.add_argument("--full", dest="quick", action="store_false", help="batch 4, median of 3 on CPU")
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 200, 1000])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    quick = (not gpu) if args.quick is None else bool(args.quick)
    batch = args.batch or (64 if gpu else (2 if quick else 4))
    repeats = args.repeats or (50 if gpu else (2 if quick else 3))
    threads = args.threads or (1 if quick and not gpu else None)
    if threads:
        torch.set_num_threads(threads)
    if not gpu:
        return_freed_memory()
    dtype = torch.bfloat16 if gpu else torch.float32

    torch.manual_seed(0)
    backbone = timm.create_model("vit_small_patch16_224", num_classes=0).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, device=device)
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=gpu):
        for c in args.classes:
            # the baseline is timed again next to each class count: GPU timings drift between phases
            base_t, base_m = timed(lambda: backbone.forward_features(images), device, repeats, best=quick)
            model = PromptCAM(backbone, c).to(device).eval()
            labels = torch.randint(0, c, (batch,), device=device)
            state = model.encode(images)
            row = {"classes": c, "batch": batch, "backbone_s": base_t, "backbone_peak_mib": base_m,
                   "prompt_params_mib": model.prompts.tokens.numel() * 4 / 2**20}
            for name, fn in [
                ("prompt_cam", lambda: model(images)),
                ("naive", lambda: naive_forward(model, images)),
                ("maps_from_cache", lambda: model.class_attention(state, labels)),
                ("forward_and_maps", lambda: model.class_attention(images, labels)),
                ("head_blurring_from_cache", lambda: model.identify_traits(state, labels, top_k=1,
                                                                           stop_on_misclassification=False)),
            ]:
                t, m = timed(fn, device, repeats, best=quick)
                row[f"{name}_s"], row[f"{name}_x"], row[f"{name}_peak_mib"] = t, t / base_t, m
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device) if gpu else "cpu", "dtype": str(dtype),
            "threads": torch.get_num_threads(), "timing": "best" if quick else "median",
            "repeats": repeats, "model": "vit_small_patch16_224", "rows": rows}
    (args.out / "prompt_cam.json").write_text(json.dumps(meta, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [("prompt_cam", "Prompt-CAM (traitlens)"), ("naive", "whole-sequence blocks"),
             ("forward_and_maps", "forward + class maps")]
    width = 0.8 / len(names)
    for j, (key, label) in enumerate(names):
        ax.bar([i + j * width for i in range(len(rows))], [r[f"{key}_x"] for r in rows], width, label=label)
    ax.set_xticks([i + width for i in range(len(rows))], [f"C={r['classes']}" for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("time / backbone forward")
    ax.set_title(f"ViT-S/16 224 px, batch {batch}, {meta['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "prompt_cam.png", dpi=120)
    print(f"wrote {args.out / 'prompt_cam.json'} and {args.out / 'prompt_cam.png'}")


if __name__ == "__main__":
    main()
