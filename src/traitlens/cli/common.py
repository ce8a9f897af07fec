"""Options shared by every sub-command, so they are spelled and behave the same everywhere.

``add_common`` gives a command ``--out DIR``, ``--device``, ``--seed N`` and ``--json FILE`` (a command leaves out
only those that mean nothing to it: ``data info`` writes no folder and runs no model); ``--debug`` is added to
every command by :func:`traitlens.cli.build_parser`, so it works before or after the sub-command. Bulk commands
add ``--restart`` with :func:`add_restart`. The name resolvers here let a user type what the outputs show:
``"Pseudavis flava"`` for the class folder ``01_Pseudavis_flava``, ``wing_spot`` for part id 6.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from traitlens.errors import UserError


def add_group(sub, name: str, help: str) -> argparse._SubParsersAction:
    """A command with sub-commands of its own (``traitlens data synth``); bare, it prints its help."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(func=None, _parser=parser)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def add_common(parser: argparse.ArgumentParser, out: bool = True, device: bool = True, seed: bool = True,
               json_out: bool = True, out_required: bool = True) -> None:
    """Add the options every command shares: --out, --device, --seed, --json."""
    if out:
        parser.add_argument("--out", type=Path, required=out_required, help="output folder")
    if device:
        parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                            help="where to run (auto: cuda when available)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if json_out:
        parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                            help="also write the command's result as JSON to FILE")


def add_restart(parser: argparse.ArgumentParser) -> None:
    """``--restart`` for a bulk command: a folder made with other options is replaced instead of refused."""
    parser.add_argument("--restart", action="store_true",
                        help="replace the results already in --out (a rerun with the same options resumes; with "
                             "other options it is refused unless --restart)")


def add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and every sub-command below it (so it is accepted anywhere on the line)."""
    if not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show full tracebacks on errors")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug(sub)


def write_json(path: Path | None, payload: Any) -> None:
    """Write ``payload`` as JSON when ``--json FILE`` was given."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------- names a user types
def _fold(name: str) -> str:
    from traitlens.runs.inputs import fold_name

    return fold_name(name)


def display_name(folder: str) -> str:
    """``01_Pseudavis_flava`` → ``Pseudavis flava`` (:func:`traitlens.runs.inputs.display_name`)."""
    from traitlens.runs.inputs import display_name as shown

    return shown(folder)


def class_index(text: str, names: Sequence[str], flag: str = "--class", display: Sequence[str] = ()) -> int:
    """The class ``text`` names: a folder name, a display name (``"Pseudavis flava"``, from ``display`` or the
    folder without its number), or an index; case and ``_``/space do not matter. UserError naming ``flag``."""
    names = list(names)
    text = str(text).strip()
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    wanted = _fold(text)
    display = list(display) if display else [display_name(n) for n in names]
    for candidates in (names, display):
        hits = [i for i, n in enumerate(candidates) if _fold(n) == wanted]
        if len(hits) == 1:
            return hits[0]
    examples = ", ".join(repr(d) for d in display[:3])
    raise UserError(f"{flag} {text!r}: not a class of the model ({len(names)} classes, e.g. {examples}; a folder "
                    "name, a display name or an index)")


def class_names_for(texts: Sequence[str], names: Sequence[str], flag: str, display: Sequence[str] = ()) -> List[str]:
    """The model's own class names for what the user typed (see :func:`class_index`)."""
    return [list(names)[class_index(t, names, flag, display)] for t in texts]


def read_part_names(traits: Optional[Path] = None, part_names: Optional[Path] = None) -> Dict[int, str]:
    """``{part id: name}`` from a ``traits.json`` (``--traits``) or a ``--part-names`` file: JSON
    (``{"6": "wing_spot"}`` or ``["background", "body", ...]``) or text lines ``ID NAME``. Empty when neither."""
    if part_names is not None:
        from traitlens.atlas.parts import read_part_names as read_file  # the one part-names reader

        return read_file(part_names)
    if traits is not None:
        from traitlens.data.traits import load_traits

        table = load_traits(traits)
        return {int(p.id): p.name for p in table.parts}
    return {}


def part_id(text: str, names: Mapping[int, str], flag: str = "--trait") -> int:
    """The part id ``text`` names: a number, or a part name from ``names`` (``wing_spot``, ``wing spot``)."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    hits = [i for i, n in names.items() if _fold(n) == _fold(text)]
    if len(hits) == 1:
        return hits[0]
    if not names:
        raise UserError(f"{flag} {text!r}: a part name needs --traits FILE (traits.json) or --part-names FILE; "
                        "or give the part id (a number)")
    known = ", ".join(f"{n} ({i})" for i, n in sorted(names.items()) if i > 0)
    raise UserError(f"{flag} {text!r}: unknown part; known: {known}")


def checkpoint_options(path) -> dict:
    """What a checkpoint contributes to a bulk run's recorded options: its sidecar's digest (a retrained or other
    model in the same place is another run) and its weights' size."""
    from traitlens.engine.checkpoint import resolve
    from traitlens.runs.store import file_digest

    weights, sidecar = resolve(path)
    return {"checkpoint": file_digest(sidecar), "weights_bytes": weights.stat().st_size}


def add_crop(parser: argparse.ArgumentParser) -> None:
    """``--crop``: how a photo of another shape becomes the model's square input (timm's eval ``crop_mode``)."""
    parser.add_argument("--crop", default="auto", choices=["auto", "center", "border", "squash"],
                        help="photos of another shape: center (shorter side to the input, centre crop; the "
                             "default, as timm), border (longer side, pad: nothing is cut away), squash (aspect "
                             "ratio not kept); auto: the backbone's data config")


def with_crop(transform, crop: str):
    """The eval transform with ``--crop`` applied (``auto``: unchanged)."""
    if crop == "auto" or not hasattr(transform, "crop_mode"):
        return transform
    import copy

    changed = copy.copy(transform)
    changed.crop_mode = crop
    return changed
