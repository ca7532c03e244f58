"""Rule validation and the generated Caddy config, without running anything."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from ember.errors import InvalidArgument
from ember.ingress.caddy_config import ProxySettings, build_config
from ember.ingress.hostnames import parse_hostname
from ember.ingress.models import IngressRecord, IngressRule, validate_rules

PROXY = ProxySettings(admin_socket=Path("/run/x.sock"), storage_dir=Path("/tmp/storage"))
SECRET = "0123456789abcdef0123456789abcdef"


def rule(**fields: object) -> IngressRule:
    base: dict[str, object] = {
        "match": {"hostname": "a.example.com"},
        "target": {"instance": "web", "port": 8080},
    }
    return IngressRule.model_validate({**base, **fields})


def test_pattern_hostnames() -> None:
    pattern = parse_hostname("{Instance}.Apps.Example.com".lower())
    assert pattern.captures == ("instance",)
    assert pattern.wildcard == "*.apps.example.com"
    assert pattern.shape == "{}.apps.example.com"
    assert parse_hostname("api.{env}.example.com").wildcard is None  # not coverable by one cert
    assert not parse_hostname("API.example.com.").is_pattern
    assert parse_hostname("API.example.com.").text == "api.example.com"
    anyhost = parse_hostname("*")
    assert anyhost.is_any and not anyhost.is_pattern and anyhost.shape == "*"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"match": {"hostname": "*.example.com"}}, "wildcards are not supported"),
        ({"match": {"hostname": "*"}, "tls": True}, "no certificate covers any host"),
        ({"match": {"hostname": "a..b"}}, "not a valid hostname"),
        ({"match": {"hostname": "a.test", "port": 70000}}, r"match.port: must be a port"),
        ({"target": {"instance": "web", "port": 0}}, r"target.port: must be a port"),
        ({"target": {"instance": "{x}", "port": 80}}, r"capture \{x\}"),
        ({"target": {"instance": "Web!", "port": 80}}, "not an instance name"),
        ({"redirect_http": True}, "requires tls"),
        ({"tls": True, "redirect_http": True, "match": {"hostname": "a.test", "port": 80}},
         "listens on port 80"),
        ({"tls": True, "match": {"hostname": "api.{env}.test"},
          "target": {"instance": "{env}", "port": 80}}, "first label only"),
        ({"request_header_auth": {"header": "Authorization", "value": SECRET}}, "reserved"),
        ({"request_header_auth": {"header": "Bad Header", "value": SECRET}}, "not a valid"),
    ],
)  # fmt: skip
def test_bad_rules_are_400s_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        validate_rules([rule(**fields)])
    assert caught.value.message.startswith("rules[0]")


@pytest.mark.parametrize(
    "fields",
    [
        {"match": {"hostname": "a.test", "port": "8082"}},
        {"target": {"instance": "web", "port": "8080"}},
        {"tls": "true"},
        {"match": {"hostname": "a.test", "colour": "red"}},
    ],
)
def test_rule_fields_are_strict(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        rule(**fields)


def test_header_auth_value_is_never_echoed() -> None:
    for value in ("short", SECRET + "*", SECRET + " x"):
        with pytest.raises(InvalidArgument) as caught:
            validate_rules([rule(request_header_auth={"header": "X-Key", "value": value})])
        assert value not in caught.value.message


def test_default_ports_and_config_shape() -> None:
    rules = validate_rules(
        [
            rule(match={"hostname": "{instance}.example.com"},
                 target={"instance": "{instance}", "port": 8080}),
            rule(),
            rule(match={"hostname": "s.example.com"}, tls=True, redirect_http=True),
        ]
    )  # fmt: skip
    assert [r.match.port for r in rules] == [80, 80, 443]
    record = IngressRecord(id="x", name="x", created_at=datetime.now(UTC), rules=rules)
    config = build_config([record], PROXY)
    servers = config["apps"]["http"]["servers"]
    assert sorted(servers) == ["ingress-443", "ingress-80"]
    routes = servers["ingress-80"]["routes"]
    # Literal before pattern, then the redirect, then the 404 for unknown hosts.
    assert routes[0]["match"] == [{"host": ["a.example.com"]}]
    assert "vars_regexp" in routes[1]["match"][0]
    upstream = routes[1]["handle"][0]["dynamic_upstreams"]
    assert upstream["name"] == "{http.regexp.ingress.instance}.ember.internal"
    assert routes[2]["handle"][0]["status_code"] == 308
    assert routes[3]["handle"][0]["status_code"] == 404
    assert servers["ingress-443"]["tls_connection_policies"] == [{}]
    assert config["apps"]["tls"]["certificates"]["automate"] == ["s.example.com"]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


def test_acme_only_under_its_domain() -> None:
    proxy = ProxySettings(
        admin_socket=Path("/run/x.sock"), storage_dir=Path("/tmp/s"),
        acme_email="ops@example.com", acme_domain="example.com",
    )  # fmt: skip
    rules = validate_rules(
        [rule(match={"hostname": "s.example.com"}, tls=True),
         rule(match={"hostname": "s.internal.test"}, tls=True)]
    )  # fmt: skip
    record = IngressRecord(id="x", name="x", created_at=datetime.now(UTC), rules=rules)
    policies = build_config([record], proxy)["apps"]["tls"]["automation"]["policies"]
    assert policies == [
        {"subjects": ["s.example.com"],
         "issuers": [{"module": "acme", "email": "ops@example.com"}]},
        {"subjects": ["s.internal.test"], "issuers": [{"module": "internal"}]},
    ]  # fmt: skip
