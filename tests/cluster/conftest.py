from __future__ import annotations

from collections.abc import Iterator

import pytest

from ember.testkit.etcd import EtcdMember, start_cluster
from tests.conftest import short_tmp


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    """A real one-member etcd on loopback (each test uses its own key prefix)."""
    member = EtcdMember("solo", short_tmp() / "etcd")
    start_cluster([member])
    try:
        yield member.client_url
    finally:
        member.stop()
