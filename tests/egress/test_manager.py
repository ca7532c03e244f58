"""EgressManager with real nftables, always in a namespace of the test's own (no VM): the rules
follow create, a live policy change and delete, and a create that fails leaves nothing.
The network is a stand-in with the one lease the rules need (the bridge and TAP named
in the rules need not exist for nft)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ember.egress import EgressManager, EgressPlan, EgressPolicy, nft
from ember.egress.credentials import CredentialRequest, plan_credentials
from ember.egress.policy import CompiledPolicy
from ember.errors import InvalidArgument, Unavailable
from ember.network import Lease, NetworkSettings
from ember.testkit.netns import in_netns, netns


@dataclass
class Leases:
    settings: NetworkSettings = field(default_factory=NetworkSettings.from_values)
    leases: dict[str, Lease] = field(default_factory=dict)

    def lease(self, instance_id: str) -> Lease | None:
        return self.leases.get(instance_id)


def rules() -> str:
    listed = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True)
    return listed.stdout


def scenario(root: Path) -> dict[str, object]:
    network = Leases()
    network.leases["a"] = Lease("a", "web", "10.100.0.5", "02:00:00:00:00:05", "tap-a")
    network.leases["b"] = Lease("b", "bad", "10.100.0.6", "02:00:00:00:00:06", 'tap-"b')
    manager = EgressManager(root, network, proxy_port=4960)
    seen: dict[str, object] = {}
    manager.create("a", EgressPlan(policy=EgressPolicy(deny=["198.51.100.0/24"])))
    seen["created"] = rules()
    manager.set_policy("a", EgressPolicy(allow=["*.example.com", "192.0.2.0/24"]))
    seen["changed"] = rules()
    seen["files"] = sorted(os.listdir(root / "egress" / "a"))
    seen["state_mode"] = oct((root / "egress" / "a" / "state.json").stat().st_mode & 0o777)
    try:
        manager.create("b", EgressPlan())  # a TAP name nft refuses: the create fails
    except Unavailable as exc:
        seen["failed"] = str(exc)
    seen["after_failure"] = sorted(os.listdir(root / "egress"))
    manager.remove("a")
    seen["removed"] = rules()
    seen["left"] = os.listdir(root / "egress")
    return seen


def test_rules_follow_the_instance(tmp_path: Path) -> None:
    with netns() as ns:
        seen = in_netns(ns, scenario, tmp_path)
    created, changed = str(seen["created"]), str(seen["changed"])
    assert "ip saddr 10.100.0.5 ip daddr != 10.100.0.0/16 meta l4proto tcp redirect to :4960" in (
        created
    )
    assert "198.51.100.0/24" in created and "reject with tcp reset" in created
    assert 'iifname "tap-a" ip saddr != 10.100.0.5 drop' in created
    # The live change: the deny is gone, the allow list's CIDR is the only way out.
    assert "198.51.100.0/24" not in changed
    assert "ip daddr != 192.0.2.0/24 meta l4proto tcp reject with tcp reset" in changed
    assert seen["files"] == ["ca.key", "ca.pem", "state.json"]
    assert seen["state_mode"] == "0o600"
    assert "nft failed" in str(seen["failed"])
    assert seen["after_failure"] == ["a"]
    assert "10.100.0.5" not in str(seen["removed"]) and seen["left"] == []


def rotation(root: Path) -> str:
    request = CredentialRequest.model_validate(
        {"source": {"env": "REAL"}, "inject": [{"as": {"header": "X-Key", "format": "${value}"}}]}
    )
    credentials, _ = plan_credentials({"KEY": request}, {"REAL": "old"})
    manager = EgressManager(root, Leases(), proxy_port=4960)
    manager.create("a", EgressPlan(credentials=credentials))
    for refused in ({"KEY": "x"}, {"OTHER": "x"}, {"REAL": "two\nlines"}):
        with pytest.raises(InvalidArgument, match="env"):
            manager.check_rotation("a", refused)
    manager.rotate("a", {"REAL": "new"})
    return (root / "egress" / "a" / "state.json").read_text()


def test_only_credential_values_rotate(tmp_path: Path) -> None:
    with netns() as ns:
        stored = EgressPlan.model_validate_json(in_netns(ns, rotation, tmp_path))
    assert stored.credentials[0].value == "new"


@pytest.mark.parametrize("bad", [["10.0.0.1/8"], ["not a name"]])
def test_a_bad_policy_is_refused_naming_the_entry(tmp_path: Path, bad: list[str]) -> None:
    manager = EgressManager(tmp_path, Leases(), proxy_port=4960)
    with pytest.raises(InvalidArgument, match=r"policy\.deny\[0\]"):
        manager.set_policy("a", EgressPolicy(deny=bad))


def test_http_https_only_redirects_just_those_ports() -> None:
    site = nft.Site("t", "br", ipaddress.IPv4Network("10.100.0.0/16"), "10.100.0.1", 4960)
    policy = CompiledPolicy.of(EgressPolicy())
    script = nft.ruleset(site, [nft.GuestRules("10.100.0.5", "tap-a", "http_https_only", policy)])
    assert "ip saddr 10.100.0.5 ip daddr != 10.100.0.0/16 tcp dport { 80, 443 } redirect" in script
    assert "meta l4proto tcp redirect" not in script
