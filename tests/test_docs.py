"""The docs: README.md stays a five-minute read, and the docs site builds --strict with every page walkable.

``mkdocs build --strict`` (mkdocs.yml turns missing anchors, links to missing pages and pages left out
of ``nav:`` into warnings, and --strict into failures) runs once per session into a temporary folder;
the generated configuration reference (docs/hooks/config_reference.py) is checked in its output.
README.md's links are not seen by MkDocs, so they are checked here, anchors included. Code paths
named in the pages (``trainables/lm/``, ``orchestrator.schema.Section``) must exist, so a module
moved without its docs fails here.
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 250

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), not images
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
TOP_LEVEL = ("orchestrator", "trainables", "serve", "benchmarks", "tests", "experiments", "docs", ".ci")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built --strict into a temporary folder (about 6 s)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text()))


def test_mkdocs_build_strict(site):
    assert (site / "index.html").is_file()


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md: {len(lines)} lines (at most {MAX_README_LINES}): see docs/"


def test_every_page_is_in_the_nav():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = _nav_files(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
    assert sorted(set(nav)) == pages, "every docs/ page must be in mkdocs.yml's nav, and every nav entry a page"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_readme_links_resolve(site):
    """README's relative links point at files that exist; a link into docs/ with #anchor at a heading the site has."""
    bad = []
    for target in LINK.findall(README.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            bad.append(f"{target}: no such file")
        elif anchor and path.startswith("docs/") and path.endswith(".md"):
            page = site / Path(path).relative_to("docs").with_suffix(".html")
            if anchor not in _ids(page):
                bad.append(f"{target}: no heading #{anchor} in {path}")
    assert not bad, "README.md has broken links:\n" + "\n".join(bad)


def test_configuration_reference_is_generated(site):
    from orchestrator.registry import BUILTIN, get_family
    from orchestrator.sections import GENERIC_SECTIONS

    page = (site / "configuration.html").read_text()
    ids = _ids(site / "configuration.html")
    assert "config-reference" not in page and "are generated from the section dataclasses when" not in page
    assert re.search(r"<tr>\s*<td><code>max_steps</code></td>\s*<td>an integer</td>", page), "no train.max_steps row"
    for name in GENERIC_SECTIONS:
        assert name in ids, f"no section for {name}"
    for name in BUILTIN:  # not family_names(): tests earlier in the run register families the build never sees
        assert f"family-{name}" in ids, f"no section for family {name}"
        for kind in get_family(name).sections:
            assert f"{name}-{kind}" in ids, f"no {kind} section for family {name}"


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _dotted_exists(name: str) -> bool:
    """``orchestrator.schema.Section``: the longest prefix that is a module, then a name defined in it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = _module_file(parts[:i])
        if module is not None:
            return i == len(parts) or parts[i] in _top_level_names(module) or _module_file(parts[: i + 1]) is not None
    return False


def _is_dotted_code_name(token: str) -> bool:
    """``trainables.training.Recipe`` or ``serve.app.ray_env``, not a config key such as ``serve.port``."""
    if not re.fullmatch(r"(?:orchestrator|trainables|serve)(?:\.\w+)+", token):
        return False
    return not token.startswith("serve.") or _module_file(token.split(".")[:2]) is not None


def test_code_paths_in_docs_exist():
    """Every repository path (``trainables/lm/``, ``serve/app.py``) and dotted name (``trainables.training.Recipe``)
    that README.md or a docs page names in a code span exists: modules move, and the docs must follow."""
    bad = []
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        text = FENCE.sub("", page.read_text())
        for span in set(CODE_SPAN.findall(text)):
            span = html.unescape(span.strip())
            token = span.split("(")[0].split(" ")[0].rstrip(":,;")
            if re.fullmatch(rf"(?:{'|'.join(re.escape(t) for t in TOP_LEVEL)})/[\w./-]*", token) and "<" not in token:
                if not (ROOT / token).exists():
                    bad.append(f"{page.relative_to(ROOT)}: `{span}` does not exist")
            elif _is_dotted_code_name(token) and not _dotted_exists(token):
                bad.append(f"{page.relative_to(ROOT)}: `{span}` names no module or attribute")
    assert not bad, "stale code paths in the docs:\n" + "\n".join(sorted(bad))
