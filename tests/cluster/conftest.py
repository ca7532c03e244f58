from __future__ import annotations

from collections.abc import Iterator

import pytest

from ember.testkit.etcd import EtcdMember, start_cluster
from tests.conftest import scratch_dir


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    """A real one-member etcd on loopback (each test uses its own key prefix)."""
    with scratch_dir() as scratch:
        member = EtcdMember("solo", scratch / "etcd")
        start_cluster([member])
        try:
            yield member.client_url
        finally:
            member.stop()
