"""Fixtures: a network namespace per test, and a database path for the leases."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ember.network import NetworkManager, NetworkSettings
from ember.network.settings import DEFAULT_SUBNET
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


def make_manager(
    db: Path, subnet: str = DEFAULT_SUBNET, dns_upstream: Sequence[str] = ()
) -> NetworkManager:
    """A manager on the database at ``db`` (build it inside the namespace's child)."""
    settings = NetworkSettings.from_values(subnet, dns_upstream=dns_upstream)
    return NetworkManager(Store(db), settings)
