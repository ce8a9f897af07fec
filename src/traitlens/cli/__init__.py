"""The ``traitlens`` command: a thin layer over the Python API.

Every area of the package has its own module here (``cli/data.py``, ``cli/train.py``, ...) with a
``register(subparsers)`` function that adds its sub-commands; each sub-command's handler calls the
Python API and nothing else. Errors a user can fix (:class:`traitlens.errors.UserError`) are printed
as one line with exit code 2; anything else as one line with exit code 1, and a traceback only with
``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import List, Optional

from traitlens import __version__
from traitlens.cli.common import add_debug
from traitlens.errors import UserError

# Areas in the order they appear in `traitlens --help`. A module that is missing is skipped, so a
# partial checkout still runs.
AREAS = [
    "data", "backbones", "train", "imports", "explain", "traits", "segment", "atlas", "calibrate", "compbench",
    "demo", "app",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traitlens",
        description="Find, explain, segment and compare the traits that tell visually similar species apart.",
    )
    parser.add_argument("--version", action="version", version=f"traitlens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in AREAS:
        try:
            module = importlib.import_module(f"traitlens.cli.{area}")
        except ModuleNotFoundError as exc:
            if exc.name == f"traitlens.cli.{area}":
                continue
            raise
        module.register(sub)
    add_debug(parser)  # after every area registered: --debug is accepted after any sub-command too
    return parser


def _actions(parser: argparse.ArgumentParser):
    """Every argparse action of ``parser`` and of its sub-command parsers."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def flag_for(option: Optional[str], parser: argparse.ArgumentParser, argv: List[str]) -> Optional[str]:
    """The flag the user gave for the library parameter ``option`` that an error is about (None if not given).

    Library errors describe the problem in the API's terms (``UserError(..., option="classes")``); the CLI names
    the flag, e.g. ``--classes``, or ``--set`` for ``overrides``.
    """
    if not option:
        return None
    for action in _actions(parser):
        if action.dest != option:
            continue
        for flag in action.option_strings:
            if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
                return flag
    return None


def non_finite_option(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: List[str]) -> Optional[str]:
    """The first option given as NaN or inf (``--lr inf``, ``--alpha nan``), named by its flag, or None.

    argparse's ``type=float`` accepts "nan" and "inf"; no traitlens option means either, so every command refuses
    them here, before its handler runs (range checks stay with each command and the config layer)."""
    import math

    for dest, value in sorted(vars(args).items()):
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return flag_for(dest, parser, argv) or f"--{dest.replace('_', '-')}"
    return None


def command_parser(parser: argparse.ArgumentParser, argv: List[str]) -> argparse.ArgumentParser:
    """The parser of the (sub-)command ``argv`` runs (``traitlens segment finetune ...`` → its parser)."""
    current = parser
    for arg in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or arg not in subs[0].choices:
            if arg.startswith("-"):
                continue
            break
        current = subs[0].choices[arg]
    return current


def cli_terms(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command's terms: ``traits=...`` (a Python keyword) becomes ``--traits FILE``
    when the command has that option; other words are left as they are."""
    flags = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in flags:
            long = [f for f in action.option_strings if f.startswith("--")] or action.option_strings
            meta = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
            flags[action.dest] = long[0] + (f" {meta}" if meta else "")

    def swap(match):
        return flags.get(match.group(1), match.group(0))

    return re.sub(r"\b([a-z_]+)=(?:\.\.\.|…)", swap, message)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A group command without its sub-command prints its own help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 0
    bad = non_finite_option(args, parser, argv)
    if bad is not None:
        print(f"traitlens: error: {bad} must be a finite number (not NaN or infinity)", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
    except UserError as exc:
        if debug:
            raise
        command = command_parser(parser, argv)
        option = getattr(exc, "option", None)
        flag = flag_for(option, parser, argv)
        hint = f" (check {flag})" if flag else ""
        if option and not flag:  # not given on the line: still name the flag, never the Python keyword
            named = flag_for(option, command, [f for a in command._actions for f in a.option_strings])
            hint = f" (see {named})" if named and named not in str(exc) else ""
        print(f"traitlens: error: {cli_terms(str(exc), command)}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("traitlens: interrupted; finished work is saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        print(f"traitlens: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
