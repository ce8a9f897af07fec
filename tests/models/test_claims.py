"""The issue's claims for Prompt-CAM and INTR on the synthetic demo collection, with the demo's CPU recipes.

One model of each is trained per test session (module fixture; cached under the session's TRAITLENS_CACHE,
so a development run with TRAITLENS_TEST_CACHE=~/.cache/traitlens trains once): Prompt-CAM-Deep on the
frozen embedded tiny ViT, INTR (d=64, 1+2 layers, 4 heads) on the same ViT, fine-tuned.

Measured (2 shared CPU cores, seed 0; `python -m pytest -q tests/models/test_claims.py -m slow`):

=============  ======  ==================  ============================  ======================
model          top-1   best-head trait     p drop top 10% / random 10%   top hurts more than
                       share / uniform     (correct images, mean)        random (share)
=============  ======  ==================  ============================  ======================
Prompt-CAM     0.646   6.19                0.660 / 0.063                 0.88
INTR           0.833   4.14                0.625 / 0.059                 0.89
=============  ======  ==================  ============================  ======================

The ≥ 90% accuracy claim does not reproduce at this scale, for any head on these backbones: the demo's
fully fine-tuned tiny ViT reaches 0.81 validation top-1 (12 epochs), a linear probe on the frozen
embedded ViT (max-pooled) 0.81 validation top-1 (15 epochs). INTR levels off at 0.83-0.84 (12, 15 and 18
epochs measured). Prompt-CAM underfits on the frozen tiny ViT: its training accuracy levels off near
0.6-0.65 (SGD lr 0.05: 0.50 after 8 epochs; lr 0.5 diverges; AdamW 1e-2 / 15 epochs: 0.47; 5e-2 / 20:
0.65; Shallow: 0.47; 128 px input, 16×16 patches: no faster). The class prompt reads the image only
through the last block's attention (a LayerNorm-bounded, so soft, average of frozen values) and one
shared scorer; the tiny backbone (4 heads, 128 dims) leaves too little to steer. The trait and
faithfulness claims reproduce clearly for both models.
"""

import pytest

from traitlens.backbones.embedded import embedded_backbone
from traitlens.cache import cache_dir, recipe_key
from traitlens.data.synthetic import SynthConfig, generate_collection
from traitlens.data.traits import load_traits
from traitlens.demo import DEMO_COLLECTION, DemoContext
from traitlens.models import demo_section as demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scores():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = generate_collection(cache_dir("datasets") / f"synth-{recipe_key(DEMO_COLLECTION)}",
                                   SynthConfig(**DEMO_COLLECTION), progress=False)
        ctx = DemoContext(out=cache_dir("models-claims"), cache=cache_dir("models-claims"), data=data,
                          traits=load_traits(data), checkpoints={"backbone-vit": embedded_backbone("vit", progress=False)})
        yield {name: demo.train_and_score(ctx, name) for name in demo.RUNS}
    finally:
        torch.set_num_threads(threads)


# Chance is 1/12. Measured 0.646 (Prompt-CAM) and 0.833 (INTR); margins for platform noise.
@pytest.mark.parametrize("name,floor", [("prompt-cam", 0.50), ("intr", 0.75)])
def test_accuracy(scores, name, floor):
    assert scores[name]["n"] == 144
    assert scores[name]["top1"] >= floor


@pytest.mark.xfail(reason="the paper-scale ≥ 90% does not reproduce on the tiny CPU backbones (see module doc)",
                   strict=True)  # reaching 90% turns this into a failure: then drop the marker
@pytest.mark.parametrize("name", ["prompt-cam", "intr"])
def test_accuracy_90_percent(scores, name):
    assert scores[name]["top1"] >= 0.90


@pytest.mark.parametrize("name", ["prompt-cam", "intr"])
def test_best_head_looks_at_the_traits(scores, name):
    # The claim: ≥ 3× the uniform share. Measured 6.19 and 4.14.
    assert scores[name]["trait_ratio"] >= 3.0


@pytest.mark.parametrize("name", ["prompt-cam", "intr"])
def test_removing_the_attended_region_hurts_more_than_a_random_one(scores, name):
    s = scores[name]
    # Measured: means 0.66 / 0.63 vs 0.06; medians 0.97 / 0.86 vs 0.03 / 0.0; 88% / 89% of the images.
    assert s["drop_top"] >= s["drop_random"] + 0.3
    assert s["drop_top_median"] >= s["drop_random_median"] + 0.4
    assert s["top_beats_random"] >= 0.7
    assert s["n_correct"] >= 0.5 * s["n"]
