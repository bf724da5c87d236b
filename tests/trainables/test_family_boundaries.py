"""Families stand alone: no family imports another, and no shared package imports a family.

A family is every subpackage of ``trainables/`` with a ``family.py``; everything else under
``trainables/`` (``lm``, ``moe``, ``training``, ``data``, ``codeeval``, ``config_base``, ...) is
shared. Every ``.py`` file is parsed (never imported) and each reference to a module is checked:

- ``import a.b`` and ``from a.b import c`` (``from trainables import dylora`` names the family too),
  at module level or inside a function;
- relative imports (``from ..dylora import x``), resolved against the file's package;
- string literals that are a module path or a ``"module:attr"`` reference
  (``importlib.import_module("trainables.dylora.x")``, ``recipe="trainables.more.recipe:R"``).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import trainables

ROOT = Path(trainables.__file__).parent  # .../trainables
PACKAGE = ROOT.name
# a whole string that is a dotted module path, optionally with ":attr" (prose never matches as a whole)
MODULE_REF = re.compile(rf"{PACKAGE}(\.\w+)+(:[\w.]+)?")


@functools.cache
def families() -> tuple[str, ...]:
    """The family packages: subpackages of ``trainables`` with a ``family.py``."""
    return tuple(sorted(p.parent.name for p in ROOT.glob("*/family.py")))


def shared_files() -> list[Path]:
    """Every ``.py`` file under ``trainables/`` outside the family packages."""
    family_dirs = {ROOT / name for name in families()}
    return sorted(p for p in ROOT.rglob("*.py") if not any(d in p.parents for d in family_dirs))


def module_name(path: Path) -> str:
    """``trainables/llm_judge/tasks.py`` -> ``trainables.llm_judge.tasks`` (a package: its own name)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(path: Path, level: int, module: str | None) -> str:
    """The absolute module an ``ImportFrom`` of ``path`` names (``level`` dots before ``module``)."""
    if level == 0:
        return module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's package
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def referenced_modules(path: Path, source: str | None = None) -> Iterator[tuple[int, str, str]]:
    """``(line, module, source text)`` for every module ``path`` imports or names in a reference string
    (``source``: the file's text, read from ``path`` by default)."""
    source = path.read_text(encoding="utf-8") if source is None else source
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        text = lines[node.lineno - 1].strip() if isinstance(node, (ast.Import, ast.ImportFrom, ast.Constant)) else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, text
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node.level, node.module)
            yield node.lineno, base, text
            for alias in node.names:  # `from trainables import dylora` imports the family package
                yield node.lineno, f"{base}.{alias.name}", text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_REF.fullmatch(node.value):
            yield node.lineno, node.value.partition(":")[0], text


def family_of(module: str) -> str | None:
    """The family a module belongs to (``trainables.dylora.codeeval`` -> ``dylora``), else None."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == PACKAGE and parts[1] in families():
        return parts[1]
    return None


def file_violations(path: Path, own: str | None, source: str | None = None) -> list[tuple[int, str, str]]:
    """``(line, source text, family)`` for each reference in ``path`` to a family other than ``own``."""
    found = []
    for line, module, text in referenced_modules(path, source):
        other = family_of(module)
        if other is not None and other != own:
            found.append((line, text, other))
    return sorted(set(found))


def violations(files: list[Path], own: str | None) -> list[str]:
    """``file:line: text imports family X`` for each reference in ``files`` to a family other than ``own``."""
    return [f"{path.relative_to(ROOT.parent)}:{line}: {text!r} imports family {other!r}"
            for path in files for line, text, other in file_violations(path, own)]


def test_families_are_discovered() -> None:
    assert {"ensemble", "more", "dylora", "llm_judge", "mixlora"} <= set(families())


def test_no_family_imports_another_family() -> None:
    found = [v for name in families() for v in violations(sorted((ROOT / name).rglob("*.py")), own=name)]
    assert not found, "families import each other:\n" + "\n".join(found)


def test_shared_packages_import_no_family() -> None:
    found = violations(shared_files(), own=None)
    assert not found, "shared packages import families:\n" + "\n".join(found)


def test_the_checker_sees_every_form() -> None:
    """The parser catches absolute, relative, nested and string-reference imports of another family."""
    fake = ROOT / "llm_judge" / "fake_module.py"  # never written: its path resolves the relative imports
    code = ("import trainables.dylora.codeeval\n"
            "from trainables import mixlora\n"
            "from ..more import recipe\n"
            "def f():\n"
            "    from trainables.ensemble.gate import Gate\n"
            "    importlib.import_module('trainables.dylora.sandbox')\n"
            "REF = 'trainables.mixlora.recipe:MixLoRARecipe'\n"
            "from trainables.lm import base\n"
            "from . import tasks\n"
            "DOC = 'see trainables.dylora.codeeval for details'\n")
    found = {(line, family_of(module)) for line, module, _ in referenced_modules(fake, code) if family_of(module)}
    assert found == {(1, "dylora"), (2, "mixlora"), (3, "more"), (5, "ensemble"), (6, "dylora"), (7, "mixlora"),
                     (9, "llm_judge")}  # line 9: its own family; shared packages and prose are not references
    assert [line for line, _, _ in file_violations(fake, "llm_judge", code)] == [1, 2, 3, 5, 6, 7]


def test_the_worker_loop_needs_no_registry() -> None:
    """The driver hands the worker its recipe's reference: ``trainables.training`` never imports the registry
    (nor the contract it is built on), so orchestrator -> trainables -> orchestrator is no cycle."""
    found = [f"{path.relative_to(ROOT.parent)}:{line}: {text!r}"
             for path in sorted((ROOT / "training").rglob("*.py"))
             for line, module, text in referenced_modules(path)
             if module.startswith(("orchestrator.registry", "orchestrator.contract"))]
    assert not found, "the worker loop imports the registry:\n" + "\n".join(found)
