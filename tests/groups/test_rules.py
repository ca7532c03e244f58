"""Fast tests: validation with named errors, the balancer's decisions, the Caddy routes,
the stop-reason mask and the keyed wake job."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ember.errors import InvalidArgument
from ember.groups.balancer import Candidate, decide
from ember.groups.requests import (
    CreateServiceGroupRequest,
    InstanceServiceGroupRequest,
    ScaleToZeroRequest,
    check_reference,
    group_record,
    scale_to_zero,
)
from ember.groups.routes import GroupView, published_routes
from ember.instances import stopreason
from ember.tasks import KeyedJobs


def make(**fields: Any) -> CreateServiceGroupRequest:
    body = {"name": "web", "services": [{"port": 80, "destination_port": 8080}], **fields}
    return CreateServiceGroupRequest.model_validate(body)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"soft_limit": 0}, "invalid_limit"),
        ({"hard_limit": 65536}, "invalid_limit"),
        ({"soft_limit": 5, "hard_limit": 2}, "soft_limit_above_hard_limit"),
        ({"services": []}, "invalid_service"),
        ({"services": [{"port": 0}]}, "invalid_port"),
        ({"services": [{"port": 80, "destination_port": 70000}]}, "invalid_port"),
        ({"services": [{"port": 80}, {"port": 80}]}, "duplicate_port"),
        ({"services": [{"port": 80, "handlers": ["http", "http"]}]}, "invalid_handlers"),
        ({"services": [{"port": 80, "handlers": ["redirect", "http"]}]}, "invalid_handlers"),
        ({"services": [{"port": 5432, "handlers": ["tls"]}]}, "invalid_domain"),
        ({"services": [{"port": 5432, "handlers": ["tls", "redirect"]}]}, "not_supported"),
        ({"services": [{"port": 53, "protocol": "udp", "handlers": ["tls"]}]}, "invalid_handlers"),
        ({"domains": [{"name": "bad_host"}]}, "invalid_domain"),
        ({"domains": [{"name": "a.test"}, {"name": "A.test."}]}, "invalid_domain"),
        ({"autokill": {"time_ms": -1}}, "invalid_time"),
    ],
)
def test_a_bad_group_is_refused_by_name(fields: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        group_record(make(**fields))
    assert caught.value.code == code


def test_defaults_and_a_good_group() -> None:
    record = group_record(make(domains=[{"name": "App.Test."}]))
    assert (record.soft_limit, record.hard_limit) == (65535, 65535)
    assert record.services[0].handlers == ["http"]
    assert [d.name for d in record.domains] == ["app.test"]
    assert group_record(make(hard_limit=4)).soft_limit == 4  # soft follows hard
    assert group_record(make(name=None)).name.startswith("group-")
    dns = group_record(make(services=[{"port": 53, "protocol": "udp"}]))
    assert dns.services[0].handlers == [] and dns.services[0].is_l4  # UDP: no handler


def test_instance_group_reference_and_scale_to_zero() -> None:
    both = InstanceServiceGroupRequest(name="web", uuid="x")
    with pytest.raises(InvalidArgument, match="mutually exclusive"):
        check_reference(both)
    mixed = InstanceServiceGroupRequest(name="web", soft_limit=1)
    with pytest.raises(InvalidArgument, match="soft_limit"):
        check_reference(mixed)
    assert check_reference(InstanceServiceGroupRequest(uuid="abc")) == "abc"
    assert scale_to_zero(ScaleToZeroRequest(notify_time_ms=100)).notify_time_ms == 100
    with pytest.raises(InvalidArgument) as caught:
        scale_to_zero(ScaleToZeroRequest(notify_time_ms=-1))
    assert caught.value.code == "invalid_time"
    assert scale_to_zero(ScaleToZeroRequest(stateful=False)).enabled


def c(name: str, phase: str, load: int) -> Candidate:
    return Candidate(name, name, phase, load)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("candidates", "soft", "hard", "expected"),
    [
        # Awake under the soft limit: the least loaded serves.
        ([c("a", "awake", 2), c("b", "awake", 1)], 5, 5, ("serve", "b")),
        # Every awake one at the soft limit: wake a standby one.
        ([c("a", "awake", 1), c("b", "asleep", 0)], 1, 4, ("wake", "b")),
        # A wake in progress under the soft limit is joined before another is started.
        ([c("a", "waking", 3), c("b", "asleep", 0)], 5, 9, ("wake", "a")),
        # The soft limit reached by the one being woken: wake the next.
        ([c("a", "waking", 1), c("b", "asleep", 0)], 1, 9, ("wake", "b")),
        # Nothing left to wake: past the soft limit, up to the hard limit.
        ([c("a", "awake", 3), c("b", "awake", 2)], 1, 4, ("serve", "b")),
        ([c("a", "waking", 2)], 1, 4, ("wake", "a")),
    ],
)
def test_balancer_decisions(
    candidates: list[Candidate], soft: int, hard: int, expected: tuple[str, str]
) -> None:
    decision = decide(candidates, soft, hard)
    assert (decision.action, decision.instance_id) == expected


def test_balancer_refuses_at_the_hard_limit_and_without_instances() -> None:
    full = decide([c("a", "awake", 2), c("b", "waking", 2)], 1, 2)
    assert full.action == "refuse" and "hard limit of 2" in full.reason
    assert "no instance" in decide([], 1, 2).reason


def test_routes_use_the_soft_limit_only_while_an_instance_can_be_woken() -> None:
    record = group_record(make(soft_limit=2, hard_limit=5, domains=[{"name": "a.test"}]))
    waker = Path("/run/ember/w.sock")

    def balancer(view: GroupView) -> dict[str, Any]:
        (published,) = published_routes([view], waker)
        assert published.port == 80
        handlers: list[dict[str, Any]] = published.routes[0]["handle"]
        return handlers[1]

    wakeable = balancer(GroupView(record, ("10.0.0.2",), can_wake=True))
    assert wakeable["upstreams"] == [{"dial": "10.0.0.2:8080", "max_requests": 2}]
    assert wakeable["load_balancing"] == {"selection_policy": {"policy": "least_conn"}}
    assert balancer(GroupView(record, ("10.0.0.2",), False))["upstreams"][0]["max_requests"] == 5
    # Nobody awake: every request asks the waker (with the original body kept by Caddy).
    asleep = balancer(GroupView(record, (), can_wake=True, members=("10.0.0.2", "10.0.0.3")))
    assert asleep["upstreams"] == [{"dial": f"unix/{waker}"}]
    assert asleep["rewrite"]["method"] == "GET"
    # The waker's answer picks a static upstream per member (counted with the
    # balancer's), capped at the hard limit; a placeholder only as the last resort.
    answers = asleep["handle_response"]
    assert [a["match"]["headers"]["X-Ember-Upstream"] for a in answers[:2]] == [
        ["10.0.0.2:8080"],
        ["10.0.0.3:8080"],
    ]
    first = answers[0]["routes"][0]["handle"][0]["upstreams"]
    assert first == [{"dial": "10.0.0.2:8080", "max_requests": 5}]
    assert "headers" not in answers[2]["match"]


def test_stop_reason_masks_are_the_seeds() -> None:
    user = stopreason.requested("user")
    assert stopreason.ended(user, forced=False, exit_code=0, signal=0) == 15
    assert stopreason.ended(user, forced=False, exit_code=143, signal=15) == 13
    assert stopreason.ended(user | stopreason.StopReason.FORCED, forced=True,
                            exit_code=None, signal=0) == 28  # fmt: skip
    assert stopreason.standby("platform") == 7
    assert stopreason.ended(None, forced=False, exit_code=3, signal=0) == 3
    assert stopreason.ended(None, forced=False, exit_code=None, signal=0) == 1
    assert stopreason.letters(15) == "-UPAK"
    assert stopreason.describe(3, 3) == "the program exited with code 3"


def test_a_burst_joins_one_keyed_job_and_shares_its_failure() -> None:
    async def scenario() -> tuple[list[int], int, str]:
        jobs: KeyedJobs[int] = KeyedJobs()
        runs = 0

        async def wake() -> int:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.05)
            return runs

        results = await asyncio.gather(*(jobs.run("i", wake) for _ in range(20)))

        async def fail() -> int:
            raise RuntimeError("restore failed")

        failures = await asyncio.gather(*(jobs.run("j", fail) for _ in range(3)),
                                        return_exceptions=True)  # fmt: skip
        await jobs.close()
        return list(results), runs, str(failures[2])

    results, runs, failure = asyncio.run(scenario())
    assert runs == 1 and results == [1] * 20
    assert failure == "restore failed"
