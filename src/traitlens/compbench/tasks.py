"""The CompBench task registry: 16 tasks, 8 comparison dimensions, and how each task asks its question.

Every task is either *binary* (which of the two images: Left or Right, plus Same for counting) or
*choice* (pick one of a list of options). Binary tasks differ in how they name the two sides: the
benchmark's runs used Left/Right for most tasks, First/Second for some, and Frame 1/Frame 2 for the
SoccerNet clips; the scorer accepts all three for every task, the prompt asks for one.

Custom tasks (a benchmark built with ``compbench build``) are not in the registry; :func:`custom_task`
makes a spec for them from the dimension their records carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from traitlens.errors import UserError

DIMENSIONS: Tuple[str, ...] = (
    "attribute", "existence", "state", "emotion", "temporality", "spatiality", "quantity", "quality",
)

#: How the two sides of a pair are named in a prompt (and in an oracle's or always-left reply).
WORDINGS: Dict[str, Tuple[str, str]] = {
    "left_right": ("Left", "Right"),
    "first_second": ("First", "Second"),
    "frame": ("Frame 1", "Frame 2"),
}


@dataclass(frozen=True)
class TaskSpec:
    """One CompBench task: its dimension, its answer format and how its prompt is worded.

    ``kind`` is ``"binary"`` (answers Left/Right[/Same]) or ``"choice"`` (answer is one of ``options``).
    ``none_option``: the choice prompt offers "None" (no obvious difference) next to the options.
    ``merged``: the benchmark ships the pair already joined into one image (Q-Bench2).
    ``fixed_question``: the question every record of the task shares (CompCars stores none).
    """

    name: str
    dimension: str
    source: str
    kind: str = "binary"
    wording: str = "left_right"
    same_allowed: bool = False
    none_option: bool = False
    merged: bool = False
    fixed_question: Optional[str] = None
    aliases: Tuple[str, ...] = field(default=())

    @property
    def sides(self) -> Tuple[str, str]:
        """The words for the first and second image in this task's prompt (``("Left", "Right")``)."""
        return WORDINGS[self.wording]

    def reply_for(self, side: str) -> str:
        """The reply this task's prompt asks for when the answer is ``side`` (Left, Right or Same)."""
        if side == "Left":
            return self.sides[0]
        if side == "Right":
            return self.sides[1]
        return side

    def choice_options(self, options: Sequence[str]) -> List[str]:
        """The options a choice reply may take: the record's options, plus "None" when the task offers it."""
        opts = [o for o in options]
        if self.none_option and not any(o.strip().lower() == "none" for o in opts):
            opts = ["None"] + opts
        return opts

    def prompt(self, question: str, options: Optional[Sequence[str]] = None, action: Optional[str] = None) -> str:
        """The text sent to a model with the two images (or the one merged image)."""
        if self.kind == "choice":
            return _choice_prompt(self, question, options or [])
        if self.wording == "frame":
            return _frame_prompt(question, action)
        first, second = self.sides
        text = (f"{question.strip()} Answer {first} if it is the first image and {second} if it is the "
                f"second image.")
        if self.same_allowed:
            text += " If both images are the same in this respect, answer Same."
            return text + f" Reply with only {first}, {second} or Same, without any other words or punctuation."
        return text + f" Reply with only {first} or {second}, without any other words or punctuation."


def _frame_prompt(question: str, action: Optional[str]) -> str:
    if question:
        lead = question.strip()
    else:
        lead = f"These are two frames related to {action or 'an action'} in a soccer match. Which frame happens first?"
    return lead + " Reply with only Frame 1 or Frame 2, without explanation or any other words."


def _choice_prompt(spec: TaskSpec, question: str, options: Sequence[str]) -> str:
    opts = spec.choice_options(options)
    if question and "options:" in question.lower():
        return question.strip()  # the question already lists its options (Q-Bench2)
    lead = question.strip() if question else (
        "What is the most obvious difference between the two images? Choose from the following options."
    )
    if spec.none_option:
        lead += " If there is no obvious difference, choose None."
    return f"{lead} Options: {', '.join(opts)}. Reply with only one of the options, without any other words."


_COMPCARS_QUESTION = ("Based on these images, which car is newer in terms of its model year or release year? "
                      "Newer means the year the car was made or released, not its condition.")

