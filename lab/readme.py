"""Sections and code blocks of the README and the guides in docs/, for the tests that run or
check their examples as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str, doc: str = "README.md") -> str:
    """The text of ``## title`` in ``doc`` (a path from the repository root) up to the next
    level-2 heading."""
    text = (ROOT / doc).read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"{doc} has no '## {title}' section"
    return m.group(1)


def code_blocks(title: str, language: str, doc: str = "README.md") -> list[str]:
    """The fenced ``language`` blocks of a section of ``doc``, in order."""
    fence = re.escape(language)
    section = readme_section(title, doc)
    return re.findall(rf"^```{fence}\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def expand_braces(pattern: str) -> list[str]:
    """Shell-style ``a_{x,y}_b`` -> ``["a_x_b", "a_y_b"]``: several groups, no nesting or ranges."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [word for alt in m[1].split(",") for word in expand_braces(head + alt + tail)]
