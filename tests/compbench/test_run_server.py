"""End to end: `compbench run` against an OpenAI-compatible server started inside the test.

The server really looks at the images (it counts red pixels in the base64 data URLs), answers slowly,
and misbehaves on purpose: a 429, a 500, malformed JSON and a reply slower than the client's timeout,
each once, on given records; one record always gets a wrong answer, one an unparseable one. The run
is interrupted with Ctrl-C (SIGINT), resumed, and must end with every record answered exactly once.
"""

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.cli import main

KEY = "sk-test-DO-NOT-LEAK-4242"


def _draw(path: Path, red: int, seed: int) -> None:
    """An image with ``red`` red squares on a grey background."""
    rng = np.random.default_rng(seed)
    img = np.full((40, 60, 3), 128, np.uint8)
    cells = rng.permutation(12)[:red]
    for c in cells:
        y, x = divmod(int(c), 6)
        img[4 + 12 * y: 12 + 12 * y, 2 + 10 * x: 9 + 10 * x] = (220, 20, 20)
    Image.fromarray(img).save(path)


def _red_count(data_url: str) -> int:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    a = np.asarray(Image.open(BytesIO(raw)).convert("RGB")).astype(int)
    return int(((a[..., 0] > 180) & (a[..., 1] < 60)).sum())


def _make_benchmark(root: Path):
    """Two tasks: vqav2 (counting; Same allowed) and cub (First/Second wording). Returns truth per pair."""
    (root / "img").mkdir(parents=True)
    counts = {"vqav2": [(1, 3), (4, 2), (2, 2), (5, 1), (3, 3), (1, 2), (4, 5), (2, 1)],
              "cub": [(2, 4), (5, 3), (1, 4), (3, 2), (2, 5), (4, 1)]}
    pairs = {}
    for task, cs in counts.items():
        recs = []
        for i, (a, b) in enumerate(cs):
            p1, p2 = root / "img" / f"{task}_{i}_a.png", root / "img" / f"{task}_{i}_b.png"
            _draw(p1, a, seed=100 + i)
            _draw(p2, b, seed=200 + i)
            truth = "Left" if a > b else "Right" if b > a else "Same"
            question = "Which image has more red squares?" if task == "vqav2" else "Which bird has more red on it?"
            recs.append({"image_1": f"img/{p1.name}", "image_2": f"img\\{p2.name}", "question": question,
                         "answer": truth})
            pairs[(task, i)] = (p1, p2, truth)
        (root / f"{task}.json").write_text(json.dumps(recs + [{}]))
    return pairs


class _Script:
    """Which pair (by its images) misbehaves how; counts of what the server did."""

    def __init__(self, pairs):
        self.by_hash = {}
        for key, (p1, p2, truth) in pairs.items():
            self.by_hash[self._h(p1.read_bytes(), p2.read_bytes())] = key
        self.once = {("vqav2", 0): 429, ("vqav2", 1): 500, ("cub", 0): "malformed", ("cub", 1): "slow"}
        self.wrong = ("vqav2", 5)
        self.unparseable = ("cub", 3)
        self.lock = threading.Lock()
        self.seen = {}
        self.events = {"429": 0, "500": 0, "malformed": 0, "slow": 0, "ok": 0, "bad_key": 0}
        # After ``hold_after`` good answers the server waits for ``gate`` (the test opens it once it has
        # interrupted the client), so a run cannot finish before its Ctrl-C however the machine is loaded.
        self.hold_after = None
        self.gate = threading.Event()

    @staticmethod
    def _h(a: bytes, b: bytes) -> str:
        return hashlib.sha1(a + b"|" + b).hexdigest()


