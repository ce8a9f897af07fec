"""How broad a frozen backbone's pretraining must be for Prompt-CAM to reach 90% on the synthetic collection.

Pretrains the tiny ViT preset (or a wider one) from scratch on N synthetic species disjoint from the demo's,
freezes it, trains Prompt-CAM-Deep on ``traitlens.studies.recipes.CLAIMS_COLLECTION`` (the demo's 12 species, 300 images each)
and prints test top-1. A plain loop on in-memory tensors (AdamW, cosine with one warm-up epoch, 70-100%
crops and flips), not the engine: it is an experiment on the backbone, not a recipe.

    python benchmarks/prompt_cam_pretraining.py --device cuda                 # 200 species, 60 train images each
    python benchmarks/prompt_cam_pretraining.py --device cuda --per-species 50 --epochs 15
    python benchmarks/prompt_cam_pretraining.py --quick                       # seconds on a CPU: runs, nothing more

Measured on an H200 (fp32 with TF32; 83 s of it rendering 14,880 images on one CPU core):

=====================================================  =======  =========================================
pretraining (tiny-vit preset unless noted)             seconds  frozen Prompt-CAM test top-1 (train)
=====================================================  =======  =========================================
200 species × 60 train images, 30 epochs               33       0.886 (0.904) lr 2e-2, 10 epochs;
                                                                0.907 (0.920) lr 5e-2, 20 epochs
same, 192-d / 6 blocks / 6 heads                       37       0.901 (0.923); 0.922 (0.921)
200 species × 30 train images, 15 epochs               10       0.861 (0.850); 0.847 (0.857)
=====================================================  =======  =========================================

On the 2-core CPU (``--device cpu --species 100 --epochs 20 --widths tiny``): 100 species × 60 train images,
20 epochs, pretraining 361 s: 0.806 (0.810) with lr 2e-2 for 10 epochs, 0.881 (0.879) with 5e-2 for 20 (96 s);
200 species × 60, 20 epochs (``--species 200 --epochs 20``), pretraining 708 s: 0.864 (0.888) and 0.893 (0.912).

The embedded backbone (18 species × 60, 15 epochs, ~90 s on 2 CPU cores) gives 0.66 and fits only 0.65
of its own training images; tests/models/test_claims.py has the CPU-side measurements.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from traitlens.backbones import create
from traitlens.studies.recipes import CLAIMS_COLLECTION, pretraining
from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy
from traitlens.models import PromptCAM

WIDTHS = {"tiny": {}, "192": dict(embed_dim=192, depth=6, num_heads=6)}


BROAD = pretraining("vit", "broad")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--species", type=int, default=BROAD.collection.species,
                    help="pretraining species (default: the broad embedded backbone's, 200)")
    ap.add_argument("--per-species", type=int, default=BROAD.collection.per_species,
                    help="images a species, 60%% of them for training (default 100)")
    ap.add_argument("--epochs", type=int, default=BROAD.training.epochs, help="pretraining epochs (default 30)")
    ap.add_argument("--widths", nargs="+", default=["tiny", "192"], choices=sorted(WIDTHS))
    ap.add_argument("--quick", action="store_true", help="4 species, 20 claims images a species, one epoch each")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

    def tensors(arrays):
        images = torch.from_numpy(arrays[0]).to(dev).permute(0, 3, 1, 2).float() / 255
        return (images - mean) / std, torch.from_numpy(arrays[2].astype(np.int64)).to(dev)

    start = time.time()
    target = make_taxonomy(SynthConfig(**BROAD.avoid.as_dict()))
    species, per = (4, 10) if args.quick else (args.species, args.per_species)
    pcfg = SynthConfig(**dict(BROAD.collection.as_dict(), species=species, per_species=per), avoid_species_of=target)
    px, py = tensors(generate_arrays(pcfg, "train", make_taxonomy(pcfg)))
    claims = CLAIMS_COLLECTION.as_dict()
    ccfg = SynthConfig(**(dict(claims, per_species=20) if args.quick else claims))
    ctable = make_taxonomy(ccfg)
    cx, cy = tensors(generate_arrays(ccfg, "train", ctable))
    tx, ty = tensors(generate_arrays(ccfg, "test", ctable))
    print(f"rendered {len(px)} + {len(cx)} + {len(tx)} images in {time.time() - start:.0f}s", flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)

    def augment(x):
        b = x.shape[0]
        u = [torch.rand(b, generator=gen, device=dev) for _ in range(4)]  # scale, x shift, y shift, flip
        s = torch.sqrt(0.7 + 0.3 * u[0])
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = s * torch.where(u[3] < 0.5, -1.0, 1.0)
        theta[:, 1, 1] = s
        theta[:, 0, 2], theta[:, 1, 2] = (1 - s) * (2 * u[1] - 1), (1 - s) * (2 * u[2] - 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def fit(model, groups, x, y, epochs, batch):
        opt = torch.optim.AdamW(groups)
        per_epoch = math.ceil(len(x) / batch)
        total = epochs * per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / per_epoch if i < per_epoch else
                                                  0.5 * (1 + math.cos(math.pi * (i - per_epoch) / max(1, total - per_epoch))))
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), device=dev, generator=gen)
            for i in range(0, len(x), batch):
                idx = order[i:i + batch]
                loss = F.cross_entropy(model(augment(x[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    @torch.no_grad()
    def accuracy(model, x, y):
        model.eval()
        pred = torch.cat([model(x[i:i + 512]).argmax(1) for i in range(0, len(x), 512)])
        return pred.eq(y).float().mean().item()

    for width in args.widths:
        t = time.time()
        torch.manual_seed(0)
        backbone = create("tiny-vit", num_classes=int(py.max()) + 1, **WIDTHS[width]).to(dev)
        fit(backbone, [{"params": list(backbone.parameters()), "lr": 2e-3, "weight_decay": 0.05}], px, py,
            1 if args.quick else args.epochs, 128)
        own = accuracy(backbone, px[:2000], py[:2000])
        backbone.reset_classifier(0)
        seconds = time.time() - t
        for lr, epochs in ((2e-2, 10), (5e-2, 20)):
            t = time.time()
            torch.manual_seed(0)
            model = PromptCAM(backbone, int(cy.max()) + 1).to(dev)
            epochs = 1 if args.quick else epochs
            fit(model, [{"params": [model.prompts.tokens, *model.prompts.scorer.parameters()], "lr": lr,
                         "weight_decay": 0.0}], cx, cy, epochs, 16)
            print(f"{width}: {species} species × {per}, pretraining {seconds:.0f}s (own train top-1 {own:.3f}) | "
                  f"frozen Prompt-CAM lr {lr:g}, {epochs} epochs: test {accuracy(model, tx, ty):.3f}, "
                  f"train {accuracy(model, cx, cy):.3f} ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
