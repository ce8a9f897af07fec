"""The app's computations without a browser: maps against ``explain``, the α slider without a model run,
downloads, heads, errors as one-line messages, and the page's offline settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlens.errors import UserError
from traitlens.explain import explain


def _input(session, specimen_id):
    x, _ = session.explorer.load(session.collection.get(specimen_id).path)
    return x


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_alpha_maps_equal_explain(session, method):
    """The kept-gradient map at any α is the engine's map for that α (auto references)."""
    ex = session.explorer
    sid = session.collection_ids()[0]
    x = _input(session, sid)
    cache = ex.gradients(x, method=method)
    alphas = [0.0, 0.3, 1.0, 1.7]
    ref = explain(ex.model, x, method=method, alpha=alphas)
    assert torch.equal(cache.references, ref.references)
    for i, a in enumerate(alphas):
        assert torch.allclose(cache.raw(a), ref.raw_maps[i, 0], atol=1e-6)
        assert torch.allclose(cache.map(a, x.shape[-2:]), ref.maps[i, 0], atol=1e-6)
    # α changes the map (the test would pass trivially on a model whose references cancel out).
    assert (cache.map(0.0, x.shape[-2:]) - cache.map(1.7, x.shape[-2:])).abs().max() > 0.05


def test_comparison_modes_equal_explain(session, tiny_traits):
    ex = session.explorer
    names = ex.class_names
    x = _input(session, session.collection_ids()[1])
    chosen = ex.gradients(x, comparison=None, classes=[names[3], names[5]], target=names[1])
    ref = explain(ex.model, x, alpha=0.8, target=1, references=[3, 5])
    assert chosen.references.tolist() == [[3, 5]] and int(chosen.target) == 1
    assert torch.allclose(chosen.map(0.8, x.shape[-2:]), ref.maps[0], atol=1e-6)
    siblings = ex.gradients(x, comparison="taxonomy")
    ref = explain(ex.model, x, alpha=1.0, references="taxonomy", traits=ex.traits, class_names=names)
    assert torch.equal(siblings.references, ref.references)
    genus = ex.traits.genus_of(int(siblings.target))
    assert all(ex.traits.genus_of(int(r)) == genus for r in siblings.references[0] if r >= 0)


def test_slider_needs_no_model_run(session):
    calls = []
    model = session.explorer.model
    # The image enters the network once: the explanation re-enters the ViT's blocks past the target layer, so
    # count the patch embedding's calls (every forward passes it).
    handle = getattr(model, "patch_embed", model).register_forward_hook(lambda *a: calls.append(1))
    try:
        out = session.explain({"id": session.collection_ids()[0]}, 1.0, "gradcam", None, "auto (most similar)", [])
        assert len(calls) == 1  # one forward for the base CAM, Finer-CAM and the top-5 together
        view = out[4]
        frames = [session.rerender(view, a)[0] for a in (0.0, 0.5, 1.0, 1.5)]
        assert len(calls) == 1
    finally:
        handle.remove()
    assert np.array_equal(frames[0], out[0])  # α = 0 is the base CAM
    assert np.array_equal(frames[2], out[1])
    assert not np.array_equal(frames[0], frames[3])
    assert frames[0].shape == (224, 224, 3) and frames[0].dtype == np.uint8


def test_top5_caption_and_downloads(session, tmp_path):
    sid = session.collection_ids()[2]
    base, finer, top5, caption, view, current = session.explain({"id": sid}, 0.5, "gradcam", None,
                                                                 "auto (most similar)", [])
    probs = list(top5.values())
    assert len(top5) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    full = torch.softmax(view.cache.logits, -1)[0]
    assert probs[0] == pytest.approx(float(full.max()), abs=1e-6)
    refs = session.explorer.names(view.cache.references)
    assert all(r in caption for r in refs) and "α = 0.50" in caption and sid in caption
    png, npy = session.save_map(view, 0.5)
    saved = np.load(npy, allow_pickle=False)
    assert saved.shape == (32, 32) and saved.dtype == np.float32 and 0 <= saved.min() and saved.max() <= 1
    x = _input(session, sid)
    assert np.allclose(saved, explain(session.explorer.model, x, alpha=0.5).maps[0].numpy(), atol=1e-6)
    from PIL import Image

    assert Image.open(png).size == (224, 224)


def test_errors_are_one_line_messages(session, tmp_path):
    names = session.explorer.class_names
    with pytest.raises(UserError, match="unknown target class 'no-such-bird'"):
        session.explain({"id": session.collection_ids()[0]}, 1.0, "gradcam", "no-such-bird", "auto (most similar)", [])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="broken.png"):
        session.explain({"path": str(bad)}, 1.0, "gradcam", None, "auto (most similar)", [])
    with pytest.raises(UserError, match="at least one comparison class"):
        session.explain({"id": session.collection_ids()[0]}, 1.0, "gradcam", None, "chosen classes", [])
    with pytest.raises(UserError, match="unknown CAM method"):
        session.explain({"id": session.collection_ids()[0]}, 1.0, "nope", None, "auto (most similar)", [])
    with pytest.raises(UserError, match="Heads view needs a prompt-cam or intr"):
        session.heads({"id": session.collection_ids()[0]}, "(predicted)")
    assert session.rerender(None, 0.5)[0] is None  # the slider before any image: no error
    session.explorer.traits = None
    with pytest.raises(UserError, match="--data"):
        session.explain({"id": session.collection_ids()[0]}, 1.0, "gradcam", names[0], "siblings (same genus)", [])


