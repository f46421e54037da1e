"""Every file of ``tests/`` and ``bench/`` is one module, under one name: its path's (``tests.livestack``,
``tests.broker.conftest``, ``bench.pipeline``).

``tests/`` is a package, so pytest imports its conftest and test files as ``tests.…`` and puts the
repository's root on ``sys.path``, not ``tests/`` itself.  A bare ``from livestack import …`` (or
``conftest``, ``web_support``, ``faults.load``...) would either fail or, wherever ``tests/`` is on the path,
load a second copy of the file: a second harness with its own constants, a second fault-figures list that
the summary never prints.  Checked in the source with ``ast`` (no import, also inside functions) and on
what this session has loaded.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
#: The folders whose Python files must be imported by their path's name.
SOURCES = (TESTS, ROOT / "bench")


def bare_names(tests: Path) -> set[str]:
    """The names that a bare import of a module or package of ``tests`` would use."""
    modules = {path.stem for path in tests.glob("*.py") if path.stem != "__init__"}
    packages = {path.name for path in tests.iterdir() if (path / "__init__.py").is_file()}
    return modules | packages


def bare_imports(path: Path, names: set[str]) -> list[str]:
    """``line: statement`` of each import in ``path`` of one of ``names`` without its ``tests.``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if any(module.split(".")[0] in names for module in modules):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def module_name(path: Path) -> str:
    """The one name of the file at ``path`` (under the repository): ``tests/faults/load.py`` is
    ``tests.faults.load``, ``tests/e2e/__init__.py`` is ``tests.e2e``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_file_imports_a_module_of_the_tests_by_a_bare_name():
    names = bare_names(TESTS)
    assert {"livestack", "conftest", "web_support", "broker", "faults"} <= names  # (the rule sees them)
    offenders = [
        f"{path.relative_to(ROOT)}:{found}"
        for folder in SOURCES
        for path in sorted(folder.rglob("*.py"))
        if "artifacts" not in path.relative_to(folder).parts
        for found in bare_imports(path, names)
    ]
    assert offenders == [], "import these as tests.<name>:\n" + "\n".join(offenders)


def test_the_rule_finds_a_bare_import_also_inside_a_function(tmp_path):
    # Given a tests folder with a harness and a package, and a file that imports them both ways
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "__init__.py").touch()
    (tmp_path / "livestack.py").touch()
    user = tmp_path / "test_user.py"
    user.write_text(
        "import livestack\n"
        "from tests.livestack import spawn\n"
        "from pipeline.contract import OUTCOMES\n"
        "def f():\n"
        "    from faults.load import Load\n"
        "    from .conftest import x\n"
    )
    # When
    names = bare_names(tmp_path)
    found = bare_imports(user, names)
    # Then the bare ones are found, and only they
    assert names == {"livestack", "test_user", "faults"}
    assert found == ["1: import livestack", "5: from faults.load import Load"]


def test_each_file_of_the_tests_loaded_in_this_session_is_one_module_named_by_its_path():
    loaded: dict[Path, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if any(path.is_relative_to(folder) for folder in SOURCES):
            loaded.setdefault(path, []).append(name)
    assert Path(__file__).resolve() in loaded  # (the check sees this very module)
    wrong = {
        str(path.relative_to(ROOT)): sorted(names)
        for path, names in loaded.items()
        if names != [module_name(path)]
    }
    assert wrong == {}, "files loaded as more than one module, or under another name than their path's"
