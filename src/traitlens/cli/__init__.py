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
import sys
from typing import List, Optional

from traitlens import __version__
from traitlens.errors import UserError

# Areas in the order they appear in `traitlens --help`. A module that is missing is skipped, so a
# partial checkout still runs.
AREAS = [
    "data", "backbones", "train", "explain", "traits", "segment", "atlas", "calibrate", "compbench", "demo",
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A group command without its sub-command prints its own help.
        (getattr(args, "_parser", None) or parser).print_help()
        return 0
    try:
        code = args.func(args)
    except UserError as exc:
        if debug:
            raise
        flag = flag_for(getattr(exc, "option", None), parser, argv)
        print(f"traitlens: error: {exc}" + (f" (check {flag})" if flag else ""), file=sys.stderr)
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
