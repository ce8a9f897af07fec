"""Reply parsing edge cases, most of them found in the published raw outputs."""

import json

import pytest

from traitlens.compbench.records import find_missing_images, load_records, resolve_image
from traitlens.compbench.scoring import (INVALID, UNPARSEABLE, normalize_option, parse_binary, parse_choice,
                                         score_reply, split_val_test, summarize)
from traitlens.compbench.tasks import TASKS, DIMENSIONS, get_task, select_tasks, tasks_by_dimension
from traitlens.errors import UserError


@pytest.mark.parametrize("reply,side", [
    (" Left", "Left"), ("Right", "Right"), (" Right.", "Right"),      # Gemini's leading space, trailing dot
    (" First", "Left"), (" Second", "Right"),                          # First/Second wording
    ("Left<|vq_13946|>", "Left"),                                       # a stray image token (depth, GPT)
    ("Frame 1", "Left"), ("Frame 2", "Right"), ("frame 2.", "Right"),
    ("The first image.", "Left"), ("the second image", "Right"),
    ("Same", "Same"), ("They are the same.", "Same"),
])
def test_binary_replies(reply, side):
    assert parse_binary(reply) == side


@pytest.mark.parametrize("reply", [
    "GPT error", "Gemini Error", "Error", "wrong path",                 # errors stored as replies
    "Left or Right", "The left one, not the right one",                # naming both sides
    "", "   ", "I cannot tell", None, {"error": {"code": "content_policy_violation"}},
    "Frame 12",                                                         # not a side
])
def test_unparseable_replies(reply):
    assert parse_binary(reply) is None
    s = score_reply(TASKS["cub"], "Left", reply)
    assert s.status == UNPARSEABLE and not s.correct


def test_both_sides_never_resolved_by_check_order():
    # the original scripts returned Right (or Left) here depending on which test came first
    for reply in ("Right, not Left", "Left, not Right", "Second rather than first"):
        assert score_reply(TASKS["celeba"], "Right", reply).status == UNPARSEABLE


def test_same_is_read_for_every_task_and_wrong_where_the_truth_is_a_side():
    assert score_reply(TASKS["vqav2"], "Same", "Same").correct
    assert score_reply(TASKS["celeba"], "Left", "Same").status == "wrong"


@pytest.mark.parametrize("text,norm", [
    (" flower", "flower"), ("Flower", "flower"), ("Less real.", "less real"), ("window.", "window"),
    ("The sky in the first image", "sky in first image"), (" Yes.", "yes"), ("An apple", "apple"),
    ("t-shirt", "tshirt"), ("None", "none"),
])
def test_option_normalisation(text, norm):
    assert normalize_option(text) == norm


def test_choice_scoring():
    mb = TASKS["magicbrush"]
    opts = ["flower", "cabinet", "window."]
    assert score_reply(mb, "window", " Window", opts).correct            # truth/option with trailing dot
    assert score_reply(mb, "flower", "None", opts).status == "wrong"      # None is a valid option, here wrong
    assert score_reply(mb, "flower", "Green vase", opts).status == INVALID
    assert score_reply(mb, "", "flower", opts).status == "wrong"          # empty truth can never be matched
    qb = TASKS["qbench2"]
    opts = ["the sky in the first image", "the ground in the first image"]
    assert score_reply(qb, "the sky in the first image", "The sky in the first image", opts).correct
    assert score_reply(qb, "the sky in the first image", "None", opts).status == INVALID  # no None option
    assert parse_choice("Overexposure", ["Motion blur", "Overexposure"]) == "overexposure"


def test_registry_has_16_tasks_in_8_dimensions():
    assert len(TASKS) == 16
    dims = tasks_by_dimension()
    assert tuple(dims) == DIMENSIONS and all(dims.values())
    assert {n for n, t in TASKS.items() if t.same_allowed} == {"vqav2"}
    assert {n for n, t in TASKS.items() if t.kind == "choice"} == {"magicbrush", "spot_the_diff", "qbench2"}
    assert get_task("mb").name == "magicbrush" and get_task("celebA").name == "celeba"
    assert [t.name for t in select_tasks("cub, depth")] == ["cub", "nyu_depth"]
    assert len(select_tasks("all")) == 16
    with pytest.raises(UserError, match="unknown CompBench task 'nope'"):
        select_tasks("cub,nope")


def test_prompts():
    p = TASKS["vqav2"].prompt("Which image has more dogs?")
    assert "Same" in p and "Left" in p and "Right" in p
    assert "Same" not in TASKS["celeba"].prompt("Which person smiles more?")
    assert "First" in TASKS["cub"].prompt("Which bird has more blue on its wings?")
    assert "Frame 1" in TASKS["soccernet"].prompt("", action="Corner")
    assert "Corner" in TASKS["soccernet"].prompt("", action="Corner")
    p = TASKS["magicbrush"].prompt("", options=["hat", "dog"])
    assert "Options: None, hat, dog" in p and "choose None" in p
    q = "How real is the second image? Options: Similar, More real. Please only return one."
    assert TASKS["qbench2"].prompt(q, options=["Similar", "More real"]) == q


