"""Uploaded certificates without Caddy running: the checks, and the config Caddy gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import InvalidArgument
from ember.ingress.caddy_config import ProxySettings, PublishedRoutes, build_config
from ember.ingress.certificates import certificate_record, covers
from tests.ukc.pem import self_signed


def test_a_valid_upload_is_read_for_its_names_and_dates() -> None:
    chain, key = self_signed("api.test")
    record = certificate_record("api", chain, key)
    assert (record.common_name, record.domains) == ("api.test", ["api.test"])
    assert record.not_before < record.not_after and record.subject == "CN=api.test"


@pytest.mark.parametrize(
    ("chain", "key", "code"),
    [
        ("not pem", None, "invalid_certificate"),
        (None, "not pem", "invalid_certificate"),
        (None, "other", "key_mismatch"),
        ("expired", None, "certificate_expired"),
    ],
)
def test_a_bad_upload_is_refused_by_name(chain: str | None, key: str | None, code: str) -> None:
    good_chain, good_key = self_signed("api.test")
    if chain == "expired":
        chain, key = self_signed("api.test", expired=True)
    if key == "other":
        key = self_signed("api.test")[1]
    with pytest.raises(InvalidArgument) as refused:
        certificate_record("api", chain or good_chain, key or good_key)
    assert refused.value.code == code


def test_wildcards_cover_one_label() -> None:
    assert covers(["*.a.test"], "x.a.test") and not covers(["*.a.test"], "y.x.a.test")
    assert covers(["a.test"], "a.test") and not covers(["a.test"], "b.test")


def test_caddy_serves_an_uploaded_certificate_instead_of_issuing_one(tmp_path: Path) -> None:
    chain, key = self_signed("api.test")
    record = certificate_record("api", chain, key)
    settings = ProxySettings(admin_socket=tmp_path / "admin.sock", storage_dir=tmp_path)
    published = [PublishedRoutes(8443, [], [], tls_subjects=("api.test", "web.test"))]
    tls = build_config([], settings, published, [record])["apps"]["tls"]
    assert tls["certificates"]["load_pem"] == [
        {"certificate": chain, "key": key, "tags": [f"ember-{record.id}"]}
    ]
    assert tls["certificates"]["automate"] == ["web.test"]  # the other one is still issued
