"""The CLI's shared behaviour: --help everywhere, --version, one-line errors with exit codes."""

import subprocess
import sys

import pytest

from traitlens import __version__
from traitlens.cli import build_parser, main


def _commands(parser, prefix=()):
    """Every (sub-)command path of the parser, e.g. ("data", "synth")."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(_commands(build_parser()))
    for expected in [("data", "synth"), ("train",), ("evaluate",), ("demo",)]:
        assert expected in commands
    for path in commands:
        with pytest.raises(SystemExit) as exc:
            main(list(path) + ["--help"])
        assert exc.value.code == 0, path
        assert "usage: traitlens" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", "traitlens.cli", "evaluate", "--checkpoint", str(missing),
                           "--data", str(tmp_path), "--split", "test"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("traitlens: error:"), proc.stderr
    assert str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


def test_bare_group_prints_help(capsys):
    assert main(["data"]) == 0
    assert "synth" in capsys.readouterr().out


def test_a_library_error_about_an_option_names_the_flag_the_user_gave(tmp_path, capsys):
    # the engine says what is wrong with the override; only the CLI knows it came from --set
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "lr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "traitlens: error: override 'lr' is not key=value (e.g. lr=0.01) (check --set)"


def test_flag_for_maps_only_flags_that_were_given():
    from traitlens.cli import flag_for

    parser = build_parser()
    assert flag_for("overrides", parser, ["train", "--set", "x"]) == "--set"
    assert flag_for("batch_size", parser, ["train", "--batch-size=4"]) == "--batch-size"
    assert flag_for("overrides", parser, ["train"]) is None and flag_for(None, parser, ["train"]) is None


def test_demo_refuses_unknown_sections_before_any_work(tmp_path, capsys):
    assert main(["demo", "--sections", "explain,explian", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "explian" in err and "atlas" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
