"""The import contract: ``router/`` (what serves) never imports ``training/`` (what builds models).

Every import is checked, including those inside functions, since a lazy import breaks a serving install as surely
as a top-level one, only later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTER = Path(__file__).resolve().parent.parent / "router"
FORBIDDEN = "training"


def forbidden_imports(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``training`` or ``training.*`` in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == FORBIDDEN or n.startswith(FORBIDDEN + ".")]
    return found


def test_the_scanner_finds_every_form_of_import() -> None:
    source = (
        "import os\n"
        "import training.x\n"
        "from training import pipeline\n"
        "def f():\n"
        "    from training.reports import spend\n"
        "    import numpy, training\n"
        "from router.training_data import x\n"  # a name that merely starts with "training" is fine
        "import trainingwheels\n"
        "from . import training\n"  # relative: router's own module, not the package
    )
    assert forbidden_imports(source) == [
        (2, "training.x"),
        (3, "training"),
        (5, "training.reports"),
        (6, "training"),
    ]


def test_router_never_imports_training() -> None:
    files = sorted(ROUTER.rglob("*.py"))
    assert len(files) > 10 and ROUTER / "service" / "api.py" in files
    problems = [
        f"{path.relative_to(ROUTER.parent)}:{line}: imports {name}"
        for path in files
        for line, name in forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not problems, "router/ must not import training/:\n" + "\n".join(problems)


def test_public_api_imports_from_the_package() -> None:
    import router
    from router import Decision, Router
    from router.core import Decision as CoreDecision
    from router.core import Router as CoreRouter

    assert Router is CoreRouter and Decision is CoreDecision
    assert sorted(router.__all__) == ["Decision", "Router"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        router.Nope  # noqa: B018
