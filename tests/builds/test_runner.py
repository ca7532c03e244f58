"""The runner's pure parts: the registry config a builder VM gets, secret blotting."""

from __future__ import annotations

from ember.builds.runner import _blot, registries_conf


def test_registries_conf_sends_ember_names_to_the_relay() -> None:
    conf = registries_conf("10.100.0.1:4974", frozenset({"127.0.0.1:4973", "localhost:4973"}))
    assert 'unqualified-search-registries = ["10.100.0.1:4974"]' in conf
    for host in ("127.0.0.1:4973", "localhost:4973"):
        assert f'prefix = "{host}"\nlocation = "10.100.0.1:4974"\ninsecure = true' in conf


def test_secret_values_are_blotted_out_of_log_lines() -> None:
    secrets = {"token": "hunter2", "empty": ""}
    assert _blot("echo hunter2 and hunter2\r", secrets) == "echo **** and ****"
    assert _blot("nothing secret", secrets) == "nothing secret"
    assert _blot("plain", None) == "plain"
