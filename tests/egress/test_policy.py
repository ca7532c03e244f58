"""Policy parsing and decisions, credential planning and header choice (pure, fast)."""

from __future__ import annotations

import pytest

from ember.egress.credentials import CredentialRequest, headers_for, plan_credentials
from ember.egress.models import EgressPlan, EgressRequest, EgressView, plan_egress
from ember.egress.policy import CompiledPolicy, EgressPolicy, host_matches, normalise
from ember.errors import InvalidArgument


def compiled(allow: list[str] | None = None, deny: list[str] | None = None) -> CompiledPolicy:
    return CompiledPolicy.of(normalise(EgressPolicy(allow=allow or [], deny=deny or [])))


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "API.Example.com.", True),
        ("api.example.com", "x.api.example.com", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
    ],
)
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


def test_normalise_canonicalises_and_refuses_bad_entries() -> None:
    policy = normalise(EgressPolicy(allow=["API.example.com", "10.1.2.3", "api.example.com"]))
    assert policy.allow == ["api.example.com", "10.1.2.3/32"]
    for bad in ("10.0.0.1/8", "300.1.1.1", "exa mple.com", "*.", "-bad.com", "a..b"):
        with pytest.raises(InvalidArgument, match=r"policy\.deny\[0\]"):
            normalise(EgressPolicy(deny=[bad]))


def test_deny_wins_and_allow_list_restricts() -> None:
    policy = compiled(allow=["*.example.com", "192.0.2.0/24"], deny=["bad.example.com"])
    assert not policy.decide("198.51.100.1", "bad.example.com").allowed
    assert policy.decide("198.51.100.1", "ok.example.com").allowed
    assert policy.decide("192.0.2.9", None).allowed
    refused = policy.decide("198.51.100.1", "other.org")
    assert not refused.allowed
    assert "not in the allow list" in refused.reason


def test_deny_cidr_names_the_rule() -> None:
    decision = compiled(deny=["10.78.0.0/24"]).decide("10.78.0.1", "api.example.com")
    assert not decision.allowed
    assert "10.78.0.0/24" in decision.reason
    assert compiled().decide("10.78.0.1", None).allowed


def credential(hosts: list[str] | None, fmt: str = "Bearer ${value}") -> CredentialRequest:
    inject: dict[str, object] = {"as": {"header": "Authorization", "format": fmt}}
    if hosts is not None:
        inject["hosts"] = hosts
    return CredentialRequest.model_validate({"source": {"env": "REAL"}, "inject": [inject]})


def test_guest_gets_a_placeholder_and_never_the_value() -> None:
    creds, guest_env = plan_credentials({"API_KEY": credential(["api.example.com"])},
                                        {"REAL": "s3cret", "OTHER": "1"})  # fmt: skip
    assert "REAL" not in guest_env
    assert guest_env["OTHER"] == "1"
    assert guest_env["API_KEY"] == creds[0].placeholder
    assert "s3cret" not in str(guest_env)
    view = EgressView.of(EgressPlan(credentials=creds), "PEM")
    assert "s3cret" not in view.model_dump_json()
    assert headers_for(creds, "api.example.com") == {"Authorization": "Bearer s3cret"}
    assert headers_for(creds, "other.example.com") == {}


def test_same_name_source_and_wildcards() -> None:
    creds, guest_env = plan_credentials({"REAL": credential(["*.example.com"], "token ${value}")},
                                        {"REAL": "v"})  # fmt: skip
    assert guest_env["REAL"].startswith("ember-placeholder-")
    assert headers_for(creds, "a.example.com") == {"Authorization": "token v"}
    everywhere, _ = plan_credentials({"K": credential(None)}, {"REAL": "v"})
    assert headers_for(everywhere, "anything.org") == {"Authorization": "Bearer v"}


@pytest.mark.parametrize(
    ("request_", "env", "message"),
    [
        (credential(["api.example.com"]), {}, "source.env"),
        (credential(["api.example.com"], "Bearer"), {"REAL": "v"}, r"\$\{value\}"),
        (credential(["not a host"]), {"REAL": "v"}, "hosts"),
        (credential([]), {"REAL": "v"}, "hosts"),
        (credential(None), {"REAL": "a\nb"}, "line breaks"),
    ],
)
def test_bad_credentials_are_refused(
    request_: CredentialRequest, env: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        plan_credentials({"K": request_}, env)


def test_plan_egress_turns_on_mediation_when_asked() -> None:
    assert plan_egress(None, None, {"A": "1"}, networked=True) == (None, {"A": "1"})
    plan, _ = plan_egress(
        EgressRequest.model_validate({"policy": {"deny": ["10.0.0.0/8"]}}), None, {},
        networked=True,
    )  # fmt: skip
    assert plan is not None and plan.mode == "all" and plan.policy.deny == ["10.0.0.0/8"]
    off = EgressRequest.model_validate({"enabled": False})
    with pytest.raises(InvalidArgument, match="mediated egress"):
        plan_egress(off, {"K": credential(None)}, {"REAL": "v"}, networked=True)
    with pytest.raises(InvalidArgument, match="network"):
        plan_egress(EgressRequest(enabled=True), None, {}, networked=False)
