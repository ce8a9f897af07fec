"""The claims for Prompt-CAM and INTR (:func:`traitlens.studies.claims.interpretable`).

Tiny scale (``make test``): 6 species at 32 px; the tiny-vit preset trained 25 epochs on them is the backbone
(frozen under Prompt-CAM, fine-tuned by INTR); seconds a model. Broad scale (``make claims``): the collection
is ``recipes.CLAIMS_COLLECTION``: the demo's 12 species (same generator, seed and taxonomy,
so the embedded backbones never saw them) with 300 images a species (180 train / 60 val / 60 test)
instead of the demo's 60. At 36 training images a species every model here is data-limited (the demo's
fine-tuned tiny ViT: 0.81 validation top-1; INTR: 0.83 test top-1).

Three models are trained per seed (memoized under the session's TRAITLENS_CACHE, so a development run with
TRAITLENS_TEST_CACHE=~/.cache/traitlens trains once): Prompt-CAM-Deep frozen on
the broad embedded tiny ViT (``embedded_backbone("vit", breadth="broad")``: 200 pretraining species),
Prompt-CAM-Deep frozen on the standard one (18 species, the demo's), and INTR (d=64, 1+2 layers, 4
heads) on the standard one, fine-tuned.

Recipes: ``recipes.interpretable("broad")`` (Prompt-CAM on the broad backbone: AdamW 5e-2, batches of 16, 20
epochs; on the standard one 2e-2 for 10 epochs). Measured by ``make claims`` (one thread a model; the seed is
each model's training seed, the backbones are pretrained once at seed 0): the broad backbone pretrains in
24.6 min on two quiet threads (36 min here beside other work; 12,000 training images, 30 epochs; 0.976 test
top-1 on its own 200 species, 0.978 in the previous release); Prompt-CAM on it trains ~200 s, on the standard
one ~100 s, INTR ~180 s.

=====================  =====================  ==================  ===========================  ==============
model (backbone)       top-1 (720 images)     best-head trait     p drop, top 10% / random     top hurts more
                       seeds 0 / 1 / 2        share / uniform     (correct images, mean)       than random
=====================  =====================  ==================  ===========================  ==============
Prompt-CAM (broad)     0.900 / 0.871 / 0.871  3.54 / 4.96 / 8.06  0.59 / 0.70 / 0.69 vs ~0.06  0.89-0.92
Prompt-CAM (standard)  0.651 / 0.603 / 0.622  5.43 / 5.47 / 4.06  0.70 / 0.56 / 0.72 vs ~0.07  0.79-0.92
INTR (standard)        0.975 / 0.960 / 0.968  7.48 / 6.15 / 5.14  0.52 / 0.36 / 0.58 vs ~0.04  0.81-0.91
=====================  =====================  ==================  ===========================  ==============

Fragile, so reported and not asserted at 0.90: Prompt-CAM frozen on the broad backbone reaches 90% at seed 0
only (0.900; the previous release's broad backbone gave 0.914 at seed 0, and another machine 0.857): over three
seeds it is 0.88 ± 0.02. What holds with margin: it stays above 0.85 and ≥ 0.25 above the same readout on
the standard backbone. INTR's 90% holds with room (≥ 0.96).

On the broad backbone the claims recipe for the standard one (2e-2, 10 epochs) reaches 0.847: the
prompts need the higher rate and the longer schedule there. The trait share is the thinnest margin (3.54
at seed 0 against the claim's 3): the broad backbone's heads spread attention wider than the 18-species one's.

Earlier measurements (previous release, one seed each): at seed 1 INTR reached 0.964, trait ratio 4.51, mean drop 0.33 vs 0.05,
and Prompt-CAM 0.607, 5.50, 0.57 vs 0.06. INTR on 200 images a species: 0.900-0.925 test top-1 (12 and
16 epochs, two pretrainings of the embedded ViT that differ in the last digit), trait ratio 4.1-6.4,
mean drop 0.41-0.53 vs 0.04-0.05. INTR's trait ratio on the demo collection (144 test images, 0.83
top-1) once measured 2.70; on 480-720 test images it never fell below 4 in six runs.

How the broad backbone was found. Prompt-CAM does not reach 90% on the frozen standard tiny ViT; nothing
found in the implementation causes it: it is held back by the frozen features. A linear probe on them (max-pooled, as pretrained) reaches
0.77 test top-1 with 36 training images a species and 0.81 with 120; Prompt-CAM reads the image only
through the last block's attention and a shared scorer and lands below that: at most 0.67 on the demo
collection (up to 60 epochs; training accuracy only 0.80 after 60), 0.67-0.70 with 120 a species (15-20
epochs), 0.66 here (0.685 with the demo's recipe, in twice the time). Tried: AdamW 1e-2 to 2e-1, SGD
0.05-0.5 (diverges at 0.5), batches of 8-32, weight decay up to 1.0 on the prompts (norms stay ~1: no
gain), and earlier Shallow and 128 px input; smaller batches (more steps) help most. The trained prompts'
attention is not the bottleneck (best head's peak 0.39, logit range ~16). The one bug found, the scorer
reading un-normalised prompt outputs on a max-pooled ViT (timm keeps the final LayerNorm in ``fc_norm``
there), changed little once fixed (0.663 here, 0.657 without it; on the demo collection 0.56 against 0.65
before, within noise of 144 images). A CLS-token tiny ViT pretrained with the embedded recipe reaches
only 0.50 on its own collection (the max-pooled one 0.89), so that is no better backbone to freeze at
this scale.

A larger pretraining collection (same tiny-vit preset and recipe, species disjoint from the demo's,
100 images a species, one CPU thread, seed 0) helps but does not reach 90%. Linear probe: logistic
regression on the standardised max-pooled features of the 180 training images a species, C picked on
validation; Prompt-CAM: this collection's test split, seed 0 unless noted.

=====================  ========  =====  =====  ===================================================
pretraining            pretrain  own    probe  Prompt-CAM top-1 (recipe)
                       seconds   top-1  top-1
=====================  ========  =====  =====  ===================================================
18 species, 15 epochs  ~90       0.889  0.840  0.663 (standard recipe)
48 species, 15 epochs  262+30    0.917  0.863  0.757 (standard recipe); 0.835, seed 1 0.819 (lr 5e-2,
                                                20 epochs, batch 16, ~200 s); 0.760 (same, batch 8)
72 species, 10 epochs  268+39    0.883  0.888  0.743 (standard recipe); 0.726 (lr 5e-2, 20 epochs)
=====================  ========  =====  =====  ===================================================

(pretrain seconds: training + rendering the collection.) The probe does not predict Prompt-CAM (the
72-species backbone probes best and prompts worst), and the best pair stays ~0.07 short of 90% with
training accuracy 0.84 after 20 epochs. Trait ratio (3.4-7.0) and region removal (mean drop
0.63-0.73 vs 0.05-0.08, top beats random on 85-92%) held on every one of these backbones.

Where the limit lies (a plain training loop over the same collection, batch 16, AdamW, cosine, 10 epochs,
flip and 70-100% crops; it reproduces the engine's 0.66 with the default frozen ViT): unfreezing the same
tiny ViT (backbone at 2e-4) takes the very same Prompt-CAM readout to 0.901 test top-1 (train 0.92),
while frozen it fits only 0.65 of its own training images. So the readout can reach 90%; the frozen
features cannot feed it. Frozen backbones tried besides the table above, each pretrained from scratch on
disjoint species (own top-1 on the pretraining collection's test split, then frozen Prompt-CAM test top-1):

==========================================================  =====  =============================
pretraining                                                 own    Prompt-CAM (train)
==========================================================  =====  =============================
tiny ViT, 18 species, + per-patch part and colour targets   0.917  0.664 (engine, standard recipe)
tiny ViT, 18 species, + a CLS-token head next to max-pool   0.856  0.61-0.62 (loop, 8 epochs)
ViT 192-d, 6 blocks, 6 heads, 18 species                    0.931  0.739 (0.71)
ViT 192-d, 6 blocks, 6 heads, 48 species, lr 5e-2, 20 ep.   0.938  0.837 (0.91)
==========================================================  =====  =============================

A 2.3× wider and 1.5× deeper backbone on 48 species lands where the tiny one does (0.835): at this scale
the pretraining data, not the model, bounds what a frozen backbone gives, and paper-level accuracy needs
a frozen backbone pretrained at scale (DINO, DINOv2), which this machine cannot download.

Confirmed on a GPU (`python benchmarks/prompt_cam_pretraining.py --device cuda`, H200): the same tiny-vit
preset pretrained on 200 disjoint species (12,000 training images, 30 epochs, 33 s there), then frozen,
takes Prompt-CAM to 0.907 test top-1 here (lr 5e-2, 20 epochs; 0.886 with 2e-2 for 10), the 192-d ViT to
0.922; 200 species with half the images and epochs gives 0.85-0.86. So Prompt-CAM reaches the 90% with a
frozen backbone once the pretraining is broad enough. On this machine's 2 cores (same script, `--device
cpu`): 100 species, 20 epochs, 6 min of pretraining: 0.881; 200 species, 20 epochs, 12 min: 0.893 (train
0.91). Through the engine, 30 epochs (the broad recipe) give the 0.914 above.
"""

