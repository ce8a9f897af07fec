"""After an interrupt, a resumed run says how many requests were in flight (sent, no answer kept)."""

import json
import threading
import time

from PIL import Image

from traitlens.compbench.answerers import AlwaysLeft
from traitlens.compbench.records import PairRecord
from traitlens.compbench.runner import REQUESTS, read_results, run


def _recs(n):
    return [PairRecord(id=f"r{i}", task="celeba", dimension="emotion", question="Which?", answer="Left",
                       image_1="a.png", image_2="b.png") for i in range(n)]


class Interrupted:
    """r0 answers; r1 and r2 hang (in flight); r3 waits until they have started, then Ctrl-C."""

    name, concurrency = "interrupted", 3

    def __init__(self):
        self.started, self.release, self.lock = set(), threading.Event(), threading.Lock()

    def answer(self, q):
        rid = q.record.id
        with self.lock:
            self.started.add(rid)
        if rid == "r0":
            return "Left"
        if rid == "r3":
            deadline = time.time() + 10
            while not {"r1", "r2"} <= self.started and time.time() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt
        self.release.wait(10)
        return "Left"


def test_resume_counts_requests_in_flight(tmp_path):
    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    recs = _recs(6)
    out = tmp_path / "out"
    ans = Interrupted()
    try:
        run(recs, ans, out, image_root=tmp_path, resume=False)
        raise AssertionError("the run should have been interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        ans.release.set()
    answered = {r["id"] for r in read_results(out / "results.jsonl")}
    assert answered == {"r0"}
    sent = [json.loads(l)["id"] for l in (out / REQUESTS).read_text().splitlines() if "sent" in json.loads(l)]
    with ans.lock:
        started = set(ans.started)
    assert set(sent) == started and {"r1", "r2", "r3"} <= started
    res = run(recs, AlwaysLeft(), out, image_root=tmp_path, resume=True)
    assert res.in_flight_before == len(started - answered)     # r1, r2, r3 (and r4 if a worker had begun it)
    assert res.already_answered == 1 and res.answered_now == 5
    # the resumed run left nothing in flight: a second resume reports none
    assert run(recs, AlwaysLeft(), out, image_root=tmp_path, resume=True).in_flight_before == 0
