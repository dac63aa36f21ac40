from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pymacvtap.frontends.vhost_user import VhostUserFrontend


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[object]:
    made: list[VhostUserFrontend] = []

    def make(queues: int = 1) -> VhostUserFrontend:
        be = VhostUserFrontend.create(str(tmp_path / f"vu{len(made)}.sock"), queues)
        made.append(be)
        return be

    yield make
    for be in made:
        be.close(delete=True)
