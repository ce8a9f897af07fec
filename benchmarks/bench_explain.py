"""One Finer-CAM map and an α sweep vs one inference forward, torchcam and grad-cam (not a timed test).

    python benchmarks/bench_explain.py --threads 2                       # the README table (CPU)
    python benchmarks/bench_explain.py --models vit_small_patch16_224 --batch 8 --repeats 3   # quick look
    python benchmarks/bench_explain.py --device cuda --batch 8,32,128

Random-weight timm models (200 classes, nothing downloaded), 224 px, the issue's setting: the 3 references
nearest in logit, uniform weights, α = γ = 0.6. In one process, each round runs every measurement once, in
turn (interleaved, so a change in machine load touches all of them), and the table gives medians over rounds:

- one map ÷ one inference forward of the same model and batch (goal ≤ 1.1×), ÷ torchcam's FinerCAM,
  ÷ grad-cam's FinerCAM (the same layer; grad-cam picks its own softmax-weighted target);
- a 5-value α sweep ÷ one map (goal ≤ 1.05×), and torchcam's sweep (5 forwards + backwards: its γ is fixed per
  call) ÷ ours (goal ≥ 5×);
- peak memory above the resident baseline during each (CPU: resident set sampled every 0.2 ms with glibc's
  mmap threshold pinned so freed tensors go back; CUDA: the allocator's peak);
- max |Δ| between our normalised feature-resolution map and torchcam's (the parity the tests assert);
- torchcam and grad-cam are optional: a missing one leaves its columns empty (NaN);
- with --scorecam C, Score-CAM on C channels: time ÷ (its masked forward batches × one forward).

--clock cpu times process CPU seconds instead of wall seconds: with one thread on a shared, loaded machine it
measures the work and not the waiting (with more threads it also counts spinning).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import threading
import time

import timm
import torch

ALPHA = 0.6
ALPHAS = [0.0, 0.3, 0.6, 0.9, 1.2]
K = 3


def pin_mmap_threshold():
    """Large frees go straight back to the OS (glibc), so the resident set follows the live tensors."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB
    except OSError:  # not glibc: the CPU memory column is then an upper bound
        pass


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class Peak:
    """Peak memory above the start of the block, in MiB (CPU: sampled resident set; CUDA: allocator peak)."""

    def __init__(self, device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.top = _rss()
            self.done = False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.done:
            self.top = max(self.top, _rss())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.done = True
            self.thread.join()
            self.mib = (self.top - self.base) / 2**20


def build(name, size, device):
    torch.manual_seed(0)
    kwargs = {"img_size": size} if size != 224 and name.startswith(("vit", "deit", "eva")) else {}
    return timm.create_model(name, num_classes=200, **kwargs).to(device).eval()


def measurements(model, x, device, scorecam_channels=0):
    """name → zero-argument callable; every callable does the whole job of its row, output on the device."""
    from traitlens.backbones import layout
    from traitlens.explain import explain

    size = x.shape[-1]
    lay = layout(model)
    layer = model.get_submodule(lay.explain_layer)
    reshape = (lambda t: lay.tokens_to_map(t, size, size)) if lay.family == "vit" else None
    opts = dict(finer=True, references="logit-distance", k=K, weights="uniform")
    try:
        from torchcam.methods import FinerCAM as TcFinerCAM
        tc = TcFinerCAM(model, lay.explain_layer, reshape_transform=reshape, gamma=ALPHA, num_references=K)
    except ImportError:
        tc = None
    try:
        from pytorch_grad_cam import FinerCAM as GcFinerCAM
        gc = GcFinerCAM(model, [layer], reshape_transform=reshape)
    except ImportError:
        gc = None

    def forward():
        with torch.inference_mode():
            return model(x)

    def tc_map(gamma=ALPHA):
        tc.gamma = gamma
        scores = model(x)
        return tc(scores.argmax(1).tolist(), scores)[0]

    fns = {
        "forward": forward,
        "traitlens": lambda: explain(model, x, alpha=ALPHA, **opts).maps,
        "torchcam": tc_map,
        "grad-cam": lambda: gc(x, alpha=ALPHA),
        "traitlens sweep": lambda: explain(model, x, alpha=ALPHAS, **opts).maps,
        "torchcam sweep": lambda: [tc_map(a) for a in ALPHAS],
    }
    if tc is None:
        del fns["torchcam"], fns["torchcam sweep"]
    if gc is None:
        del fns["grad-cam"]
    if scorecam_channels:
        fns["scorecam"] = lambda: explain(model, x, method="scorecam", finer=True, alpha=ALPHA, k=K,
                                          weights="uniform", score_channels=scorecam_channels,
                                          score_batch_size=x.shape[0])

    def parity():
        from traitlens.explain.engine import normalise
        if tc is None:
            return float("nan")
        ours = explain(model, x, alpha=ALPHA, **opts)
        theirs = tc_map()
        return float((normalise(ours.raw_maps, 1e-8) - theirs).abs().max())  # torchcam's epsilon

    def release():
        if tc is not None:
            tc.remove_hooks()
        if gc is not None:
            gc.base_cam.activations_and_grads.release()

    return fns, parity, release


def bench(name, batch, size, repeats, device, clock, scorecam_channels=0):
    model = build(name, size, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    fns, parity, release = measurements(model, x, device, scorecam_channels)
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in fns}
    peaks = {}
    try:
        for k, fn in fns.items():  # the warm-up call gives the memory of each (sampling stays out of the timings)
            with Peak(device) as p:
                fn()
            peaks[k] = p.mib
        for r in range(repeats):
            order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
            for k, fn in order:
                sync()
                t = now()
                fn()
                sync()
                times[k].append(now() - t)
            print(f"  {name} batch {batch}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
        delta = parity()
    finally:
        release()
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in ("torchcam", "grad-cam", "torchcam sweep"):  # absent packages: empty columns
        med.setdefault(k, float("nan"))
        peaks.setdefault(k, float("nan"))
    row = {"model": name, "batch": batch, "seconds": {k: round(v, 4) for k, v in med.items()},
           "peak_mib": {k: round(v, 1) for k, v in peaks.items()},
           "map_vs_forward": med["traitlens"] / med["forward"],
           "torchcam_vs_map": med["torchcam"] / med["traitlens"],
           "gradcam_vs_map": med["grad-cam"] / med["traitlens"],
           "sweep_vs_map": med["traitlens sweep"] / med["traitlens"],
           "torchcam_sweep_vs_sweep": med["torchcam sweep"] / med["traitlens sweep"],
           "max_abs_diff_torchcam": delta}
    if "scorecam" in med:
        from traitlens.explain import explain
        e = explain(model, x, method="scorecam", finer=True, alpha=ALPHA, k=K, weights="uniform",
                    score_channels=scorecam_channels, score_batch_size=batch)
        row["scorecam_vs_forwards"] = med["scorecam"] / ((e.extras["masked_forwards"] + 1) * med["forward"])
    row = {k: (round(v, 3) if isinstance(v, float) and k != "max_abs_diff_torchcam" else v) for k, v in row.items()}
    return row


HEADER = ("| model | batch | forward s | map ÷ forward | torchcam ÷ map | grad-cam ÷ map | sweep ÷ map "
          "| torchcam sweep ÷ sweep | peak MiB fwd / map / torchcam / grad-cam / sweep | max Δ torchcam |")


def table_row(r):
    p = r["peak_mib"]
    mem = " / ".join(f"{p[k]:.0f}" for k in ("forward", "traitlens", "torchcam", "grad-cam", "traitlens sweep"))
    return (f"| {r['model']} | {r['batch']} | {r['seconds']['forward']:.2f} | {r['map_vs_forward']:.2f}× "
            f"| {r['torchcam_vs_map']:.2f}× | {r['gradcam_vs_map']:.2f}× | {r['sweep_vs_map']:.3f}× "
            f"| {r['torchcam_sweep_vs_sweep']:.2f}× | {mem} | {r['max_abs_diff_torchcam']:.1e} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vit_small_patch16_224,vit_base_patch16_224")
    ap.add_argument("--batch", default="8,32", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", "--batches", type=int, default=5,
                    help="interleaved rounds; the table gives medians (--batches: the earlier name)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--scorecam", type=int, default=0, metavar="C",
                    help="also time Score-CAM on C channels (at the smallest batch)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pin_mmap_threshold()
    device = torch.device(args.device)
    batches = [int(b) for b in str(args.batch).split(",")]
    print(f"device {device}, {args.size} px, {args.repeats} interleaved rounds (medians), {args.clock} clock, "
          f"{torch.get_num_threads()} threads; α = γ = {ALPHA}, {K} references nearest in logit, uniform weights; "
          f"sweep α = {ALPHAS}")
    rows = []
    for name in args.models.split(","):
        for batch in batches:
            sc = args.scorecam if batch == min(batches) else 0
            rows.append(bench(name, batch, args.size, args.repeats, device, args.clock, sc))
            print(table_row(rows[-1]), file=sys.stderr, flush=True)  # each row as it is done (a long run)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for r in rows:
        print(table_row(r))
    for r in rows:
        if "scorecam_vs_forwards" in r:
            print(f"Score-CAM ({args.scorecam} channels) {r['model']} batch {r['batch']}: "
                  f"{r['scorecam_vs_forwards']:.2f}× its forwards (1 + one per mask batch of {r['batch']})")
    goals = {"map ÷ forward ≤ 1.1": all(r["map_vs_forward"] <= 1.1 for r in rows),
             "sweep ÷ map ≤ 1.05": all(r["sweep_vs_map"] <= 1.05 for r in rows),
             "torchcam sweep ÷ sweep ≥ 5": all(r["torchcam_sweep_vs_sweep"] >= 5 for r in rows)}  # NaN: not met
    print("goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "size": args.size, "repeats": args.repeats, "clock": args.clock,
                "threads": torch.get_num_threads(), "rows": rows, "goals": goals}
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=1)


if __name__ == "__main__":
    main()
