"""The atlas' compute on a model whose answer is known: class 0 and class 1 differ only in the colour of part 1.

Images are 3×16×16 in normalised space (background 0): part 1 (a 4×4 square) is red for class 0 and blue for
class 1, part 2 (another square) is green for both, part 3 (a strip) holds faint noise. The model averages
[r, b, g] over the image: z0 = 40 (r − b) + 40 g, z1 = 40 (b − r) + 40 g, z2 = 0. So part 1 is the only part
that tells 0 from 1; Grad-CAM of z0 also lights part 2 (shared green), Finer-CAM (z0 − z1) does not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from traitlens.atlas import (Atlas, EvidenceOptions, LabelledSupport, PartPropagator, assemble, build_atlas,
                             check_support_ids, image_evidence, load_atlas, part_names_from, precision_table,
                             records, select_pairs)
from traitlens.atlas.evidence import random_regions, removed_images
from traitlens.atlas.parts import read_part_names
from traitlens.errors import UserError

NAMES = ["00_Avis_rubra", "01_Avis_caerulea", "02_Avis_viridis"]
PARTS = {1: "spot", 2: "patch", 3: "strip"}
OPTIONS = EvidenceOptions(scale=1.0, target_layer="features")


class ColourModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)  # channels: r, b, g
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1
            self.features.weight[1, 2] = 1
            self.features.weight[2, 1] = 1
        self.head = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[40.0, -40, 40], [-40, 40, 40], [0, 0, 0]]))

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def specimens(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    x = torch.zeros(n, 3, 16, 16)
    parts = torch.zeros(n, 16, 16, dtype=torch.long)
    for i, y in enumerate(labels):
        dy, dx = torch.randint(0, 2, (2,), generator=g).tolist()
        parts[i, 2 + dy:6 + dy, 2 + dx:6 + dx] = 1
        parts[i, 10:14, 10:14] = 2
        parts[i, 12:15, 1:8] = 3
        x[i, 0 if y == 0 else 2][parts[i] == 1] = 1.0
        x[i, 1][parts[i] == 2] = 1.0
        x[i, 1][parts[i] == 3] = 0.02 * torch.rand(int((parts[i] == 3).sum()), generator=g)
    return x, parts


class Specimens(torch.utils.data.Dataset):
    class_names = NAMES

    def __init__(self, labels):
        self.targets = list(labels)
        self.x, self.parts = specimens(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.targets[i], "index": i, "path": f"img{i}.png",
                "mask": self.parts[i]}


def test_evidence_finds_the_part_that_differs():
    model = ColourModel()
    labels = torch.tensor([0, 0, 1, 1])
    x, parts = specimens(labels.tolist())
    partners = torch.tensor([[1], [1], [0], [0]])
    ev = image_evidence(model, x, labels, parts, partners, 3, OPTIONS)
    assert (ev["prob"].argmax(1) == labels).all()
    assert ev["finer"].shape == (1, 4, 3) and ev["drop"].shape == (1, 4, 3)
    # all of Finer-CAM's energy on the spot (16 px of 256); Grad-CAM shares it with the green patch
    assert (ev["finer"][0, :, 0] > 0.95).all()
    assert (ev["gradcam"][:, 0] < 0.7).all() and (ev["gradcam"][:, 1] > 0.3).all()
    assert torch.allclose(ev["area"][:, 0], torch.full((4,), 16 / 256))
    # removing the spot takes p(A) - p(B) (over the pair) from ~1 to 0; the patch and the control do nothing
    assert (ev["drop"][0, :, 0] > 0.95).all()
    assert ev["drop"][0, :, 1].abs().max() < 1e-4 and ev["random"][0, :, 0].abs().max() < 0.05


def test_evidence_skips_misclassified_images_and_empty_slots():
    model = ColourModel()
    x, parts = specimens([0, 0])
    x[1] = x[1][[2, 1, 0]]  # a class-1 looking image labelled 0
    ev = image_evidence(model, x, torch.tensor([0, 0]), parts, torch.tensor([[1, -1], [1, -1]]), 3, OPTIONS)
    assert not torch.isnan(ev["finer"][0, 0]).any() and torch.isnan(ev["finer"][:, 1]).all()
    assert torch.isnan(ev["finer"][1]).all() and torch.isnan(ev["drop"][1]).all()


def test_random_regions_match_the_part_elsewhere_on_the_specimen():
    _, parts = specimens([0, 1, 0])
    from traitlens.atlas.evidence import part_onehot

    onehot = part_onehot(parts, 3)
    region = random_regions(onehot, (parts > 0).float(), torch.Generator().manual_seed(1))
    assert torch.equal(region.sum((2, 3)), onehot.sum((2, 3)))  # the same area
    assert (region * onehot).sum() == 0  # never the part itself
    spot = region[:, 0]  # 16 px fit on the rest of the specimen (16 + 21 px)
    assert (spot * (parts == 0)).sum() == 0


def test_inpainting_fills_with_the_colour_around():
    x = torch.zeros(1, 3, 9, 9)
    x[0, 1] = 0.5  # a green specimen
    x[0, 0, 3:6, 3:6] = 1.0  # a red spot on it
    mask = torch.zeros(1, 9, 9)
    mask[0, 3:6, 3:6] = 1
    out = removed_images(x, mask, torch.ones(1, 9, 9), EvidenceOptions(ring=1))
    assert torch.allclose(out[0, :, 4, 4], torch.tensor([0.0, 0.5, 0.0]))
    assert torch.equal(out[0, :, 0, 0], x[0, :, 0, 0])


def test_build_atlas_ranks_the_spot_first_and_round_trips(tmp_path):
    data = Specimens([0] * 6 + [1] * 6 + [2] * 3)
    atlas = build_atlas(ColourModel(), data, pairs="00_Avis_rubra:01_Avis_caerulea, Avis rubra:Nope",
                        part_names=PARTS, options=OPTIONS, bootstrap=200, progress=False)
    assert [s["pair"] for s in atlas.skipped] == ["Avis rubra:Nope"]
    (pair,) = atlas.pairs
    assert pair.images == {"a": 6, "b": 6} and pair.localised
    assert pair.ranking("combined")[0] == 1 and pair.ranking("finer")[0] == 1
    assert pair.ranking("intervention")[0] == 1
    top = pair.top.figures
    assert top["finer"].lo <= top["finer"].mean <= top["finer"].hi and top["excess"].lo > 0.9
    assert "most at the **spot**" in pair.sentence and pair.examples["a"].startswith("img")
    paths = atlas.write(tmp_path)
    again = load_atlas(tmp_path)
    assert again.to_dict() == json.loads(paths["json"].read_text()) == atlas.to_dict()
    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 1 + len(pair.parts) and rows[1].split(",")[3] == "spot"


def test_precision_table_against_a_pair_table(tiny_traits):
    from traitlens.atlas.result import PairEvidence, PartEvidence, Stat

    def pair(a, b, order):
        s = Stat(0.0, 0.0, 0.0)
        parts = [PartEvidence(pid, tiny_traits.part_name(pid), 5, {"area": s}, score=10.0 - r, rank=r + 1)
                 for r, pid in enumerate(order)]
        return PairEvidence(tiny_traits.class_names[a], tiny_traits.class_names[b], "", "", {}, parts, True, "")

    d01 = tiny_traits.diagnostic_parts(0, 1)
    other = [p for p in range(1, 11) if p not in d01]
    atlas = Atlas([pair(0, 1, [d01[0]] + other[:2]), pair(0, 1, other[:2] + [d01[0]]), pair(0, 1, other[:3])],
                  sources=["combined"])
    table = precision_table(atlas, tiny_traits)["combined"]
    assert table["pairs"] == 3 and table["precision_at_1"] == pytest.approx(1 / 3)
    assert table["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_no_localised_trait_when_nothing_beats_the_control():
    rec = lambda label, partner: {  # noqa: E731
        "label": label, "correct": True, "area": [0.1, 0.2], "gradcam": [0.1, 0.2], "path": f"{label}.png",
        "partners": {str(partner): {"finer": [0.12, 0.18], "drop": [0.01, 0.0], "random": [0.01, 0.01],
                                    "margin": 0.9}}}
    atlas = assemble([rec(0, 1), rec(0, 1), rec(1, 0)], [(0, 1), (0, 2)], NAMES, {1: "spot", 2: "patch"},
                     bootstrap=50, progress=False)
    (pair,) = atlas.pairs
    assert not pair.localised and "no localised trait found" in pair.sentence
    assert atlas.skipped == [{"pair": "00_Avis_rubra:02_Avis_viridis",
                              "reason": "no correctly classified image of either species"}]


def test_pairs_by_mode(tiny_traits):
    names = tiny_traits.class_names
    sib, _ = select_pairs("siblings", names, tiny_traits)
    assert sib and all(tiny_traits.genus_of(a) == tiny_traits.genus_of(b) for a, b in sib)
    assert len(select_pairs("all", names)[0]) == 15
    confusion = np.zeros((6, 6))
    confusion[2, 4], confusion[4, 2], confusion[0, 1] = 3, 2, 1
    assert select_pairs("confused", names, confusion=confusion, top=2)[0] == [(2, 4), (0, 1)]
    display = tiny_traits.name(3)
    pairs, skipped = select_pairs(f"{display}:{names[4]},{names[0]}:{names[0]},x", names, tiny_traits)
    assert pairs == [(3, 4)] and [s["pair"] for s in skipped] == [f"{names[0]}:{names[0]}", "x"]
    with pytest.raises(UserError, match="no species pair"):
        select_pairs("Nope:Never", names, tiny_traits)
    with pytest.raises(UserError, match="confusion"):
        select_pairs("confused", names)


def test_part_names_and_support_ids(tmp_path, tiny_traits):
    assert part_names_from(tiny_traits)[6] == "wing_spot"
    (tmp_path / "p.txt").write_text("# parts\n1 elytron\n2 pronotum spot\n")
    (tmp_path / "p.json").write_text('{"1": "elytron", "2": "pronotum"}')
    assert read_part_names(tmp_path / "p.txt") == {1: "elytron", 2: "pronotum spot"}
    assert read_part_names(tmp_path / "p.json") == {1: "elytron", 2: "pronotum"}
    (tmp_path / "bad.txt").write_text("one\n")
    with pytest.raises(UserError, match="not a part-names file"):
        read_part_names(tmp_path / "bad.txt")
    with pytest.raises(UserError, match=r"part ids \[3\] are not in the part names"):
        check_support_ids(torch.tensor([[0, 1], [3, 2]]), {1: "a", 2: "b"}, "m.png")


def test_parts_propagate_from_the_species_support():
    x, parts = specimens([0, 1])
    frames = (x + 0.2).clamp(0, 1)
    prop = PartPropagator([LabelledSupport(frames[0], parts[0], species=0),
                           LabelledSupport(frames[1], parts[1], species=1)], genus={0: "Avis", 1: "Avis", 2: "Avis"})
    assert prop.supports_for(2) == prop.supports  # no own support: its genus'
    out = prop(frames, torch.tensor([0, 1]))
    assert (out == parts).float().mean() > 0.97  # the support itself comes back


@pytest.mark.parametrize("method", ["prompt-cam", "intr"])
def test_heads_evidence_of_a_self_explaining_model(method):
    from traitlens.engine.config import load_config
    from traitlens.methods import build_model

    torch.manual_seed(0)
    model, _ = build_model(load_config(None, method=method, backbone="tiny-vit", image_size=32, device="cpu"), 3)
    x, parts = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4, 32, 32))
    with torch.no_grad():
        labels = model.eval()(x).argmax(1)  # an untrained model: its own predictions are "correct"
    partners = ((labels + 1) % 3)[:, None]
    ev = image_evidence(model, x, labels, parts, partners, 3, EvidenceOptions())
    total = ev["heads"].sum(1)  # parts 1-3 cover about 3/4 of the image, the background the rest
    assert torch.isfinite(ev["heads"]).all() and (total > 0.5).all() and (total <= 1 + 1e-5).all()
    # Prompt-CAM has no hookable layer: its CAM figures are left out; INTR's are taken
    assert torch.isnan(ev["finer"]).all() == (method == "prompt-cam")
    recs = records(ev, labels, partners, [f"{i}.png" for i in range(4)])
    pairs = sorted({tuple(sorted((int(a), int(b)))) for a, b in zip(labels, partners[:, 0])})
    atlas = assemble(recs, pairs, NAMES, PARTS, bootstrap=20, progress=False)
    assert "heads" in atlas.sources and atlas.pairs and all(p.ranking("heads") for p in atlas.pairs)
    if method == "prompt-cam":
        assert "of the head attention" in atlas.pairs[0].sentence


def test_evidence_does_not_depend_on_the_batch():
    model = ColourModel()
    labels = torch.tensor([0, 1, 0])
    x, parts = specimens(labels.tolist(), seed=3)
    partners = torch.tensor([[1], [0], [1]])
    whole = image_evidence(model, x, labels, parts, partners, 3, OPTIONS, seeds=[7, 8, 9])
    for i in range(3):
        one = image_evidence(model, x[i:i + 1], labels[i:i + 1], parts[i:i + 1], partners[i:i + 1], 3, OPTIONS,
                             seeds=[7 + i])
        for name in ("finer", "gradcam", "drop", "random"):
            a, b = whole[name][..., i, :] if whole[name].dim() == 3 else whole[name][i], \
                one[name][..., 0, :] if one[name].dim() == 3 else one[name][0]
            assert torch.allclose(a, b, atol=1e-5, equal_nan=True), name


def test_a_cnn_is_explained_at_its_finest_stage_with_enough_cells():
    from traitlens.atlas.evidence import fine_cnn_stage, resolved_settings
    from traitlens.backbones import create

    cnn = create("tiny-cnn", num_classes=3)  # stages: layer1 at stride 4, layer2-4 at stride 8
    assert fine_cnn_stage(cnn, (64, 64)) == "layer1"  # 16 cells; layer4 has 8
    assert fine_cnn_stage(cnn, (128, 128)) == "layer4"  # 16 cells at the last stage already
    assert fine_cnn_stage(cnn, (32, 32)) is None  # no stage that fine: the layout's default
    assert resolved_settings(cnn, (32, 32), EvidenceOptions())["target_layer"] is None
    assert resolved_settings(cnn, (64, 64), EvidenceOptions(target_layer="layer3"))["target_layer"] == "layer3"
    assert fine_cnn_stage(create("tiny-vit", num_classes=3), (64, 64)) is None
    assert fine_cnn_stage(ColourModel(), (16, 16)) is None  # no layout at all


def test_control_regions_do_not_depend_on_where_the_collection_lives():
    from traitlens.atlas.build import image_name

    assert image_name("/a/c/test/03_X/0007.png") == image_name("elsewhere/03_X/0007.png") == "03_X/0007.png"

    class Placed(Specimens):
        def __init__(self, labels, root):
            super().__init__(labels)
            self.root = root

        def __getitem__(self, i):
            return dict(super().__getitem__(i), path=f"{self.root}/{NAMES[self.targets[i]]}/img{i}.png")

    labels = [0] * 4 + [1] * 4
    controls = []
    for root in ("/data/one/test", "/mnt/copy/test"):
        atlas = build_atlas(ColourModel(), Placed(labels, root), pairs="all", part_names=PARTS, options=OPTIONS,
                            bootstrap=20, progress=False)
        controls.append([p.figures["random"].mean for p in atlas.pairs[0].parts])
    assert controls[0] == controls[1]


def test_the_control_is_the_mean_of_its_draws():
    from dataclasses import replace

    from traitlens.atlas.evidence import control_seed

    model = ColourModel()
    labels = torch.tensor([0, 1, 0, 1])
    x, parts = specimens(labels.tolist(), seed=5)
    partners = torch.tensor([[1], [0], [1], [0]])
    seeds = [11, 12, 13, 14]
    four = image_evidence(model, x, labels, parts, partners, 3, replace(OPTIONS, controls=4), seeds=seeds)
    draws = [image_evidence(model, x, labels, parts, partners, 3, replace(OPTIONS, controls=1),
                            seeds=[control_seed(s, k) for s in seeds]) for k in range(4)]
    assert torch.equal(draws[0]["random"].isnan(), four["random"].isnan())
    assert torch.allclose(torch.stack([d["random"] for d in draws]).mean(0), four["random"], atol=1e-6, equal_nan=True)
    assert torch.allclose(draws[0]["drop"], four["drop"], equal_nan=True)  # the part's own removal is one
