"""The options README promises on every command, --debug anywhere on the line, errors in the CLI's terms, and
the names a user reads accepted where an id is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from traitlens.cli import build_parser, cli_terms, command_parser, main
from traitlens.cli.common import class_index, part_id, read_part_names
from traitlens.errors import UserError

README = Path(__file__).resolve().parents[2] / "README.md"
# What README's "The CLI at a glance" says each of these leaves out, and why (compbench's are its own).
EXCEPTIONS = {("data", "synth"): {"--device"}, ("data", "info"): {"--out", "--device", "--seed"},
              ("backbone", "embedded"): {"--seed"}, ("data", "split"): {"--device"},
              ("data", "masks"): {"--device", "--seed"}, ("backbone", "identify"): {"--out", "--device", "--seed"},
              ("import",): {"--device", "--seed"}, ("app",): {"--out", "--seed", "--json"}}
SHARED = ("--out", "--device", "--seed", "--json", "--debug")


def _commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("func") is not None:
                    yield prefix + (name,), sub
                yield from _commands(sub, prefix + (name,))


def test_every_command_but_compbench_has_the_shared_options_readme_names():
    seen = 0
    for path, sub in _commands(build_parser()):
        if path[0] == "compbench":
            continue
        flags = {f for a in sub._actions for f in a.option_strings}
        missing = {f for f in SHARED if f not in flags}
        assert missing == EXCEPTIONS.get(path, set()), path
        seen += 1
    assert seen >= 14
    text = README.read_text()
    glance = text[text.index("## The CLI at a glance"):text.index("## Python API")]
    for path in EXCEPTIONS:
        assert f"`{' '.join(path)}`" in glance
    assert "--debug" in glance and "after the sub-command" in glance


def test_debug_works_after_the_sub_command(tmp_path):
    argv = ["evaluate", "--checkpoint", str(tmp_path / "nowhere"), "--data", str(tmp_path)]
    assert main(argv) == 2  # one line
    for where in (argv + ["--debug"], ["--debug"] + argv):
        with pytest.raises(UserError):  # the traceback, not the line
            main(where)


def test_errors_name_flags_not_python_keywords(collection, checkpoint, tmp_path, capsys):
    parser = command_parser(build_parser(), ["explain", "--images", "x"])
    assert cli_terms("references='taxonomy' needs a class tree (traits=... with genera)", parser) == \
        "references='taxonomy' needs a class tree (--traits FILE with genera)"
    img = next((collection / "test").rglob("*.png"))
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(img), "--references", "taxonomy",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--traits FILE" in err and "traits=" not in err


def test_display_names_and_part_names_are_accepted_where_an_id_is(tmp_path):
    names = ["00_Pseudavis_pallida", "01_Pseudavis_flava", "02_Chlorornis_alba"]
    for typed in ("Pseudavis flava", "pseudavis_flava", "01_Pseudavis_flava", "1", " PSEUDAVIS  FLAVA "):
        assert class_index(typed, names, "--compare") == 1
    assert class_index("Chlorornis alba", names, display=["P. pallida", "P. flava", "Chlorornis alba"]) == 2
    with pytest.raises(UserError, match="--compare 'Pseudavis rubra'.*'Pseudavis pallida'"):
        class_index("Pseudavis rubra", names, "--compare")
    (tmp_path / "parts.txt").write_text("# id name\n1 body\n6 wing_spot\n")
    (tmp_path / "parts.json").write_text('{"1": "body", "6": "wing_spot"}')
    for f in ("parts.txt", "parts.json"):
        parts = read_part_names(part_names=tmp_path / f)
        assert parts == {1: "body", 6: "wing_spot"}
        assert part_id("wing_spot", parts) == 6 and part_id("wing spot", parts) == 6 and part_id("3", parts) == 3
    with pytest.raises(UserError, match="--part-names FILE"):
        part_id("wing_spot", {})
    with pytest.raises(UserError, match="known: body \\(1\\), wing_spot \\(6\\)"):
        part_id("tail", {0: "background", 1: "body", 6: "wing_spot"})


def test_tiny_presets_start_from_the_embedded_backbone_and_random_weights_say_so(monkeypatch, tmp_path):
    import traitlens.studies.embedded as embedded
    from traitlens.cli.train import starting_weights
    from traitlens.engine.config import TrainConfig

    asked = []

    def fake(kind, breadth="standard", progress=True, **kw):
        asked.append((kind, breadth))
        return tmp_path / f"embedded-{kind}"

    monkeypatch.setattr(embedded, "embedded_backbone", fake)
    config, line = starting_weights(TrainConfig(backbone="tiny-vit"))
    assert asked == [("vit", "standard")] and config.weights == str(tmp_path / "embedded-vit" / "model.safetensors")
    assert "embedded pretrained backbone" in line and "\n" not in line
    config, line = starting_weights(TrainConfig(backbone="tiny-cnn", weights="embedded:tiny"))
    assert asked[-1] == ("cnn", "tiny")
    for given in (TrainConfig(backbone="tiny-vit", weights="none"), TrainConfig(backbone="resnet18")):
        config, line = starting_weights(given)
        assert config.weights is None and "random weights" in line
    with pytest.raises(UserError, match="tiny-vit and tiny-cnn"):
        starting_weights(TrainConfig(backbone="resnet18", weights="embedded"))


def test_train_classes_accept_display_names(tiny_collection):
    from traitlens.cli.train import _class_folders
    from traitlens.engine.config import TrainConfig

    names = sorted(p.name for p in (tiny_collection / "train").iterdir())
    shown = names[2].split("_", 1)[1].replace("_", " ")
    config = TrainConfig(data=str(tiny_collection))
    assert _class_folders(f"{shown}, 0", config) == [names[2], names[0]]
    with pytest.raises(UserError, match="--classes 'nope'"):
        _class_folders("nope", config)


def test_evaluate_and_backbone_embedded_write_their_results_under_out(collection, checkpoint, tmp_path):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(collection), "--out",
                 str(tmp_path / "ev"), "--seed", "3", "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert 0 <= result["top1"] <= 1 and result["split"] == "test"
    assert main(["backbone", "embedded", "--kind", "cnn", "--breadth", "tiny", "--no-progress", "--device", "auto",
                 "--out", str(tmp_path / "bb"), "--debug"]) == 0
    record = json.loads((tmp_path / "bb" / "embedded.json").read_text())
    assert Path(record["weights"]).is_file()
