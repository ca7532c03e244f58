"""The scorer and filter of `ember.cluster.placement`, on hand-made host figures."""

from __future__ import annotations

import random

from ember.cluster.discovery import Capacity, HostStatus
from ember.cluster.placement import Recent, Want, rank

GIB = 2**30


def host(name: str, cpus: int, memory_gib: int, **labels: str) -> HostStatus:
    return HostStatus(
        name=name, address=f"http://{name}", labels=labels,
        cpu=Capacity(effective_limit=8, allocated=8 - cpus, available=cpus),
        memory=Capacity(effective_limit=16 * GIB, allocated=(16 - memory_gib) * GIB,
                        available=memory_gib * GIB),
    )  # fmt: skip


def test_hosts_without_room_or_labels_are_left_out() -> None:
    hosts = [host("full", 0, 8), host("small", 4, 0), host("b", 4, 8, zone="b"),
             host("a", 4, 8, zone="a")]  # fmt: skip
    want = Want(vcpus=1, memory_bytes=GIB, labels={"zone": "a"})
    assert [h.name for h in rank(hosts, want, Recent(10))] == ["a"]
    assert rank(hosts, Want(9, GIB), Recent(10)) == []


def test_a_published_image_goes_where_it_is_ready_an_unknown_name_anywhere() -> None:
    has, lacks = host("has", 4, 8), host("lacks", 8, 16)
    has.images = ["docker.io/library/app:1"]
    want = Want(1, GIB, image="docker.io/library/app:1")
    assert [h.name for h in rank([has, lacks], want, Recent(10))] == ["has"]
    unknown = Want(1, GIB, image="docker.io/library/other:1")  # no host says: hosts answer
    assert sorted(h.name for h in rank([has, lacks], unknown, Recent(10))) == ["has", "lacks"]


def test_the_emptier_host_goes_first_of_the_sample() -> None:
    hosts = [host("busy", 2, 2), host("idle", 8, 16), host("half", 4, 8)]
    order = rank(hosts, Want(1, GIB), Recent(10), rng=random.Random(1))
    assert [h.name for h in order] == ["idle", "half", "busy"]


def test_recent_placements_spread_creates_before_hosts_publish() -> None:
    hosts = [host("a", 8, 16), host("b", 8, 16)]
    recent = Recent(10)
    placed = []
    for _ in range(4):
        first = rank(hosts, Want(2, 4 * GIB), recent)[0]
        recent.add(first.name, Want(2, 4 * GIB))
        placed.append(first.name)
    assert sorted(placed) == ["a", "a", "b", "b"]


def test_recent_placements_expire() -> None:
    now = [0.0]
    recent = Recent(5, clock=lambda: now[0])
    recent.add("a", Want(2, GIB))
    assert recent.on("a") == Want(2, GIB)
    now[0] = 6.0
    assert recent.on("a") == Want(0, 0)
