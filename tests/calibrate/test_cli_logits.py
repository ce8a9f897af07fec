"""`traitlens calibrate --logits FILE.npz` end to end."""

import json

import numpy as np
import pytest

from traitlens.calibrate import accuracy_table, alg_gamma, ausuc, oracle_gamma
from traitlens.cli import main


def _logits(rng, n, c, seen, labels=None):
    y = rng.integers(0, c, n) if labels is None else labels
    z = rng.normal(size=(n, c))
    z[np.arange(n), y] += 3.0
    z[:, seen] += 2.5  # the fine-tuning classes' logits sit higher
    return z.astype(np.float32), y


def test_calibrate_logits_writes_table_json_and_plot(tmp_path, capsys):
    rng = np.random.default_rng(0)
    seen = np.arange(0, 10, 2)
    z, y = _logits(rng, 400, 10, seen)
    tz, ty = _logits(rng, 300, 10, seen, labels=rng.choice(seen, 300))
    npz = tmp_path / "run.npz"
    np.savez(npz, logits=z, labels=y, seen=seen, train_logits=tz, train_labels=ty)
    out, js = tmp_path / "out", tmp_path / "res.json"
    assert main(["calibrate", "--logits", str(npz), "--out", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "AUSUC" in printed and "pcv: skipped" in printed
    res = json.loads(js.read_text())
    assert res == json.loads((out / "calibration.json").read_text())
    assert (out / "seen_unseen.png").stat().st_size > 5000
    # the numbers are those of the Python API, ALG from the training arrays
    assert res["gamma"]["alg"] == pytest.approx(alg_gamma(tz, ty, seen))
    assert res["gamma"]["oracle"] == pytest.approx(oracle_gamma(z, y, seen))
    assert res["ausuc"] == pytest.approx(ausuc(z, y, seen))
    assert res["tables"]["alg"] == pytest.approx(accuracy_table(z, y, seen, res["gamma"]["alg"]))
    # the bias is about 2.5: ALG finds it from training data and lifts the absent classes
    assert 1.5 < res["gamma"]["alg"] < 3.5
    assert res["tables"]["alg"]["u/y"] > res["tables"]["fine-tuned"]["u/y"] + 0.3


def test_alg_is_skipped_without_training_logits(tmp_path, capsys):
    rng = np.random.default_rng(1)
    seen = [0, 1, 2]
    z, y = _logits(rng, 100, 6, seen)
    npz = tmp_path / "test_only.npz"
    np.savez(npz, logits=z, labels=y, seen=np.array(seen))
    js = tmp_path / "r.json"
    assert main(["calibrate", "--logits", str(npz), "--method", "alg,oracle", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert "alg" in res["skipped"] and "alg" not in res["gamma"] and "oracle" in res["gamma"]


def test_user_errors_are_one_line(tmp_path, capsys):
    npz = tmp_path / "bad.npz"
    np.savez(npz, logits=np.zeros((3, 4)), labels=np.zeros(3, dtype=int))
    assert main(["calibrate", "--logits", str(npz)]) == 2
    assert "lacks the array(s) seen" in capsys.readouterr().err
    assert main(["calibrate", "--logits", str(tmp_path / "nope.npz")]) == 2
    assert main(["calibrate", "--logits", str(npz), "--method", "magic"]) == 2
    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err
