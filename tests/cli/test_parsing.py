"""The CLI's own parsing and configuration (pure: no server)."""

from __future__ import annotations

import pytest
import typer

from ember.cli.common import CliError
from ember.cli.groups import parse_service
from ember.cli.guest import split_remote
from ember.cli.instances import default_name, parse_publish, parse_volume
from ember.client.config import config_from_env


def test_configuration_prefers_ember_then_hypeman_then_legacy_names() -> None:
    both = {
        "EMBER_BASE_URL": "http://a:1", "HYPEMAN_BASE_URL": "http://b:2",
        "EMBER_API_KEY": "ka", "HYPEMAN_API_KEY": "kb", "EMBER_TOKEN": "kc",
    }  # fmt: skip
    config = config_from_env(both)
    assert (config.base_url, config.api_key, config.api_key_source) == (
        "http://a:1",
        "ka",
        "EMBER_API_KEY",
    )
    hypeman = config_from_env({"HYPEMAN_BASE_URL": "b:2/", "HYPEMAN_API_KEY": "kb"})
    assert (hypeman.base_url, hypeman.api_key) == ("http://b:2", "kb")
    legacy = config_from_env({"EMBER_URL": "http://c:3", "EMBER_TOKEN": "kc"})
    assert (legacy.base_url, legacy.api_key) == ("http://c:3", "kc")
    local = config_from_env({"EMBER_LISTEN": "127.0.0.1:5000"})
    assert (local.base_url, local.api_key, local.is_local) == ("http://127.0.0.1:5000", None, True)
    assert not config_from_env({"EMBER_BASE_URL": "https://ember.example.com"}).is_local


def test_publish_shorthand() -> None:
    plain = parse_publish("8080:80")  # any host: whatever name reached the machine
    assert (plain.hostname, plain.host_port, plain.guest_port) == ("*", 8080, 80)
    named = parse_publish("app.example.com:8443:8000")
    assert (named.hostname, named.host_port, named.guest_port) == ("app.example.com", 8443, 8000)
    for bad in ("80", "x:80", "0:80", "70000:80", "a:b:c:d"):
        with pytest.raises(CliError):
            parse_publish(bad)


def test_volume_shorthand() -> None:
    assert parse_volume("data:/data") == {"volume_id": "data", "mount_path": "/data"}
    assert parse_volume("data:/data:ro")["readonly"] is True
    assert "readonly" not in parse_volume("data:/data:rw")
    for bad in ("data", "data:relative", ":/data", "data:/d:rx"):
        with pytest.raises(CliError):
            parse_volume(bad)


def test_cp_arguments_name_an_instance_or_a_local_path() -> None:
    assert split_remote("box:/etc/hosts") == ("box", "/etc/hosts")
    assert split_remote("box:") == ("box", "/")
    assert split_remote("./box:file") is None
    assert split_remote("/tmp/a:b") is None
    assert split_remote("notes.txt") is None


def test_default_names_are_valid_instance_names() -> None:
    name = default_name("127.0.0.1:5000/demo/Hello_World:latest")
    assert name.startswith("hello-world-") and len(name) == len("hello-world-") + 4


def test_group_publish_shapes_http_tcp_tls_and_udp() -> None:
    assert parse_service("App.test:80:8080") == (
        {"port": 80, "destination_port": 8080},
        "app.test",
    )
    assert parse_service("9000:7000/tcp") == (
        {"port": 9000, "destination_port": 7000, "handlers": []},
        None,
    )
    assert parse_service("db.test:5433:5432/tls") == (
        {"port": 5433, "destination_port": 5432, "handlers": ["tls"]},
        "db.test",
    )
    assert parse_service("53:5353/udp") == (
        {"port": 53, "destination_port": 5353, "protocol": "udp", "handlers": []},
        None,
    )
    for bad in (
        "a.test:9000:7000/tcp",
        "a.test:53:53/udp",
        "9000:7000/sctp",
        "9000",
        "1:2/tls/tcp",
    ):
        with pytest.raises(typer.Exit):
            parse_service(bad)
