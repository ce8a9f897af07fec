"""`traitlens segment --project DIR` (the app's saved Segment-tab project) and `--work-size auto`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from traitlens.app.project import DEFAULT_OPTIONS, SegmentProject
from traitlens.cli import build_parser, command_parser, main

SIDE = 48


def _specimen(rng, dx: int, dy: int):
    """A 48×48 picture and its label map: a red disc (part 1) and a one-pixel blue line (part 2, thin)."""
    image = np.empty((SIDE, SIDE, 3), np.uint8)
    image[:] = rng.integers(150, 200, size=3)
    image += rng.integers(0, 12, size=image.shape, dtype=np.uint8)
    labels = np.zeros((SIDE, SIDE), np.uint8)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    labels[(yy - 20 - dy) ** 2 + (xx - 18 - dx) ** 2 <= 64] = 1
    labels[34 + dy, 8 + dx:40 + dx] = 2
    image[labels == 1] = (200, 30, 30)
    image[labels == 2] = (20, 40, 210)
    return image, labels


@pytest.fixture()
def project(tmp_path):
    """A project saved with the app's project API: one support, five images to propagate to, 32 px work size."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i, (dx, dy) in enumerate([(0, 0), (3, -2), (-4, 1), (5, 4), (-2, -5)]):
        Image.fromarray(_specimen(rng, dx, dy)[0]).save(images / f"{i}.png")
    picture, labels = _specimen(rng, 1, 1)
    Image.fromarray(picture).save(tmp_path / "support.png")
    p = SegmentProject.open_or_new(tmp_path / "project", images=images, parts={1: "disc", 2: "line"})
    p.add_support(tmp_path / "support.png", labels)
    p.options["work_size"] = 32  # fast; a flag on the command line overrides it
    p.save()
    return p


def _labels(folder):
    return {f.relative_to(folder).as_posix(): np.asarray(Image.open(f))
            for f in sorted((folder / "labels").rglob("*.png"))}


def test_project_runs_as_its_explicit_arguments_and_as_the_app(project, tmp_path):
    folder = project.folder
    assert main(["segment", "--project", str(folder), "--device", "cpu"]) == 0
    bulk = folder / "runs" / "bulk"  # --out's default: where segment.sh writes
    from_project = _labels(bulk)
    assert len(from_project) == 5
    explicit = tmp_path / "explicit"
    assert main(project.segment_args(explicit) + ["--device", "cpu"]) == 0
    from_args = _labels(explicit)
    assert from_args.keys() == from_project.keys()
    for name, labels in from_project.items():
        assert np.array_equal(labels, from_args[name]), name
    app = SegmentProject.load(folder).propagate()  # the app's own propagation into runs/<key>
    records = SegmentProject.load(folder).results()
    assert len(records) == 5
    for record in records:
        assert np.array_equal(np.asarray(Image.open(record["labels"])), from_project[f"labels/{record['id']}"])
    assert app["done"] == 5
    # The disc is found (a check of the wiring, not of the method), the options are the project's, and the
    # project's part names reach the summary, which the explicit arguments do not carry.
    assert all((m == 1).sum() > 100 for m in from_project.values())
    recorded = json.loads((bulk / "run.json").read_text())
    assert recorded["work_size"] == 32 and recorded["local"] == 3 and "work_side" not in recorded
    assert recorded == json.loads((explicit / "run.json").read_text())
    assert json.loads((bulk / "summary.json").read_text())["trait_names"] == {"1": "disc", "2": "line"}
    assert "trait_names" not in json.loads((explicit / "summary.json").read_text())