def test_summary_and_split():
    scored = [score_reply(TASKS["cub"], "Left", r, id=str(i)) for i, r in enumerate(["Left", "Right", "??"])]
    scored += [score_reply(TASKS["celeba"], "Right", "Right", id="c")]
    s = summarize(scored)
    assert s.tasks["cub"].accuracy == pytest.approx(1 / 3) and s.tasks["cub"].unparseable == 1
    assert s.dimensions["attribute"].n == 3 and s.dimensions["emotion"].accuracy == 1.0
    assert s.macro == pytest.approx((1 / 3 + 1) / 2)
    val, test = split_val_test(range(10), seed=30)
    assert len(test) == 8 and sorted(val + test) == list(range(10))
    assert split_val_test(range(10), seed=30) == (val, test)


def test_loader_schemas(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    for n in ("1.png", "2.png", "m.png"):
        (tmp_path / "img" / "a" / n).write_bytes(b"x")
    data = tmp_path / "bench"
    data.mkdir()
    (data / "cub.json").write_text(json.dumps([
        {"image_1": "img\\a\\1.png", "image_2": "img/a/2.png", "question": "Which?", "answer": "Left"},
        {}, {"image_1": "img/a/1.png", "image_2": "img/a/gone.png", "question": "Which?", "answer": "Right"},
        {"image_1": "img/a/1.png", "image_2": "img/a/2.png", "question": "Which?", "answer": "maybe"},
    ]))
    (data / "soccer.jsonl").write_text(json.dumps(
        {"left": "img/a/1.png", "right": "img/a/2.png", "action": "Corner", "answer": "Right"}) + "\n\n")
    (data / "mb.json").write_text(json.dumps([{
        "path_input": "img/a/1.png", "path_output": "img/a/2.png", "Modified_option": "hat, dog,cat",
        "Answeer": "dog"}]))
    (data / "qbench2.json").write_text(json.dumps([{
        "image": "img/a/m.png", "question": "Q? Options: A, B.", "option": ["A", "B"], "answer": "A"}]))
    (data / "car_sorted.json").write_text(json.dumps([
        {"image_1": "img/a/1.png", "image_2": "img/a/2.png", "answer": "Right"}]))
    (data / "VAW_0_3133.json").write_text(json.dumps([
        {"image_1": "img/a/1.png", "image_2": "img/a/2.png", "question": "Q", "answer": "Left", "type": "State"},
        {"image_1": "img/a/1.png", "image_2": "img/a/2.png", "question": "Q", "answer": "Left", "type": "Color"}]))
    (data / "spot_diff.json").write_text(json.dumps([{
        "image_1": "img/a/1.png", "image_2": "img/a/2.png", "options": "car, person", "answer": "person"}]))

    from traitlens.compbench.records import load_benchmark
    recs, rep = load_benchmark(data)
    by_task = {}
    for r in recs:
        by_task.setdefault(r.task, []).append(r)
    assert rep.empty == 1 and rep.bad_answer == 1
    assert sorted(by_task) == ["compcars", "cub", "magicbrush", "qbench2", "soccernet", "spot_the_diff",
                               "vaw_attribute", "vaw_state"]
    assert by_task["cub"][0].image_1 == "img/a/1.png"
    assert by_task["soccernet"][0].action == "Corner" and by_task["soccernet"][0].answer == "Right"
    assert by_task["magicbrush"][0].options == ["hat", "dog", "cat"]
    mb = by_task["magicbrush"][0]
    assert "Options: None, hat, dog, cat." in TASKS["magicbrush"].prompt(mb.question, mb.options)
    assert by_task["qbench2"][0].images == ["img/a/m.png"] and by_task["qbench2"][0].kind == "choice"
    assert "newer" in by_task["compcars"][0].question
    assert by_task["spot_the_diff"][0].options == ["car", "person"]
    assert len({r.id for r in recs}) == len(recs)
    assert resolve_image(tmp_path, "img\\a\\1.png") == tmp_path / "img" / "a" / "1.png"
    assert resolve_image(tmp_path / "img", "img/a/1.png") == tmp_path / "img" / "a" / "1.png"  # root is the dataset folder
    missing = find_missing_images(recs, tmp_path)
    assert list(missing.values()) == [["img/a/gone.png"]]
    # ids are stable across loads
    assert [r.id for r in load_benchmark(data)[0]] == [r.id for r in recs]


def test_loader_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_records(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_records(tmp_path / "x.json")
    (tmp_path / "mystery.json").write_text(json.dumps([{"image_1": "a", "image_2": "b", "answer": "Left"}]))
    with pytest.raises(UserError, match="cannot tell which CompBench task"):
        load_records(tmp_path / "mystery.json")
