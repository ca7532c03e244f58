"""/volumes through a real `ember serve`: shapes and errors over HTTP, and the official client."""

from __future__ import annotations

import tarfile
from pathlib import Path

import httpx
import pytest
from hypeman import Hypeman

from ember.testkit.ember_server import EmberServer
from tests.volumes.archives import Entry, make_archive, zero_bomb

pytestmark = pytest.mark.server  # starts a real `ember serve`


def http(server: EmberServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}, timeout=120
    )


def test_create_list_get_delete(ember_server: EmberServer) -> None:
    with http(ember_server) as api:
        created = api.post("/volumes", json={"name": "data", "size_gb": 2, "tags": {"team": "a"}})
        assert created.status_code == 201, created.text
        volume = created.json()
        assert volume["name"] == "data" and volume["size_gb"] == 2
        assert volume["attachments"] == [] and volume["tags"] == {"team": "a"}
        assert volume["status"] == "ready" and volume["created_at"]
        disk = ember_server.data_dir / "volumes" / volume["id"] / "disk.raw"
        assert disk.stat().st_size == 2 << 30
        assert api.get(f"/volumes/{volume['id']}").json() == volume
        assert api.get("/volumes/data").json() == volume
        api.post("/volumes", json={"name": "other", "size_gb": 1}).raise_for_status()
        assert [v["name"] for v in api.get("/volumes", params={"tags[team]": "a"}).json()] == [
            "data"
        ]
        assert len(api.get("/volumes").json()) == 2
        assert api.delete("/volumes/data").status_code == 204
        assert not disk.parent.exists()
        missing = api.get("/volumes/data")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "status", "code", "text"),
    [
        ({"name": "Bad!", "size_gb": 1}, 400, "bad_request", "name"),
        ({"name": "x", "size_gb": 0}, 400, "bad_request", "size_gb"),
        ({"name": "x"}, 400, "bad_request", "size_gb"),
        ({"name": "x", "size_gb": 1, "colour": "red"}, 400, "bad_request", "colour"),
    ],
)
def test_create_errors(
    ember_server: EmberServer, body: dict[str, object], status: int, code: str, text: str
) -> None:
    with http(ember_server) as api:
        answer = api.post("/volumes", json=body)
        assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
        assert text in answer.json()["message"]
        assert api.get("/volumes").json() == []


def test_from_archive_and_refusals(ember_server: EmberServer) -> None:
    archive = make_archive([Entry("dir/file.txt", data=b"content"), Entry("top", data=b"t")])
    with http(ember_server) as api:
        made = api.post(
            "/volumes/from-archive",
            params={"name": "site", "size_gb": 1, "id": "vol-site", "tags[kind]": "web"},
            content=archive,
            headers={"Content-Type": "application/gzip"},
        )
        assert made.status_code == 201, made.text
        assert (made.json()["id"], made.json()["tags"]) == ("vol-site", {"kind": "web"})
        for body, code in (
            (make_archive([Entry("../x", data=b"x")]), "unsafe_archive"),
            (b"not gzip", "invalid_archive"),
            (zero_bomb(1 << 30), "archive_too_large"),
        ):
            refused = api.post(
                "/volumes/from-archive", params={"name": "bad", "size_gb": 1}, content=body
            )
            assert (refused.status_code, refused.json()["code"]) == (400, code), refused.text
        no_size = api.post("/volumes/from-archive", params={"name": "bad"}, content=archive)
        assert no_size.status_code == 400 and "size_gb" in no_size.json()["message"]
        taken = api.post(
            "/volumes/from-archive", params={"name": "site", "size_gb": 1}, content=archive
        )
        assert (taken.status_code, taken.json()["code"]) == (409, "already_exists")
        assert [v["name"] for v in api.get("/volumes").json()] == ["site"]
    assert sorted(p.name for p in (ember_server.data_dir / "volumes").iterdir()) == ["vol-site"]


def test_official_client(ember_server: EmberServer, tmp_path: Path) -> None:
    client = Hypeman(base_url=ember_server.url, api_key=ember_server.token())
    volume = client.volumes.create(name="plain", size_gb=1, tags={"env": "test"})
    assert volume.size_gb == 1 and volume.attachments == [] and volume.tags == {"env": "test"}
    archive = tmp_path / "content.tar.gz"
    archive.write_bytes(make_archive([Entry("docs", tarfile.DIRTYPE), Entry("docs/a", data=b"a")]))
    from_file = client.volumes.create_from_archive(
        archive, name="archived", size_gb=1, id="vol-archived", tags={"env": "test"}
    )
    assert from_file.id == "vol-archived" and from_file.name == "archived"
    assert client.volumes.get("archived").id == "vol-archived"
    assert {v.name for v in client.volumes.list(tags={"env": "test"})} == {"plain", "archived"}
    client.volumes.delete(volume.id)
    client.volumes.delete("vol-archived")
    assert client.volumes.list() == []


def test_volumes_survive_a_restart(ember_server: EmberServer) -> None:
    with http(ember_server) as api:
        volume = api.post("/volumes", json={"name": "keep", "size_gb": 1}).json()
    ember_server.stop()
    ember_server.start()
    with http(ember_server) as api:
        assert api.get("/volumes/keep").json() == volume
