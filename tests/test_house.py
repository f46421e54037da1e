"""House rules of the source: small modules and short functions, checked with ``ast`` (no import, no run)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Most lines of a module.
MAX_MODULE_LINES = 500
#: Most lines a function's body may span, from its first statement (the docstring too) to its end.
MAX_BODY_LINES = 60


def offenders(package: Path) -> list[str]:
    """Every module of ``package`` over :data:`MAX_MODULE_LINES` lines and every function (method, nested
    function) whose body spans more than :data:`MAX_BODY_LINES` lines, named for a person to find."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(package.parent).as_posix()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                span = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
                if span > MAX_BODY_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}(): a body of {span} lines")
    return found


@pytest.mark.parametrize("package", ["pipeline", "web", "dramatiq_kafka_broker"])
def test_modules_and_functions_stay_small(package):
    assert offenders(ROOT / package) == []


def _function(name: str, statements: int) -> str:
    body = "".join(f"    x{n} = {n}\n" for n in range(statements))
    return f"def {name}():\n{body}"


def test_the_rule_names_a_long_function_and_a_long_module_and_nothing_else(tmp_path):
    # Given a package with a function of a body one line too long, one just short enough, and a long module
    package = tmp_path / "package"
    (package / "inner").mkdir(parents=True)
    (package / "short.py").write_text(_function("fits", MAX_BODY_LINES))
    method = textwrap.indent(_function("too_long", MAX_BODY_LINES + 1), "    ")
    (package / "inner" / "long.py").write_text(f"class Holder:\n    @staticmethod\n{method}")
    (package / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    # When
    found = offenders(package)
    # Then
    assert found == [
        f"package/big.py: {MAX_MODULE_LINES + 1} lines",
        f"package/inner/long.py:3 too_long(): a body of {MAX_BODY_LINES + 1} lines",
    ]
