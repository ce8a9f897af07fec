"""Merged-image adapter, scripted answerers, the HF answerer's decoding (with a stand-in model), HTTP errors."""

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from traitlens.compbench.answerers import AlwaysLeft, Oracle, Query, RandomAnswerer, make_answerer
from traitlens.compbench.answerers.base import AnswererError
from traitlens.compbench.merge import merge_pair
from traitlens.compbench.records import PairRecord
from traitlens.compbench.runner import read_results, run
from traitlens.compbench.tasks import TASKS
from traitlens.errors import UserError


def test_merge_pair_sizes_and_separator():
    a = Image.new("RGB", (40, 20), (10, 200, 10))
    b = Image.new("RGB", (30, 60), (200, 10, 10))
    m = merge_pair(a, b)
    h = 40                                    # average height
    wa, wb = 80, 20                           # widths at that height (aspect kept)
    assert m.size == (wa + 10 + wb, h)
    px = np.asarray(m)
    assert (px[:, wa] == 0).all() and (px[:, wa + 9] == 0).all()          # 1 px black each side
    assert (px[:, wa + 1: wa + 9] == 255).all()                          # 8 px white between
    assert tuple(px[5, 5]) == (10, 200, 10) and tuple(px[5, -3]) == (200, 10, 10)


def _rec(task, answer, rid, options=None):
    spec = TASKS[task]
    return PairRecord(id=rid, task=task, dimension=spec.dimension, question="Which?", answer=answer,
                      image_1="a.png", image_2="b.png", options=options)


def _q(rec):
    spec = TASKS[rec.task]
    return Query(rec, spec, spec.prompt(rec.question, rec.options), [])


def test_scripted_answerers():
    cub, soccer, mb = _rec("cub", "Right", "1"), _rec("soccernet", "Left", "2"), _rec("magicbrush", "dog", "3", ["hat", "dog"])
    assert AlwaysLeft().answer(_q(cub)) == "First" and AlwaysLeft().answer(_q(soccer)) == "Frame 1"
    assert AlwaysLeft().answer(_q(mb)) == "hat"
    assert Oracle().answer(_q(cub)) == "Second" and Oracle().answer(_q(mb)) == "dog"
    r = RandomAnswerer(7)
    assert r.answer(_q(cub)) == RandomAnswerer(7).answer(_q(cub))          # seeded per record
    many = [RandomAnswerer(s).answer(_q(_rec("vqav2", "Same", str(i)))) for s in range(3) for i in range(40)]
    assert set(many) == {"Left", "Right", "Same"}
    assert isinstance(make_answerer("scripted:random:3"), RandomAnswerer)
    with pytest.raises(UserError, match="unknown model"):
        make_answerer("gpt4")


def test_hf_answerer_greedy_and_reply_only(monkeypatch, tmp_path):
    """A stand-in `transformers` records what the answerer asks of it."""
    import torch

    calls = {}

    class Batch(dict):
        def to(self, device):
            calls["device"] = device
            return self

    class Processor:
        @classmethod
        def from_pretrained(cls, path):
            return cls()

        def apply_chat_template(self, messages, add_generation_prompt):
            calls["messages"] = messages
            return "PROMPT"

        def __call__(self, text, images, return_tensors):
            calls["images"] = [im.size for im in images]
            return Batch(input_ids=torch.tensor([[1, 2, 3]]))

        def batch_decode(self, ids, skip_special_tokens):
            calls["decoded"] = ids.tolist()
            return [" Right \n"]

    class Model:
        @classmethod
        def from_pretrained(cls, path):
            return cls()

        def to(self, device):
            return self

        def eval(self):
            return self

        def generate(self, **kw):
            calls["generate"] = {k: v for k, v in kw.items() if k != "input_ids"}
            return torch.tensor([[1, 2, 3, 9, 8]])

    fake = types.SimpleNamespace(AutoProcessor=Processor, AutoModelForImageTextToText=Model)
    monkeypatch.setitem(sys.modules, "transformers", fake)
    for name in ("a", "b"):
        Image.new("RGB", (20, 10)).save(tmp_path / f"{name}.png")
    rec = _rec("celeba", "Right", "x")
    spec = TASKS["celeba"]
    q = Query(rec, spec, spec.prompt("Which?"), [tmp_path / "a.png", tmp_path / "b.png"])
    ans = make_answerer(f"hf:{tmp_path}")
    assert ans.answer(q) == "Right"
    assert calls["generate"] == {"do_sample": False, "max_new_tokens": 128}
    assert calls["decoded"] == [[9, 8]]                                   # only the new tokens
    assert [c["type"] for c in calls["messages"][0]["content"]] == ["image", "image", "text"]
    merged = make_answerer(f"hf:{tmp_path}", merged=True)
    merged.answer(q)
    assert calls["images"] == [(50, 10)]                                  # one merged image


def test_hf_answerer_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"traitlens\[vlm\]"):
        make_answerer("hf:/nowhere")


def _server(handler_fn):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            handler_fn(self)

    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s, f"http://127.0.0.1:{s.server_address[1]}/v1"


def test_http_client_gives_up_and_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    rec = _rec("celeba", "Left", "y")
    q = Query(rec, TASKS["celeba"], "Which?", [tmp_path / "a.png", tmp_path / "b.png"])
    hits = []

    def always_503(h):
        hits.append(503)
        h.send_error(503)

    s, url = _server(always_503)
    try:
        a = make_answerer("openai:m", base_url=url, max_retries=2, backoff=0.01)
        with pytest.raises(AnswererError, match="no answer after 3 tries"):
            a.answer(q)
        assert len(hits) == 3 and a.retries == 2
    finally:
        s.shutdown()
        s.server_close()

    def bad_request(h):
        hits.append(400)
        h.send_error(400)

    s, url = _server(bad_request)
    try:
        hits.clear()
        with pytest.raises(AnswererError, match="HTTP 400"):
            make_answerer("openai:m", base_url=url, max_retries=3, backoff=0.01).answer(q)
        assert hits == [400]                                              # not retried
    finally:
        s.shutdown()
        s.server_close()
    with pytest.raises(UserError, match="needs a key"):
        make_answerer("openai:gpt-4o")                                    # the real API, no key in the env


def test_runner_keeps_answers_through_a_crash(tmp_path):
    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    recs = [_rec("celeba", "Left" if i % 2 else "Right", f"r{i}") for i in range(6)]

    class Crashy:
        name, concurrency = "crashy", 1

        def __init__(self):
            self.n = 0

        def answer(self, q):
            self.n += 1
            if self.n == 4:
                raise RuntimeError("model fell over")
            return "Left"

    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run(recs, Crashy(), out, image_root=tmp_path)
    assert [r["id"] for r in read_results(out / "results.jsonl")] == ["r0", "r1", "r2"]
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"id": "r3", "trunc')                                  # a line cut short by the crash
    res = run(recs, AlwaysLeft(), out, image_root=tmp_path, resume=True)
    rows = read_results(out / "results.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(6)]
    assert res.already_answered == 3 and res.answered_now == 3
    assert res.summary.tasks["celeba"].accuracy == pytest.approx(3 / 6)
    # missing images are reported up front, not mid-run
    recs.append(PairRecord(id="gone", task="celeba", dimension="emotion", question="Q", answer="Left",
                           image_1="a.png", image_2="nope.png"))
    res = run(recs, AlwaysLeft(), out, image_root=tmp_path, resume=True)
    assert res.missing_images == {"gone": ["nope.png"]}
    assert json.loads((out / "missing_images.json").read_text()) == {"gone": ["nope.png"]}
