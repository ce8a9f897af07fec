"""The Finer-CAM claims on ground truth: on sibling species, Finer-CAM should put more of its energy on the
parts that tell the siblings apart than Grad-CAM does, and masking its top 5% should hurt the prediction more.
The second holds; the first does not reproduce robustly (see the asserts).

A tiny ResNet (the demo's ``tiny-cnn`` preset) is trained from scratch on a small synthetic collection
(6 species in 2 genera; ~3 minutes on 2 busy cores the first time, then cached by recipe under
``$TRAITLENS_CACHE/explain-tests``). Margins are set well inside what was measured (see the asserts).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from traitlens.cache import cache_dir, recipe_key

RECIPE = dict(species=6, per_species=60, size=64, seed=0, backbone="tiny-cnn", epochs=15, lr=2e-3,
              weight_decay=0.05, batch=32, torch=torch.__version__.split("+")[0], v=1)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _tensor(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


@pytest.fixture(scope="module")
def trained():
    from safetensors.torch import load_file, save_file

    from traitlens import backbones
    from traitlens.data.synthetic import SynthConfig, generate_arrays, make_taxonomy

    cfg = SynthConfig(species=RECIPE["species"], per_species=RECIPE["per_species"], size=RECIPE["size"],
                      seed=RECIPE["seed"])
    table = make_taxonomy(cfg)
    torch.manual_seed(0)
    model = backbones.create(RECIPE["backbone"], num_classes=cfg.species)
    images, parts, species = generate_arrays(cfg, "test", table)
    # The renderer is still evolving: key the cached model by the data it sees too.
    data_key = hashlib.sha256(images.tobytes() + parts.tobytes()).hexdigest()[:12]
    path = cache_dir("explain-tests") / f"claim-{recipe_key(dict(RECIPE, data=data_key))}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
    else:
        train_images, _, train_species = generate_arrays(cfg, "train", table)
        x, y = _tensor(train_images), torch.from_numpy(train_species)
        opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        g = torch.Generator().manual_seed(0)
        for _ in range(RECIPE["epochs"]):
            model.train()
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), RECIPE["batch"]):
                idx = perm[i:i + RECIPE["batch"]]
                xb = x[idx]
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        save_file(model.state_dict(), str(path))
    return model.eval(), table, _tensor(images), torch.from_numpy(species), torch.from_numpy(parts).long()


@pytest.mark.slow
def test_finer_cam_focuses_on_diagnostic_parts_and_is_more_faithful(trained):
    from traitlens.explain.evaluate import evaluate_explanations

    model, table, x, y, parts = trained
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc > 0.7  # measured 0.81 (72 test images)
    res = evaluate_explanations(model, [{"image": x, "label": y, "mask": parts}], "gradcam,finer-gradcam",
                                metrics=["drop", "contrastive_drop", "diagnostic_energy"], traits=table, alpha=1.0)
    g, f = res.per_image["gradcam"], res.per_image["finer-gradcam"]
    diag_g, diag_f = np.array(g["diagnostic_energy"]), np.array(f["diagnostic_energy"])
    ok = ~(np.isnan(diag_g) | np.isnan(diag_f))
    diag_ratio = diag_f[ok].mean() / diag_g[ok].mean()
    drop_diff = np.mean(np.array(f["drop"]) - np.array(g["drop"]))
    contrast_diff = np.mean(np.array(f["contrastive_drop"]) - np.array(g["contrastive_drop"]))
    print(f"acc {acc:.3f} diagnostic energy grad {diag_g[ok].mean():.4f} finer {diag_f[ok].mean():.4f} "
          f"ratio {diag_ratio:.3f}; drop diff {drop_diff:.4f}; contrastive diff {contrast_diff:.4f}")
    # Both maps concentrate on the diagnostic parts far above their share of the pixels ...
    from traitlens.explain.metrics import diagnostic_masks, diagnostic_table
    from traitlens.explain.targets import select_references

    with torch.no_grad():
        other = select_references(model(x), y, "logit-distance", k=1)[:, 0]
    share = float(diagnostic_masks(parts, y, other, diagnostic_table(table)).float().mean())
    assert diag_g[ok].mean() > 1.5 * share and diag_f[ok].mean() > 1.5 * share  # measured ≈ 2× and 2.3×
    # ... but Finer-CAM does NOT put clearly more energy there than Grad-CAM: over four training runs of this
    # recipe the Finer/Grad-CAM ratio was 1.26, 0.95, 1.22 and 1.13 (0.92-1.03 over α ∈ {0.5, 1, 2} and
    # Layer-CAM on the 0.95 run). The "clearly more" does not reproduce robustly; this pins the finding.
    assert diag_ratio > 0.8
    # Faithfulness: masking Finer-CAM's top 5% hurts more, most clearly in the contrastive drop (measured
    # +0.15, +0.12, +0.07 over three runs; the relative drop +0.05, +0.01, +0.25).
    assert drop_diff > -0.02
    assert contrast_diff > 0.03
