"""MkDocs hook: the configuration reference (docs/configuration.md), generated from the section dataclasses.

docs/configuration.md holds a placeholder between two HTML comments (``BEGIN_MARK`` ... ``END_MARK``);
at build time this hook replaces it with one part per section: a heading, the section class's
docstring and a table of its fields (name, type, default, what it accepts, description), read with
``orchestrator.schema.field_docs``. The generic sections come from ``orchestrator.sections``; each
registered family's own sections (``model``, ``data``, and ``evaluate`` / ``serve`` where it has them)
from ``orchestrator.registry``. Nothing is written by hand, so the page cannot drift from the code:
a renamed field, a new family or a changed default shows up in the next build.

Registered in mkdocs.yml under ``hooks:``; mkdocs.yml excludes this folder from the site.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PAGE = "configuration.md"
BEGIN_MARK = "<!-- BEGIN config-reference"
END_MARK = "<!-- END config-reference -->"
SECTION_KINDS = ("model", "data", "evaluate", "serve")  # a family's own sections, in this order


def _import_schema():
    """``(GENERIC_SECTIONS, family_names, get_family, field_docs)``, importing from the repository root."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from orchestrator.registry import family_names, get_family
    from orchestrator.schema import field_docs
    from orchestrator.sections import GENERIC_SECTIONS

    return GENERIC_SECTIONS, family_names, get_family, field_docs


_CODE = re.compile(r"(`+)(.+?)\1", re.S)  # a Markdown code span


def _inline(text: str, in_table: bool) -> str:
    """Markdown text made safe: ``&``, ``<``, ``>`` escaped outside code spans (``<name>`` is not an HTML tag);
    in a table cell, ``|`` escaped everywhere (a code span holding one becomes ``<code>`` HTML)."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        plain = html.escape(text[pos:m.start()], quote=False)
        out.append(plain.replace("|", "&#124;") if in_table else plain)
        code = m.group(2)
        if in_table and "|" in code:
            out.append("<code>" + html.escape(code.strip(), quote=False).replace("|", "&#124;") + "</code>")
        else:
            out.append(m.group(0))
        pos = m.end()
    plain = html.escape(text[pos:], quote=False)
    out.append(plain.replace("|", "&#124;") if in_table else plain)
    return "".join(out)


def _markdown_text(text: str) -> str:
    """A docstring as Markdown: reST's ``literal`` becomes `literal`; ``<``, ``>`` and ``&`` escaped outside code."""
    return _inline(re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S), in_table=False)


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # the signature dataclasses writes when there is none
        return ""
    return _markdown_text(doc)


def _cell(text: str) -> str:
    """Plain text for a table cell: one line, HTML-escaped, pipes escaped."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "&#124;")


def _doc_cell(text: str) -> str:
    """A field's description (Markdown allowed, e.g. `code`) for a table cell: one line, pipes escaped."""
    return _inline(re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split())), in_table=True)


def _code_cell(text: str) -> str:
    return f"<code>{_cell(text)}</code>" if text else ""


def section_markdown(heading: str, anchor: str, cls: type, field_docs, level: int = 3) -> str:
    """One section: heading (with an explicit anchor), the class's docstring, a table of its fields."""
    lines = [f"{'#' * level} {heading} {{#{anchor}}}", "",
             f"Class: `{cls.__module__}.{cls.__qualname__}`", ""]
    doc = _docstring(cls)
    if doc:
        lines += [doc, ""]
    rows = field_docs(cls)
    if not rows:
        return "\n".join([*lines, "No fields.", ""])
    lines += ["| field | type | default | accepts | description |", "|---|---|---|---|---|"]
    for f in rows:
        cells = [f"`{f.name}`", _cell(f.type), _code_cell(f.default), _cell(f.rule), _doc_cell(f.doc)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def reference_markdown() -> str:
    """The whole generated reference: the generic sections, then every registered family's sections."""
    generic, family_names, get_family, field_docs = _import_schema()
    parts = ["## Generic sections", "",
             "Every experiment has these, whatever its family: "
             + ", ".join(f"[`{name}`](#{name})" for name in generic) + ".", ""]
    for name, cls in generic.items():
        parts.append(section_markdown(f"`{name}`", name, cls, field_docs))
    names = family_names()
    parts += ["## Family sections", "",
              "Each family declares its own `model:` and `data:` sections, and `evaluate:` / `serve:` where it has "
              "an evaluator / a serve app. Registered families: "
              + ", ".join(f"[`{n}`](#family-{n})" for n in names) + ".", ""]
    for name in names:
        sections = get_family(name).sections
        parts += [f"### Family `{name}` {{#family-{name}}}", "",
                  "Sections: " + ", ".join(f"[`{kind}`](#{name}-{kind})" for kind in SECTION_KINDS if kind in sections)
                  + ".", ""]
        for kind in [k for k in SECTION_KINDS if k in sections] + [k for k in sections if k not in SECTION_KINDS]:
            parts.append(section_markdown(f"`{name}`: `{kind}`", f"{name}-{kind}", sections[kind], field_docs, 4))
    return "\n".join(parts)


def replace_placeholder(markdown: str) -> str:
    """``markdown`` with the placeholder block replaced by the generated reference."""
    start = markdown.find(BEGIN_MARK)
    end = markdown.find(END_MARK)
    if start < 0 or end < start:
        raise PluginError(f"{PAGE}: the placeholder ({BEGIN_MARK} ... {END_MARK}) is missing")
    return markdown[:start] + reference_markdown() + markdown[end + len(END_MARK):]


def on_page_markdown(markdown: str, *, page, config, files) -> str:  # noqa: ARG001 - MkDocs' hook signature
    if page.file.src_uri != PAGE:
        return markdown
    try:
        return replace_placeholder(markdown)
    except PluginError:
        raise
    except Exception as exc:  # an import or schema error: fail the build, naming it
        raise PluginError(f"{PAGE}: generating the configuration reference failed: {exc!r}") from exc
