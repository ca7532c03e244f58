from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import EmberServer


@pytest.fixture
def ember_server(tmp_path: Path) -> Iterator[EmberServer]:
    server = EmberServer(tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()