def test_segment_sh_runs_the_project(project):
    script = (project.folder / "segment.sh").read_text()
    assert "segment --project . --out runs/bulk" in script and "--support" not in script
    env = dict(os.environ, TRAITLENS=f"{sys.executable} -m traitlens.cli", OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(project.folder / "segment.sh"), "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "segmented 5 images" in done.stdout and len(_labels(project.folder / "runs" / "bulk")) == 5


def test_flags_override_the_project_and_auto_records_the_side_chosen(project, tmp_path, capsys):
    from traitlens.segment.backends import build_propagator
    from traitlens.segment.support import load_support
    from traitlens.segment.tracking import prime

    out = tmp_path / "auto"
    assert main(["segment", "--project", str(project.folder), "--work-size", "auto", "--out", str(out),
                 "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    assert "work size auto: 144 px" in capsys.readouterr().out
    recorded = json.loads((out / "run.json").read_text())
    # The one-pixel line spans 3 cells of a 144 px grid over the 48 px support; the propagator agrees.
    assert recorded["work_size"] == "auto" and recorded["work_side"] == 144
    prop = build_propagator("labelprop", work_size="auto")
    support = project.supports[0]
    prime(prop, [load_support(project.folder / support["image"], project.folder / support["mask"])])
    assert prop.options.work_size == (144, 144)
    assert json.loads((out / "summary.json").read_text())["work_side"] == 144
    # A rerun with the project's own 32 px is another job: refused in one line naming --restart.
    assert main(["segment", "--project", str(project.folder), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "other options (work_side: 144 there, None now and 1 more)" in err and "--restart" in err
    assert err.count("\n") == 1
    # retrieve shares the option and records it the same way.
    support = [project.folder / project.supports[0][k] for k in ("image", "mask")]
    ranked = tmp_path / "ranked"
    assert main(["retrieve", "--support", str(support[0]), "--support-mask", str(support[1]), "--images",
                 str(project.images), "--trait", "2", "--work-size", "auto", "--out", str(ranked),
                 "--device", "cpu"]) == 0
    recorded = json.loads((ranked / "run.json").read_text())
    assert recorded["work_size"] == "auto" and recorded["work_side"] == 144
    # --images overrides the project's folder.
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(project.images / "0.png", one / "0.png")
    assert main(["segment", "--project", str(project.folder), "--images", str(one), "--out", str(tmp_path / "o1"),
                 "--device", "cpu"]) == 0
    assert list(_labels(tmp_path / "o1")) == ["labels/0.png"]


def test_bad_projects_and_work_sizes_are_one_line(project, tmp_path, capsys):
    def error(*argv):
        assert main(["segment", *argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "no project.json" in error("--project", str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(project.folder, broken)
    (broken / "supports" / "1.mask.png").unlink()
    assert "support 1's mask supports/1.mask.png is missing" in error("--project", str(broken))
    assert "drop --support" in error("--project", str(project.folder), "--support", str(tmp_path / "support.png"),
                                     "--support-mask", str(broken / "supports" / "1.png"))
    data = json.loads((broken / "project.json").read_text())
    (broken / "project.json").write_text(json.dumps({**data, "images": None, "options": {"work_size": "big"}}))
    shutil.copy(project.folder / "supports" / "1.mask.png", broken / "supports" / "1.mask.png")
    assert "no image folder; give --images" in error("--project", str(broken))
    assert "option work_size is 'big'" in error("--project", str(broken), "--images", str(project.images))
    (broken / "project.json").write_text(json.dumps({**data, "options": {"order": "sideways"}}))
    assert "option order is 'sideways', not one of pairwise, chain, similarity" in error("--project", str(broken))
    assert "--work-size 8: use at least 16" in error("--project", str(project.folder), "--work-size", "8",
                                                     "--out", str(tmp_path / "o"))
    with pytest.raises(SystemExit):  # argparse's own one line, with the usage
        main(["segment", "--project", str(project.folder), "--work-size", "big"])
    assert "--work-size: 'big': give a side in pixels (at least 16) or 'auto'" in capsys.readouterr().err


def test_segment_defaults_are_a_projects_and_retrieves():
    """Without --project, segment's unset options are a new project's defaults, which are retrieve's too."""
    parser = build_parser()
    retrieve = command_parser(parser, ["retrieve"])
    for key, value in DEFAULT_OPTIONS.items():
        if retrieve.get_default(key) is not None:
            assert retrieve.get_default(key) == value, key
    from traitlens.cli.segment import PROJECT_OPTIONS, _job_options

    args = parser.parse_args(["segment", "--support", "s.png", "--support-mask", "m.png"])
    assert all(getattr(args, k) is None for k in PROJECT_OPTIONS)
    _job_options(args)
    assert {k: getattr(args, k) for k in PROJECT_OPTIONS} == DEFAULT_OPTIONS
    assert parser.parse_args(["segment", "finetune", "--out", "x"]).work_size == 128
    assert parser.parse_args(["retrieve", "--out", "x", "--trait", "1", "--work-size", "AUTO"]).work_size == "auto"