import pytest

from traitlens.studies import claims
from traitlens.studies.recipes import interpretable



def _report(scale, seed, scores):
    for name, s in scores.items():
        print(f"{scale} seed {seed} {name}: top-1 {s['top1']:.3f} (n {s['n']}), trait share {s['trait_ratio']:.2f}, "
              f"drop {s['drop_top']:.3f} vs {s['drop_random']:.3f}, top beats random {s['top_beats_random']:.2f}")


# ------------------------------------------------------------------------------------------ tiny (make test)
# Measured, seeds 0 / 1 / 2 (48 test images, chance 1/6): INTR top-1 0.69 / 0.65 / 0.73, trait share 4.96 /
# 6.34 / 4.69, drop top 0.49 / 0.69 / 0.65 vs random 0.05 / 0.05 / 0.06, top beats random on 91-97%.
# Prompt-CAM, frozen on the small backbone: top-1 0.27 / 0.50 / 0.58, drop 0.27 / 0.10 / 0.22 vs 0.04 / 0.03 /
# 0.08 (62-86%); its best head's trait share (0.22 / 0.94 / 1.93) does not reach the claim at this scale: a
# frozen backbone this small carries little, so only the broad scale asserts Prompt-CAM's trait share.
@pytest.mark.parametrize("seed", interpretable("tiny").seeds)
def test_tiny_intr_heads_find_traits_and_prompt_cam_learns(seed):
    scores = claims.interpretable("tiny", seed)
    _report("tiny", seed, scores)
    intr, pcam = scores["intr"], scores["prompt-cam"]
    assert intr["n"] == pcam["n"] == 48
    assert intr["top1"] >= 0.5
    assert intr["trait_ratio"] >= 2.5
    assert intr["drop_top"] >= intr["drop_random"] + 0.2 and intr["top_beats_random"] >= 0.8
    assert pcam["top1"] >= 1 / 6 + 0.05
    assert pcam["drop_top"] >= pcam["drop_random"] + 0.03 and pcam["top_beats_random"] >= 0.55


