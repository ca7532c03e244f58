"""A server on a data dir without boot artifacts finds (or prepares) its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import Unavailable
from ember.system import DEFAULT_SYSTEM_DIR, BootSystem, load


async def test_an_empty_system_dir_reuses_the_prepared_default(tmp_path: Path) -> None:
    try:
        prepared = load(DEFAULT_SYSTEM_DIR)
    except Unavailable:
        pytest.skip("no prepared system in the default location (`make setup`)")
    system = BootSystem(tmp_path / "system")
    await system.open()
    assert system.current() == prepared
    await system.close()


def test_before_open_creates_are_told_why() -> None:
    with pytest.raises(Unavailable, match="being prepared"):
        BootSystem(Path("/nonexistent")).current()
