"""`traitlens train` and `traitlens evaluate` end to end, and their one-line errors."""

import json
import subprocess
import sys

import pytest

from traitlens.cli import main


def test_train_then_evaluate_writes_json(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("method: linear-probe\nbackbone: tiny-cnn\nepochs: 2\nbatch_size: 8\nlr: 0.01\n")
    code = main(["train", "--config", str(cfg), "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                 "--image-size", "32", "--device", "cpu", "--no-progress", "--set", "warmup_epochs=0",
                 "--json", str(tmp_path / "train.json")])
    assert code == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["best"]["epoch"] in (1, 2) and len(trained["history"]) == 2
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "method: linear-probe" in saved and "warmup_epochs: 0.0" in saved and "image_size: 32" in saved

    code = main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(tiny_data), "--split", "test",
                 "--device", "cpu", "--json", str(tmp_path / "eval.json")])
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n"] == 16 and result["split"] == "test"
    assert len(result["confusion"]) == 4 and sum(map(sum, result["confusion"])) == 16
    assert len(result["per_class"]) == 4 and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert "test: top-1" in capsys.readouterr().out


def test_a_batch_larger_than_the_training_split_is_lowered_with_a_note(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAITLENS_QUIET", "0")
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--backbone", "tiny-cnn",
                 "--image-size", "32", "--device", "cpu", "--no-progress", "--batch-size", "64", "--epochs", "1",
                 "--json", str(tmp_path / "train.json")])
    assert code == 0
    assert "batch_size 64 is larger than the 32 training images: using batch_size 32" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "DATA", "--out", "OUT", "--set", "lrr=1"], "unknown key 'lrr'"),
    (["train", "--data", "DATA", "--out", "OUT", "--set", "epochs=many"], "epochs must be an integer"),
    (["train", "--data", "DATA", "--out", "OUT", "--method", "magic"], "unknown training method 'magic'"),
    (["train", "--data", "MISSING", "--out", "OUT"], "not found"),
    (["train", "--data", "DATA"], "no output folder"),
    (["train", "--data", "DATA", "--out", "OUT", "--resume"], "nothing to resume"),
    (["train", "--data", "DATA", "--out", "OUT", "--classes", "alpha,zeta"], "zeta"),
    (["evaluate", "--checkpoint", "OUT", "--data", "DATA"], "not found"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, tiny_data, tmp_path, capsys):
    argv = [a.replace("MISSING", str(tmp_path / "missing")).replace("DATA", str(tiny_data))
            .replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(argv + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("traitlens: error:") and message in err and "\n" not in err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "traitlens.cli", "train", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--set KEY=VALUE" in proc.stdout
