"""Reliability and security tests: fuzzing, faults, load, isolation (see SECURITY.md).

``PYMACVTAP_FUZZ_SCALE`` (default 1) multiplies every fuzz count and soak
duration: ``make soak`` runs them with 10.  The figures each test reaches are
collected in ``helpers.FIGURES`` and printed at the end of the run, for SECURITY.md.
"""

from __future__ import annotations

import pytest

from tests.reliability.helpers import FIGURES, SCALE


@pytest.fixture
def daemon_must_survive() -> bool:
    """A daemon that dies during a reliability test fails it, whatever else passed."""
    return True


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section(f"reliability figures (PYMACVTAP_FUZZ_SCALE={SCALE})")
        for name, count in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {count:,}")