def _server(script: _Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            if length > 5_000_000:
                self.send_error(413)
                return
            body = json.loads(self.rfile.read(length))
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                with script.lock:
                    script.events["bad_key"] += 1
                self.send_error(401)
                return
            content = body["messages"][0]["content"]
            prompt = next(c["text"] for c in content if c["type"] == "text")
            urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
            raws = [base64.b64decode(u.split(",", 1)[1]) for u in urls]
            key = script.by_hash.get(script._h(*raws))
            assert body["temperature"] == 0 and body["max_tokens"] == 128
            with script.lock:
                n = script.seen.get(key, 0)
                script.seen[key] = n + 1
            how = script.once.get(key) if n == 0 else None
            if how == 429:
                script.events["429"] += 1
                self.send_response(429)
                self.send_header("Retry-After", "0")
                self.end_headers()
                return
            if how == 500:
                script.events["500"] += 1
                self.send_error(500)
                return
            if how == "slow":
                script.events["slow"] += 1
                time.sleep(1.2)  # longer than the client's timeout
            time.sleep(0.12)     # every reply is slow
            a, b = (_red_count(u) for u in urls)
            first, second = ("First", "Second") if "First" in prompt else ("Left", "Right")
            reply = first if a > b else second if b > a else "Same"
            if key == script.wrong:
                reply = second if reply == first else first
            if key == script.unparseable:
                reply = f"{first} or {second}, hard to say"
            if how == "malformed":
                script.events["malformed"] += 1
                payload = b'{"choices": [{"message": {"content": '
            else:
                with script.lock:
                    script.events["ok"] += 1
                    hold = script.hold_after is not None and script.events["ok"] > script.hold_after
                if hold:
                    script.gate.wait(30)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def test_run_interrupt_resume(tmp_path, monkeypatch):
    data = tmp_path / "bench"
    pairs = _make_benchmark(data)
    script = _Script(pairs)
    script.hold_after = 6
    server = _server(script)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    out = tmp_path / "run"
    args = ["compbench", "run", "--data", str(data), "--tasks", "all", "--model", "openai:test-vlm",
            "--out", str(out), "--base-url", url, "--concurrency", "2", "--timeout", "0.6", "--retries", "4",
            "--backoff", "0.05"]
    env = dict(os.environ, OPENAI_API_KEY=KEY, TRAITLENS_QUIET="1")
    try:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from traitlens.cli import main; sys.exit(main())"]
                                + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                # a shell's background job starts with SIGINT ignored, and Python keeps it
                                # so: give the client the default disposition, as in a terminal
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        results = out / "results.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if results.is_file() and len(results.read_text().splitlines()) >= 4:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        script.gate.set()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert b"interrupted" in err
        first = [json.loads(l) for l in results.read_text().splitlines()]
        assert 4 <= len(first) < 14  # really interrupted part-way

        # without --resume the finished answers are protected
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("TRAITLENS_QUIET", "1")
        assert main(args) == 2

        summary_json = tmp_path / "summary.json"
        assert main(args + ["--resume", "--json", str(summary_json)]) == 0
    finally:
        server.shutdown()
        server.server_close()

    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == 14 and len(set(ids)) == 14          # every record answered exactly once
    assert rows[: len(first)] == first                      # nothing answered before was lost or rewritten
    assert {(r["task"]) for r in rows} == {"vqav2", "cub"}

    # expected accuracies: vqav2 has 8 pairs, one answered wrong on purpose; cub 6, one unparseable
    summary = json.loads(summary_json.read_text())
    assert summary["tasks"]["vqav2"]["correct"] == 7 and summary["tasks"]["vqav2"]["n"] == 8
    assert summary["tasks"]["cub"]["correct"] == 5 and summary["tasks"]["cub"]["unparseable"] == 1
    assert summary["tasks"]["vqav2"]["accuracy"] == pytest.approx(7 / 8)
    assert summary["tasks"]["cub"]["accuracy"] == pytest.approx(5 / 6)
    assert summary["dimensions"]["quantity"]["accuracy"] == pytest.approx(7 / 8)
    assert summary["macro_accuracy"] == pytest.approx((7 / 8 + 5 / 6) / 2)
    same = [r for r in rows if r["truth"] == "Same"]
    assert len(same) == 2 and all(r["status"] == "correct" for r in same)

    # the server saw each kind of trouble, and the client got through it
    assert script.events["429"] == 1 and script.events["500"] == 1 and script.events["malformed"] == 1
    assert script.events["slow"] == 1 and script.events["bad_key"] == 0

    # outputs exist, and the key is nowhere in them
    for name in ("summary.json", "summary.txt", "accuracy.png", "failures.html", "missing_images.json"):
        assert (out / name).is_file(), name
    for f in out.iterdir():
        assert KEY.encode() not in f.read_bytes(), f
    html = (out / "failures.html").read_text()
    assert "data:image/png;base64," in html and "hard to say" in html
