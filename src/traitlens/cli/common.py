"""Options shared by every sub-command, so they are spelled and behave the same everywhere."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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
