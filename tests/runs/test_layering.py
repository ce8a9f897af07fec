"""Bulk running and drawing stay out of the method packages: explain/, segment/ and models/ import neither
the runner, the report, the CLI nor the studies (at module level or inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import traitlens

PACKAGE = Path(traitlens.__file__).parent
FORBIDDEN = ("traitlens.runs", "traitlens.report", "traitlens.cli", "traitlens.studies")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("area", ["explain", "segment", "models"])
def test_method_packages_do_not_import_runs_report_cli_or_studies(area):
    files = sorted((PACKAGE / area).rglob("*.py"))
    assert files
    bad = [f"{f.relative_to(PACKAGE)}: {name}" for f in files for name in _imports(f)
           if any(name == m or name.startswith(m + ".") for m in FORBIDDEN)]
    assert bad == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from traitlens.report.overlay import overlay\n    from traitlens import report\n")
    assert list(_imports(f)) == ["traitlens.report.overlay", "traitlens.report.overlay.overlay", "traitlens",
                                 "traitlens.report"]
