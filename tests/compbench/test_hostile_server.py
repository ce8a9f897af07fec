"""`compbench run` against a hostile OpenAI-compatible server on 127.0.0.1 (issue 16).

One record per misbehaviour: a 401 page and a 200 reply that echo the key, a 302 and a 307 to another
origin (a second server counts what reaches it), a 1-byte-per-0.2 s trickle, a body cut short, a
garbage status line holding the key, a 300 MB reply (announced, and one that just keeps coming). The
run must finish with a summary, each record failed or answered as it should, within a bounded time,
and the key must be nowhere: not in any file of the run, not in what the command printed.
"""

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from traitlens.cli import main

KEY = "sk-hostile-0123456789-SECRET"
MODES = ["ok", "echo401", "echo200", "redirect302", "redirect307", "same307", "trickle", "trickle_head", "truncate",
         "garbage", "huge_announced", "huge_streamed"]


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply_with(self, content):
        """A 200 chat-completions reply whose message is ``content``."""
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _hostile(elsewhere_url, seen, stop):
    class H(_Quiet):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
            mode = next(m for m in MODES if f"mode={m}." in text)
            seen.append((mode, self.headers.get("Authorization")))
            auth = self.headers.get("Authorization", "")
            raw = self.connection
            if mode == "ok" or (mode == "same307" and self.path == "/v2/chat/completions"):
                self._json({"choices": [{"message": {"content": "Left"}}]})
            elif mode == "same307":       # the same origin, the method kept: followed, with the body
                self.send_response(307)
                self.send_header("Location", "/v2/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "trickle_head":  # the status line and headers one byte at a time
                for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 95:
                    if stop.is_set():
                        break
                    try:
                        raw.sendall(bytes([ch]))
                    except OSError:
                        break
                    time.sleep(0.2)
                self.close_connection = True
            elif mode == "echo401":
                page = f"invalid key: {auth} (you sent api-key={KEY})".encode()
                self.send_response(401)
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
            elif mode == "echo200":
                self._json({"choices": [{"message": {"content": f"Left. Your key is {KEY}; header {auth}"}}]})
            elif mode in ("redirect302", "redirect307"):
                self.send_response(302 if mode == "redirect302" else 307)
                self.send_header("Location", f"{elsewhere_url}/v1/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "trickle":
                raw.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                for _ in range(100):          # bounded: 20 s at most, the client gives up after 1 s
                    if stop.is_set():
                        break
                    try:
                        raw.sendall(b" ")
                    except OSError:
                        break
                    time.sleep(0.2)
                self.close_connection = True
            elif mode == "truncate":
                raw.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                            b'{"choices": [{"message"')
                raw.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            elif mode == "garbage":
                raw.sendall(f"ZZZ {KEY} garbage\r\n\r\n".encode())
                self.close_connection = True
            elif mode == "huge_announced":
                self.send_response(200)
                self.send_header("Content-Length", str(300 * 2 ** 20))
                self.end_headers()
                try:
                    self.wfile.write(b"x" * 65536)
                except OSError:
                    pass
                self.close_connection = True
            elif mode == "huge_streamed":   # no length: read until the server stops (it would not, for 300 MB)
                raw.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                chunk = b"y" * 65536
                for _ in range(300 * 16):
                    if stop.is_set():
                        break
                    try:
                        raw.sendall(chunk)
                    except OSError:
                        break
                self.close_connection = True

        def _json(self, payload):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST  # a client that turned the POST into a GET would land here too

    return H


def _elsewhere(hits):
    class E(_Quiet):
        def do_POST(self):  # noqa: N802
            hits.append(self.headers.get("Authorization"))
            self.reply_with("Right")

        do_GET = do_POST

    return E


def _bench(tmp_path, modes):
    """A benchmark folder of one celeba record per mode, its question ending ``mode=MODE.``."""
    data = tmp_path / "bench"
    (data / "img").mkdir(parents=True)
    Image.new("RGB", (16, 12), (200, 30, 30)).save(data / "img" / "a.png")
    Image.new("RGB", (16, 12), (30, 30, 200)).save(data / "img" / "b.png")
    (data / "celeba.json").write_text(json.dumps([
        {"image_1": "img/a.png", "image_2": "img/b.png", "question": f"Which one? mode={m}.", "answer": "Left"}
        for m in modes]))
    return data


def test_hostile_server_never_gets_the_key_out(tmp_path, monkeypatch, capfd):
    data = _bench(tmp_path, MODES)
    hits, seen, stop = [], [], threading.Event()
    other = _serve(_elsewhere(hits))
    elsewhere = f"http://127.0.0.1:{other.server_address[1]}"   # same host, another port: another origin
    server = _serve(_hostile(elsewhere, seen, stop))
    out = tmp_path / "run"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("TRAITLENS_QUIET", "0")
    start = time.monotonic()
    try:
        rc = main(["compbench", "run", "--data", str(data), "--model", "openai:hostile", "--out", str(out),
                   "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "--concurrency", "4",
                   "--timeout", "1", "--retries", "1", "--backoff", "0.05", "--json", str(tmp_path / "s.json")])
        took = time.monotonic() - start
    finally:
        stop.set()
        server.shutdown()
        other.shutdown()
        server.server_close()
        other.server_close()
    printed = capfd.readouterr()
    assert rc == 1, printed.err                                  # some records failed; the run still ended
    assert took < 20, took                                       # the trickle is cut at --timeout, not at its end

    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["celeba"]["n"] == 3                  # ok, echo200 and same307 were answered
    errors = {json.loads(l)["id"]: json.loads(l)["error"] for l in (out / "errors.jsonl").read_text().splitlines()}
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    by_q = {}
    from traitlens.compbench.records import load_records
    for r in load_records(data / "celeba.json")[0]:
        by_q[r.question.split("mode=")[1].rstrip(".")] = r.id
    answered = ("ok", "echo200", "same307")
    assert {r["id"] for r in rows} == {by_q[m] for m in answered}
    assert set(errors) == {by_q[m] for m in MODES if m not in answered}
    assert "HTTP 401" in errors[by_q["echo401"]] and "[redacted]" in errors[by_q["echo401"]]
    for m in ("redirect302", "redirect307"):
        assert "not followed" in errors[by_q[m]] and "another origin" in errors[by_q[m]]
    for m in ("trickle", "trickle_head"):
        assert "within 1 s" in errors[by_q[m]] and "2 tries" in errors[by_q[m]]
    assert "IncompleteRead" in errors[by_q["truncate"]]
    assert "BadStatusLine" in errors[by_q["garbage"]]
    assert "refused" in errors[by_q["huge_announced"]] and "refused" in errors[by_q["huge_streamed"]]
    echoed = next(r for r in rows if r["id"] == by_q["echo200"])
    assert "[redacted]" in echoed["reply"] and echoed["status"] == "correct"

    assert hits == []                                           # nothing reached the other origin
    assert all(auth == f"Bearer {KEY}" for _, auth in seen)     # the key went to the base URL only
    retried = {m: sum(1 for s, _ in seen if s == m) for m in MODES}
    assert retried["trickle"] == retried["trickle_head"] == retried["truncate"] == retried["garbage"] == 2  # retried once
    assert retried["same307"] == 2                              # the redirect and the request it led to
    assert retried["echo401"] == retried["redirect302"] == retried["huge_announced"] == 1   # not retried

    # the key is in no file of the run and in nothing printed
    for f in list(out.iterdir()) + [tmp_path / "s.json"]:
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in printed.out and KEY not in printed.err
    requests = [json.loads(l) for l in (out / "requests.jsonl").read_text().splitlines()]
    assert sum("sent" in r for r in requests) == len(MODES)
    assert sum("failed" in r for r in requests) == len(MODES) - len(answered)


def test_redact_forms():
    from traitlens.compbench.answerers.redact import redact

    text = (f'{{"error": "bad key {KEY}", "headers": {{"Authorization": "Bearer {KEY}"}}}} api-key: other-secret '
            f"x-api-key=abc123 Bearer zzzz9zzzz, Basic dTpw; basic YTpi.")
    out = redact(text, [KEY])
    assert KEY not in out and "other-secret" not in out and "abc123" not in out and "zzzz9zzzz" not in out
    assert "dTpw" not in out and "YTpi" not in out and out.endswith("basic [redacted].")
    assert out.count("[redacted]") >= 7
    assert redact("Left", [KEY]) == "Left" and redact(None, [KEY]) is None


@pytest.mark.parametrize("text", ["The basic shape of the left bird is rounder. Answer: Left",
                                  "Basic colours: the Bearer of the crest is on the right.",
                                  "It needs basic auth. A bearer token, basic HTTP, Basic Shapes."])
def test_redact_leaves_the_words_basic_and_bearer_alone(text):
    from traitlens.compbench.answerers.redact import redact

    assert redact(text, [KEY]) == text


def test_a_reply_is_stored_as_the_model_wrote_it_but_for_the_key(tmp_path, bare_env):
    """Replies get the literal key taken out, nothing else: no header-like pattern rewrites them."""
    words = "The basic shape of the left bird is rounder; api-key: not given, Bearer Shape. Answer: Left"

    class H(_Quiet):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply_with(f"{words} ({KEY})")

    server = _serve(H)
    bare_env.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "run"
    try:
        rc = main(["compbench", "run", "--data", str(_bench(tmp_path, ["ok"])), "--model", "openai:m",
                   "--out", str(out), "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1"])
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert row["reply"] == f"{words} ([redacted])" and row["status"] == "correct"


@pytest.fixture
def bare_env(monkeypatch):
    """No proxy variables and no key in the environment; the test sets what it needs."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return monkeypatch


def _query(tmp_path):
    from traitlens.compbench.answerers import Query
    from traitlens.compbench.records import PairRecord
    from traitlens.compbench.tasks import TASKS

    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    rec = PairRecord(id="x", task="celeba", dimension="emotion", question="Q", answer="Right",
                     image_1="a.png", image_2="b.png")
    return Query(rec, TASKS["celeba"], "Q", [tmp_path / "a.png", tmp_path / "b.png"])


def _recording(seen, content):
    """A server noting (request line, Authorization, Proxy-Authorization) of each POST, answering ``content``."""
    class R(_Quiet):
        def do_POST(self):  # noqa: N802
            seen.append((self.requestline, self.headers.get("Authorization"), self.headers.get("Proxy-Authorization")))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply_with(content)

    return R


def test_http_proxy_from_the_environment_is_used(tmp_path, bare_env):
    """Like urllib, the client goes through $http_proxy (an absolute URI in the request line) when no key
    is set."""
    from traitlens.compbench.answerers import make_answerer

    lines = []
    proxy = _serve(_recording(lines, "Right"))
    try:
        bare_env.setenv("http_proxy", f"http://u:p@127.0.0.1:{proxy.server_address[1]}")
        ans = make_answerer("openai:m", base_url="http://model.invalid:9/v1", max_retries=0, timeout=5)
        assert ans.answer(_query(tmp_path)) == "Right"
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert lines[0][0].startswith("POST http://model.invalid:9/v1/chat/completions ")
    assert lines[0][2] == "Basic dTpw"                          # u:p


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_server_on_this_machine_is_never_reached_through_the_proxy(tmp_path, bare_env, host):
    """The usual local vLLM / llama.cpp server: $http_proxy set, no $no_proxy; the key goes to the server
    straight, and nothing (key, images) to the proxy."""
    from traitlens.compbench.answerers import make_answerer

    via_proxy, direct = [], []
    proxy, server = _serve(_recording(via_proxy, "Proxied")), _serve(_recording(direct, "Left"))
    try:
        bare_env.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        bare_env.setenv("OPENAI_API_KEY", KEY)
        ans = make_answerer("openai:m", base_url=f"http://{host}:{server.server_address[1]}/v1", max_retries=0,
                            timeout=5)
        assert ans.answer(_query(tmp_path)) == "Left"
    finally:
        for s in (proxy, server):
            s.shutdown()
            s.server_close()
    assert via_proxy == []
    assert [auth for _, auth, _ in direct] == [f"Bearer {KEY}"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "[::1]", "localhost", "LocalHost", "0.0.0.0"])
def test_loopback_hosts_have_no_proxy(bare_env, host):
    from traitlens.compbench.answerers.openai_http import _proxy_for

    bare_env.setenv("http_proxy", "http://proxy.invalid:3128")
    assert _proxy_for(urllib.parse.urlsplit(f"http://{host}:8000/v1")) is None
    assert _proxy_for(urllib.parse.urlsplit("http://10.1.2.3:8000/v1")).hostname == "proxy.invalid"


def test_the_key_never_goes_in_cleartext_to_a_proxy(tmp_path, bare_env, capfd):
    """A plain-http server elsewhere, a proxy and a key: refused with one line (a UserError up front; a
    failed record when the key appears only later), and nothing reaches the proxy."""
    from traitlens.compbench.answerers import AnswererError, make_answerer
    from traitlens.errors import UserError

    seen = []
    proxy = _serve(_recording(seen, "Proxied"))
    try:
        bare_env.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        bare_env.setenv("OPENAI_API_KEY", KEY)
        with pytest.raises(UserError, match="cleartext") as exc:
            make_answerer("openai:m", base_url="http://model.invalid:9/v1", max_retries=0, timeout=5)
        assert "https" in str(exc.value) and "no_proxy" in str(exc.value) and KEY not in str(exc.value)
        rc = main(["compbench", "run", "--data", str(_bench(tmp_path, ["ok"])), "--model", "openai:m",
                   "--out", str(tmp_path / "run"), "--base-url", "http://model.invalid:9/v1"])
        err = capfd.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "cleartext" in err, err
        bare_env.delenv("OPENAI_API_KEY")
        ans = make_answerer("openai:m", base_url="http://model.invalid:9/v1", max_retries=0, timeout=5)
        bare_env.setenv("OPENAI_API_KEY", KEY)                 # read when the request is made
        with pytest.raises(AnswererError, match="cleartext"):
            ans.answer(_query(tmp_path))
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert seen == []


def test_https_through_a_proxy_is_a_tunnel_the_key_never_crosses(tmp_path, bare_env):
    """The proxy sees a CONNECT (with its own credentials) and then TLS: neither the key nor the body."""
    from traitlens.compbench.answerers import AnswererError, make_answerer

    got = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))

    def proxy():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            while b"\r\n\r\n" not in got:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                got.extend(chunk)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            got.extend(conn.recv(65536))                       # the TLS ClientHello; then the tunnel is cut

    t = threading.Thread(target=proxy, daemon=True)
    t.start()
    try:
        bare_env.setenv("https_proxy", f"http://u:p@127.0.0.1:{listener.getsockname()[1]}")
        bare_env.setenv("OPENAI_API_KEY", KEY)
        ans = make_answerer("openai:m", base_url="https://model.invalid/v1", max_retries=0, timeout=5)
        with pytest.raises(AnswererError):
            ans.answer(_query(tmp_path))
        t.join(10)
    finally:
        listener.close()
    assert bytes(got).startswith(b"CONNECT model.invalid:443 HTTP/"), bytes(got[:80])
    assert b"Proxy-Authorization: Basic dTpw" in got
    assert KEY.encode() not in got and b"Authorization: Bearer" not in got and b"chat/completions" not in got


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/v1/chat/completions",
                                      "http://127.0.0.1:abc/v1/chat/completions",
                                      "http://[::1/v1/chat/completions"])
def test_redirect_to_a_malformed_address_fails_that_record_only(tmp_path, monkeypatch, capfd, location):
    """A Location whose port is out of range or not a number (or whose IPv6 host is unclosed) is a bad
    redirect like any other: that record fails with a line, the run goes on and the key stays home."""
    data = _bench(tmp_path, ["ok", "bad"])
    seen = []

    class H(_Quiet):
        def do_POST(self):  # noqa: N802
            text = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            seen.append(self.path)
            if "mode=bad." in text:
                self.send_response(307)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.reply_with("Left")

    server = _serve(H)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "run"
    try:
        rc = main(["compbench", "run", "--data", str(data), "--model", "openai:m", "--out", str(out),
                   "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "--concurrency", "1",
                   "--timeout", "5", "--retries", "0"])
    finally:
        server.shutdown()
        server.server_close()
    printed = capfd.readouterr()
    assert rc == 1, printed.err                                  # one record failed; the run ended with a summary
    assert "unexpected error" not in printed.err
    assert json.loads((out / "summary.json").read_text())["tasks"]["celeba"]["n"] == 1
    errors = [json.loads(l)["error"] for l in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and "HTTP 307 redirect" in errors[0] and "not followed" in errors[0], errors
    assert seen == ["/v1/chat/completions"] * 2                  # nothing was sent anywhere else


@pytest.mark.parametrize("url", ["http://127.0.0.1:80000/v1", "http://127.0.0.1:abc/v1", "http://127.0.0.1:0/v1",
                                 "http://[::1/v1"])
def test_a_base_url_with_a_bad_port_is_one_line(tmp_path, capfd, url):
    data = _bench(tmp_path, ["ok", "bad"])
    rc = main(["compbench", "run", "--data", str(data), "--model", "openai:m", "--out", str(tmp_path / "run"),
               "--base-url", url])
    err = capfd.readouterr().err
    assert rc == 2, err                                          # a UserError, not "unexpected error: ValueError"
    assert len(err.strip().splitlines()) == 1 and "base URL" in err and "--base-url" in err, err
