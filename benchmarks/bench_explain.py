"""Throughput of traitlens' CAM engine vs the grad-cam package (images/s; not a timed test).

    python benchmarks/bench_explain.py                      # ResNet-50 and ViT-S/16, 224 px, batch 32, 2 batches
    python benchmarks/bench_explain.py --models resnet50 --batches 5 --device cuda

For each model: Grad-CAM, Finer-CAM (α = 1, 3 references) and a 5-value α sweep, both libraries on the same
random-weight model, the same batch and the same targets. grad-cam runs its sweep as 5 calls (it has no other way).
Goals (issue 3): traitlens ≥ 3× grad-cam for Finer-CAM; a 5-value sweep ≤ 1.3× one map.
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, batches):
    fn()  # warm-up (allocations, kernels)
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / batches


def bench(name, batch, size, batches, device):
    from pytorch_grad_cam import FinerCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from traitlens.backbones import layout
    from traitlens.explain import explain

    torch.manual_seed(0)
    # A ViT's position embedding is made for its default size; other sizes (e.g. --size 112 on a busy CPU) need it.
    kwargs = {"img_size": size} if size != 224 and name.startswith(("vit", "deit", "eva")) else {}
    model = timm.create_model(name, num_classes=200, **kwargs).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    lay = layout(model)
    layer = model.get_submodule(lay.explain_layer)
    reshape = (lambda t: lay.tokens_to_map(t, size, size)) if lay.family == "vit" else None
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()

    def tl_grad():
        explain(model, x, finer=False)

    def tl_finer():
        explain(model, x, finer=True, alpha=1.0)

    def tl_sweep():
        explain(model, x, finer=True, alpha=ALPHAS)

    gc_grad = GradCAM(model, [layer], reshape_transform=reshape)
    gc_finer = FinerCAM(model, [layer], reshape_transform=reshape)
    targets = [ClassifierOutputTarget(p) for p in pred]

    def pkg_grad():
        gc_grad(input_tensor=x, targets=targets)

    def pkg_finer():
        gc_finer(x, alpha=1.0)

    def pkg_sweep():
        for a in ALPHAS:
            gc_finer(x, alpha=a)

    rows = []
    for label, ours, theirs in (("Grad-CAM", tl_grad, pkg_grad), ("Finer-CAM", tl_finer, pkg_finer),
                                (f"Finer α sweep ×{len(ALPHAS)}", tl_sweep, pkg_sweep)):
        t_ours = timed(ours, device, batches)
        t_theirs = timed(theirs, device, batches)
        rows.append((label, batch / t_ours, batch / t_theirs))
    gc_grad.activations_and_grads.release()
    gc_finer.base_cam.activations_and_grads.release()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, default=2, help="timed batches per measurement (after one warm-up)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, {args.size} px, {args.batches} timed batches, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<24} {'mode':<20} {'traitlens img/s':>16} {'grad-cam img/s':>15} {'speed-up':>9}")
    results = []
    for name in args.models.split(","):
        rows = bench(name, args.batch, args.size, args.batches, device)
        for label, ours, theirs in rows:
            print(f"{name:<24} {label:<20} {ours:>16.1f} {theirs:>15.1f} {ours / theirs:>8.2f}×")
            results.append({"model": name, "mode": label, "traitlens_img_s": round(ours, 2),
                            "gradcam_img_s": round(theirs, 2), "speedup": round(ours / theirs, 3)})
        single = rows[1][1]
        sweep = rows[2][1]
        print(f"{name:<24} {'sweep cost':<20} {single / sweep:>15.2f}× one Finer map")
        results.append({"model": name, "mode": "sweep cost (x one Finer map)", "ratio": round(single / sweep, 3)})
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "batch": args.batch, "size": args.size, "batches": args.batches,
                "threads": torch.get_num_threads(), "rows": results}
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=1)


if __name__ == "__main__":
    main()
