"""The SAM 2 backend with random weights at a small size: shapes, frame counts, no network, gradients."""

from __future__ import annotations

import socket

import pytest
import torch

pytest.importorskip("transformers")

from traitlens.errors import UserError  # noqa: E402
from traitlens.segment.finetune import add_lora, cycle_finetune, cycle_loss  # noqa: E402
from traitlens.segment.sam2 import Sam2Propagator, freeze_image_encoder, load_sam2, tiny_config  # noqa: E402
from traitlens.segment.tracking import cycle_predict, track  # noqa: E402


@pytest.fixture()
def offline(monkeypatch):
    """Any attempt to open a socket fails the test; the hub is told to stay offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the SAM 2 backend tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def model():
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    return Sam2VideoModel(tiny_config(64)).eval()


def test_orders_give_one_map_per_query_at_its_size(model, scene, offline):
    img, lab = scene()
    queries = [(f"q{i}", torch.rand(3, 30 + i, 45)) for i in range(4)]
    prop = Sam2Propagator(model)
    for order in ("pairwise", "chain", "similarity"):
        out = list(track(prop, [(img, lab)], queries, order=order, num_labels=4, reinsert_every=2))
        assert sorted(q for q, _ in out) == ["q0", "q1", "q2", "q3"]
        for qid, soft in out:
            i = int(qid[1:])
            assert soft.shape == (4, 30 + i, 45)
            assert torch.allclose(soft.sum(0), torch.ones(30 + i, 45), atol=1e-4)
        frames = len(prop.session.processed_frames)
        # pairwise forgets every query (memory = the support); chain keeps them, plus the re-inserted support
        assert frames == (1 if order == "pairwise" else 1 + 4 + 2), (order, frames)
        assert prop.session.obj_ids == [1, 2, 3]


def test_local_checkpoint_roundtrip_and_hub_only_on_request(model, tmp_path, offline, scene):
    model.save_pretrained(tmp_path / "sam2")
    loaded = load_sam2(tmp_path / "sam2")
    img, lab = scene()
    a, b = Sam2Propagator(model), Sam2Propagator(loaded)
    for p in (a, b):
        p.reset(4)
        p.add_support(img, lab)
    assert torch.allclose(a.predict(img), b.predict(img), atol=1e-5)
    with pytest.raises(UserError, match="only when downloading is allowed"):
        load_sam2("facebook/sam2.1-hiera-tiny")


def test_cycle_gradients_reach_only_the_trainable_parts(scene, offline):
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    model = Sam2VideoModel(tiny_config(64)).eval()
    freeze_image_encoder(model)
    img, lab = scene()
    query, _ = scene(shift=(3, 2), seed=3)
    prop = Sam2Propagator(model, differentiable=True)
    forward, back = cycle_predict(prop, (img, lab), query, num_labels=4)
    loss = cycle_loss(back, lab)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"mask_decoder", "memory_attention", "memory_encoder"} <= touched


def test_lora_finetuning_changes_only_adapters(scene, offline):
    from transformers import Sam2VideoModel

    torch.manual_seed(0)
    model = Sam2VideoModel(tiny_config(64)).eval()
    params = add_lora(model, rank=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    img, lab = scene()
    query, _ = scene(shift=(2, 1), seed=4)
    prop = Sam2Propagator(model, differentiable=True)
    losses = cycle_finetune(prop, params, (img, lab), [query], steps=2, lr=1e-2, num_labels=4)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_queries_are_turned_onto_the_support_pose(model, scene, offline):
    img, lab = scene(64, 64)
    query = torch.rot90(img, 1, (1, 2))
    prop = Sam2Propagator(model)  # pose="any" by default
    list(track(prop, [(img, lab)], [("q", query)], num_labels=4))
    soft = prop.predict(query)
    assert soft.shape == (4, 64, 64) and torch.allclose(soft.sum(0), torch.ones(64, 64), atol=1e-4)
    entered = prop._pending[2].float()            # the frame SAM 2 saw: the query turned back onto the support
    support_px = prop._pixels(img).float()
    turned_error = (entered - support_px).abs().mean()
    assert turned_error < 0.25 * (prop._pixels(query).float() - support_px).abs().mean()
    upright = Sam2Propagator(model, pose="upright")
    list(track(upright, [(img, lab)], [("q", query)], num_labels=4))
    upright.predict(query)
    assert torch.allclose(upright._pending[2].float(), upright._pixels(query).float())
    with pytest.raises(UserError, match="pose"):
        Sam2Propagator(model, pose="sideways")
