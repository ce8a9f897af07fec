"""The output folder's rules: whole lines, a torn tail repaired, durable artifacts, one process per shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from traitlens.cli import main
from traitlens.errors import UserError
from traitlens.runs.store import (RESULTS, ResultsFile, ShardLock, done_ids, remove_stale_temporaries, run_records,
                                  write_durably)


def test_a_torn_tail_is_cut_before_the_next_record(tmp_path):
    path = tmp_path / RESULTS
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "sco')  # killed mid-line
    results = ResultsFile(path)
    results.append({"id": "c"})
    results.close()
    assert path.read_text().splitlines() == ['{"id": "a"}', '{"id": "c"}']
    assert done_ids(tmp_path) == {"a", "c"}
    # a tail left by another writer while this one was open is cut too, and a file of one torn line emptied
    results = ResultsFile(path)
    with open(path, "ab") as fh:
        fh.write(b'{"id": "d"')
    results.append({"id": "e"})
    results.close()
    assert [r["id"] for r in run_records(tmp_path)] == ["a", "c", "e"]
    path.write_bytes(b'{"id": "x"')
    ResultsFile(path).close()
    assert path.read_bytes() == b""


def test_write_durably_leaves_no_partial_file(tmp_path):
    target = tmp_path / "deep" / "x.bin"
    write_durably(target, b"1" * 100_000)
    assert target.read_bytes() == b"1" * 100_000
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]  # no temporary left behind
    (target.parent / ".y.png.tmp-123").write_bytes(b"half")  # as a killed writer leaves it
    assert remove_stale_temporaries(tmp_path) == 1 and [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_one_process_per_shard(tmp_path):
    first = ShardLock(tmp_path, 0, 1)
    with pytest.raises(UserError, match=str(tmp_path)):
        ShardLock(tmp_path, 0, 1)
    with pytest.raises(UserError, match="another run with 1 process"):
        ShardLock(tmp_path, 0, 2)  # a torchrun job while a single process writes
    first.release()
    ranks = [ShardLock(tmp_path, r, 2) for r in (0, 1)]  # the ranks of one job share the folder
    with pytest.raises(UserError, match="shard 2 of 2"):
        ShardLock(tmp_path, 1, 2)
    with pytest.raises(UserError, match="another run with 2 process"):
        ShardLock(tmp_path, 0, 1)
    for lock in ranks:
        lock.release()
    ShardLock(tmp_path, 0, 1).release()


def test_a_second_process_on_one_folder_is_refused_in_one_line(tmp_path, checkpoint, images, run_cli):
    out = tmp_path / "out"
    held = ShardLock(out, 0, 1)  # the first process's lock (this test process holds it)
    try:
        proc = run_cli("explain", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                       "--device", "cpu")
        _, err = proc.communicate(timeout=120)
    finally:
        held.release()
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out) in lines[0] and "another process" in lines[0]
    assert not (out / RESULTS).exists() or (out / RESULTS).read_text() == ""


def test_torchrun_ranks_share_one_folder(tmp_path, checkpoint, images):
    """Two real ranks (gloo on the CPU) each lock and explain their own shard into one folder."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(os.path.join(os.path.dirname(__file__), "..", "..", "src")),
               TRAITLENS_QUIET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "traitlens.cli", "explain", "--checkpoint", str(checkpoint),
           "--images", str(images), "--out", str(out), "--device", "cpu", "--save-maps", "--batch-size", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "explained 20 images" in proc.stdout  # rank 0's half
    rows = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert len(rows) == 40 == len({r["id"] for r in rows})
    assert sorted(p.name for p in (out / ".lock").iterdir()) == ["guard", "shard-0-of-2", "shard-1-of-2"]
    assert len(np.load(out / "maps.npz").files) == 40


def test_a_folder_is_not_resumed_with_other_settings(tmp_path, checkpoint, make_images, capsys):
    make_images(tmp_path / "c", 2)
    out = tmp_path / "out"
    base = ["explain", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "c"), "--out", str(out),
            "--device", "cpu"]
    assert main(base + ["--alpha", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--alpha", "0.5"]) == 2  # its records answer α = 1, not 0.5
    err = capsys.readouterr().err.strip()
    assert "alpha" in err and str(out) in err and "\n" not in err
    assert main(base + ["--alpha", "1"]) == 0 and len((out / RESULTS).read_text().splitlines()) == 2