TASKS: Dict[str, TaskSpec] = {t.name: t for t in [
    # attribute: which of the two shows more of a visual attribute
    TaskSpec("st_attribute", "attribute", "MIT-States", aliases=("mit_states_attribute",)),
    TaskSpec("fashionpedia", "attribute", "Fashionpedia", aliases=("fashion",)),
    TaskSpec("vaw_attribute", "attribute", "VAW"),
    TaskSpec("cub", "attribute", "CUB-200-2011", wording="first_second", aliases=("cub_200_2011", "birds")),
    TaskSpec("wildfish", "attribute", "Wildfish++", aliases=("wildfish_label",)),
    # existence: what changed between two nearly identical images
    TaskSpec("magicbrush", "existence", "MagicBrush", kind="choice", none_option=True,
             aliases=("mb", "magic_brush")),
    TaskSpec("spot_the_diff", "existence", "Spot-the-diff", kind="choice", none_option=True,
             aliases=("spot_diff", "spot_difference", "spotthediff", "surveillance")),
    # state: which object is further along a state change
    TaskSpec("st_state", "state", "MIT-States", aliases=("mit_states_state",)),
    TaskSpec("vaw_state", "state", "VAW"),
    # emotion
    TaskSpec("celeba", "emotion", "CelebA"),
    TaskSpec("fer2013", "emotion", "FER-2013", aliases=("fer", "fer_2013")),
    # temporality
    TaskSpec("soccernet", "temporality", "SoccerNet", wording="frame", aliases=("soccer", "soccer_net")),
    TaskSpec("compcars", "temporality", "CompCars", fixed_question=_COMPCARS_QUESTION,
             aliases=("car", "cars", "comp_cars")),
    # spatiality
    TaskSpec("nyu_depth", "spatiality", "NYU-Depth V2", wording="first_second",
             aliases=("depth", "nyu_depth_v2", "nyu")),
    # quantity: the one task where Same is a valid answer
    TaskSpec("vqav2", "quantity", "VQAv2", same_allowed=True, aliases=("vqa", "vqa_2014", "counting")),
    # quality: Q-Bench2 ships each pair merged into one image, with its own options
    TaskSpec("qbench2", "quality", "Q-Bench2", kind="choice", merged=True, aliases=("q_bench2", "qbench")),
]}

#: Sources whose files mix two tasks; a record's ``type`` field says which (``State`` or an attribute type).
SPLIT_SOURCES: Dict[str, Tuple[str, str]] = {
    "st": ("st_attribute", "st_state"), "mit_states": ("st_attribute", "st_state"),
    "vaw": ("vaw_attribute", "vaw_state"),
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


_ALIASES: Dict[str, str] = {}
for _t in TASKS.values():
    _ALIASES[_key(_t.name)] = _t.name
    for _a in _t.aliases:
        _ALIASES[_key(_a)] = _t.name


def lookup(name: str) -> Optional[str]:
    """The registry name for ``name`` or one of its aliases (case and ``-``/``_`` ignored), else None."""
    return _ALIASES.get(_key(name))


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a registered task (aliases accepted); :class:`UserError` otherwise."""
    found = lookup(name)
    if found is None:
        raise UserError(f"unknown CompBench task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[found]


#: What a task name may be: it becomes file names and YAML keys of an lmms-eval export.
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_task_name(name: str) -> str:
    """``name`` when it is a plain task name (letters, digits, ``_ . -``, at most 64), else :class:`UserError`."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise UserError(f"task name {str(name)[:80]!r} is not a plain name; use letters, digits, '_', '.' "
                        f"or '-' (at most 64 characters)", option="task")
    return name


def custom_task(name: str, dimension: str = "attribute", same_allowed: bool = False,
                wording: str = "left_right", kind: str = "binary") -> TaskSpec:
    """A spec for a task outside the registry (a benchmark built from your own collection)."""
    check_task_name(name)
    if dimension not in DIMENSIONS:
        raise UserError(f"task {name!r} has unknown dimension {dimension!r}; use one of: {', '.join(DIMENSIONS)}")
    if wording not in WORDINGS:
        raise UserError(f"task {name!r} has unknown wording {wording!r}; use one of: {', '.join(WORDINGS)}")
    return TaskSpec(name=name, dimension=dimension, source="custom", kind=kind, wording=wording,
                    same_allowed=same_allowed)


def with_wording(spec: TaskSpec, wording: str) -> TaskSpec:
    """The same task asking for another pair of side names (e.g. ``"left_right"`` for every task)."""
    if wording not in WORDINGS:
        raise UserError(f"unknown wording {wording!r}; use one of: {', '.join(WORDINGS)}")
    return replace(spec, wording=wording)


def select_tasks(spec: str | Iterable[str]) -> List[TaskSpec]:
    """Parse ``"all"`` or a comma-separated list of task names (aliases accepted) into specs."""
    names = [s for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise UserError("no tasks given: name all, or a comma-separated list such as cub,vqav2", option="tasks")
    if any(n.lower() == "all" for n in names):
        return list(TASKS.values())
    out: List[TaskSpec] = []
    for n in names:
        t = get_task(n)
        if t not in out:
            out.append(t)
    return out


def tasks_by_dimension() -> Dict[str, List[str]]:
    """``{dimension: [task names]}`` in the benchmark's order."""
    out: Dict[str, List[str]] = {d: [] for d in DIMENSIONS}
    for t in TASKS.values():
        out[t.dimension].append(t.name)
    return out
