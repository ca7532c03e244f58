"""Fixtures: a network namespace per test, and a database path for the leases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.network import NetworkManager, NetworkSettings
from ember.store import Store
from ember.testkit.netns import netns

if os.geteuid() != 0:
    pytest.skip("network tests need root (namespaces, bridges, nftables)", allow_module_level=True)


@pytest.fixture
def ns() -> Iterator[str]:
    with netns() as name:
        yield name


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ember.db"


def make_manager(db: Path, **settings: object) -> NetworkManager:
    """A manager on the database at ``db`` (build it inside the namespace's child)."""
    return NetworkManager(Store(db), NetworkSettings.from_values(**settings))  # type: ignore[arg-type]
