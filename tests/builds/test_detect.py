"""Source without a Dockerfile: what Ember recognises from the archive, and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.builds.detect import detect_source
from ember.errors import InvalidArgument
from ember.testkit.image import tar_gz


def archive(tmp_path: Path, files: dict[str, str]) -> Path:
    path = tmp_path / "source.tar.gz"
    path.write_bytes(tar_gz(files))
    return path


def test_own_dockerfile_wins(tmp_path: Path) -> None:
    assert detect_source(archive(tmp_path, {"Dockerfile": "FROM x", "app.py": ""})) is None


def test_python_app(tmp_path: Path) -> None:
    found = detect_source(archive(tmp_path, {"main.py": "print(1)", "requirements.txt": ""}))
    assert found is not None and found.language == "python"
    dockerfile = found.dockerfile("127.0.0.1:4973/ember/python:abc")
    assert dockerfile.startswith("FROM 127.0.0.1:4973/ember/python:abc\n")
    assert 'CMD ["python3", "/app/main.py"]' in dockerfile and "requirements.txt" in dockerfile


def test_static_site(tmp_path: Path) -> None:
    found = detect_source(archive(tmp_path, {"index.html": "<h1>hi</h1>", "css/a.css": ""}))
    assert found is not None and found.language == "static"
    assert "httpd" in found.dockerfile("base")


@pytest.mark.parametrize(
    "files", [{"README.md": "x"}, {"requirements.txt": "flask"}, {"src/app.py": ""}]
)
def test_unrecognised_is_refused(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        detect_source(archive(tmp_path, files))
    assert caught.value.code == "no_dockerfile"


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "source.tar.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(InvalidArgument) as caught:
        detect_source(path)
    assert caught.value.code == "invalid_source"