# ------------------------------------------------------------------------------------------ broad (make claims)
# Prompt-CAM on the broad backbone is tests/claims/test_broad_prompt_cam.py: a module of its own, so that make
# claims (one module a worker) pretrains the broad backbone on one worker while the other trains these.
BROAD_SEEDS = interpretable("broad").seeds
MODELS = ["prompt-cam", "intr"]


@pytest.fixture(scope="module")
def broad():
    """Every seed's scores of Prompt-CAM and INTR on the standard embedded ViT."""
    out = {}
    for seed in BROAD_SEEDS:
        out[seed] = claims.interpretable("broad", seed, models=MODELS)
        _report("broad", seed, out[seed])
    return out


# Chance is 1/12; 720 test images (binomial standard error ~0.010 at 0.91-0.93, ~0.018 at 0.66).
@pytest.mark.claims
@pytest.mark.parametrize("seed", BROAD_SEEDS)
def test_intr_reaches_90_percent(broad, seed):
    assert broad[seed]["intr"]["n"] == 720
    assert broad[seed]["intr"]["top1"] >= 0.90  # measured 0.975 / 0.960 / 0.968


@pytest.mark.claims
@pytest.mark.parametrize("seed", BROAD_SEEDS)
def test_frozen_prompt_cam_on_the_standard_backbone_learns(broad, seed):
    assert broad[seed]["prompt-cam"]["n"] == 720
    assert broad[seed]["prompt-cam"]["top1"] >= 0.55  # measured 0.651 / 0.603 / 0.622


@pytest.mark.claims
@pytest.mark.parametrize("seed", BROAD_SEEDS)
@pytest.mark.parametrize("name", MODELS)
def test_best_head_looks_at_the_traits(broad, name, seed):
    # The claim: ≥ 3× the uniform share. Measured (seeds 0 / 1 / 2): Prompt-CAM 5.43 / 5.47 / 4.06, INTR 7.48 /
    # 6.15 / 5.14 (Prompt-CAM on the broad backbone: test_broad_prompt_cam.py).
    assert broad[seed][name]["trait_ratio"] >= 3.0


@pytest.mark.claims
@pytest.mark.parametrize("seed", BROAD_SEEDS)
@pytest.mark.parametrize("name", MODELS)
def test_removing_the_attended_region_hurts_more_than_a_random_one(broad, name, seed, region_removal_holds):
    region_removal_holds(broad[seed][name])

