"""The README's sections and code blocks, for the tests that run or check its examples."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section(title: str) -> str:
    """The text of ``## title`` up to the next level-2 heading."""
    text = README.read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def code_blocks(title: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of a section, in order."""
    fence = re.escape(language)
    return re.findall(rf"^```{fence}\n(.*?)^```", readme_section(title), re.MULTILINE | re.DOTALL)


def expand_braces(pattern: str) -> list[str]:
    """Shell-style ``a_{x,y}_b`` -> ``["a_x_b", "a_y_b"]``: several groups, no nesting or ranges."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [word for alt in m[1].split(",") for word in expand_braces(head + alt + tail)]