def test_heads_of_prompt_cam(prompt_cam_run, collection, tmp_path):
    from traitlens.app import create_session

    s = create_session(prompt_cam_run, collection / "test", project=tmp_path / "p", work=tmp_path / "w")
    assert s.explorer.has_heads
    sid = s.collection_ids()[0]
    base, finer, top5, caption, view, _ = s.explain({"id": sid}, 1.0, "gradcam", None, "auto (most similar)", [])
    assert base is None and finer is None and view is None and len(top5) == 5 and "Heads tab" in caption
    tiles, mean, text = s.heads({"id": sid}, "(predicted)", top_k=2)
    x = _input(s, sid)
    model = s.explorer.model
    with torch.no_grad():
        found = model.identify_traits(x, model(x).argmax(1), top_k=2)
    kept = found.kept(0)
    assert len(tiles) == model.num_heads and 1 <= len(kept) <= model.num_heads
    for h, (tile, caption) in enumerate(tiles):
        framed = bool((tile[:4, :, 0] == 220).all() and (tile[:4, :, 1] == 30).all())
        assert framed == (h in kept) and (("trait head" in caption) == (h in kept))
    assert mean.shape == (224, 224, 3)
    other = s.explorer.class_names[(int(found.classes[0]) + 1) % 6]
    _, _, text = s.heads({"id": sid}, other, top_k=2)
    assert f"through the prompt of **{other}**" in text
    _, _, text = s.heads({"id": sid}, "(true class)", top_k=2)
    assert f"prompt of **{s.collection.true_class(sid)}**" in text


def test_build_app_and_offline_settings(session):
    import os

    import gradio as gr

    from traitlens.app import build_app, host_warning, launch_options

    demo = build_app(None, None, session=session)
    assert isinstance(demo, gr.Blocks) and demo.analytics_enabled is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Explain", "Heads", "Segment", "Atlas"]
    opts = launch_options()
    assert opts["server_name"] == "127.0.0.1" and opts["share"] is False and opts["ssr_mode"] is False
    # System fonts only: the default theme would fetch Google Fonts.
    assert "googleapis" not in opts["theme"]._get_theme_css()
    assert host_warning("127.0.0.1") is None and "reachable from other machines" in host_warning("0.0.0.0")


def test_cli_help(capsys):
    from traitlens.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["app", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--share" in out and "127.0.0.1" in out


def test_demo_last_line_names_its_checkpoints(tmp_path, monkeypatch):
    import argparse

    from traitlens.cli.demo import _app_hint
    from traitlens.studies.demo import collection_path
    from traitlens.studies.recipes import DEMO_COLLECTION

    monkeypatch.setenv("TRAITLENS_CACHE", str(tmp_path))
    args = argparse.Namespace(seed=0, cache=tmp_path / "demo")
    assert _app_hint(args).endswith("traitlens app --checkpoint RUN --images DIR")  # nothing made yet: no paths
    for rel in ("runs/classifier-vit-abc/model.json", "models/prompt-cam-def/model.json"):
        (tmp_path / "demo" / rel).parent.mkdir(parents=True)
        (tmp_path / "demo" / rel).write_text("{}")
    images = collection_path(DEMO_COLLECTION) / "test"  # under $TRAITLENS_CACHE/datasets
    images.mkdir(parents=True)
    line = _app_hint(args)
    assert f"traitlens app --checkpoint {tmp_path / 'demo/runs/classifier-vit-abc'} --images {images}" in line
    assert "Heads tab: --checkpoint " + str(tmp_path / "demo/models/prompt-cam-def") in line


def test_slider_does_not_wait_for_model_work(session):
    """A model run (the lock every forward takes) in progress elsewhere does not hold up the α slider."""
    import threading

    view = session.view({"id": session.collection_ids()[0]})
    done = threading.Event()
    with session._model_lock:  # another visitor's model run, still going
        worker = threading.Thread(target=lambda: (session.rerender(view, 0.4), done.set()))
        worker.start()
        assert done.wait(timeout=20)
    worker.join()


def test_serve_binds_loopback_and_warns_for_all_interfaces(session, capsys, monkeypatch):
    import urllib.request

    import traitlens.app as app_module

    monkeypatch.setattr(app_module, "create_session", lambda *a, **k: session)
    demo, url = app_module.serve("run", "images", port=None, block=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(url, timeout=20).status == 200
        assert "warning" not in capsys.readouterr().err
    finally:
        demo.close()
    assert "reachable from other machines" in app_module.host_warning("0.0.0.0")
